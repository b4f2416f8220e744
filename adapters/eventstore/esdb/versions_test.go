package esdb_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb/fakestreams"
)

// jsonEvent is an event whose data is a JSON string of n bytes in all.
func jsonEvent(typ string, n int) eventstore.EventData {
	return eventstore.EventData{ID: newID(), Type: typ, Data: []byte(`"` + strings.Repeat("x", n-2) + `"`)}
}

// A push of 256 events of 10 KiB is 2.5 MiB: the server with its default
// 1 MiB MaxAppendSize refuses it in one append (the client sees EOF), so
// the adapter writes it in consecutive appends, in order.
func TestAppendOverServerLimitIsSplit(t *testing.T) {
	for _, profile := range []string{"24.10", "24.10.4"} {
		t.Run(profile, func(t *testing.T) {
			store, srv := openFake(t, fakestreams.Options{Profile: profile})
			events := make([]eventstore.EventData, 256)
			for i := range events {
				events[i] = jsonEvent("Pushed", 10<<10)
			}
			res := mustAppend(t, store, "inbox-a", eventstore.NoStream(), events...)
			if res.NextExpectedRevision != 255 {
				t.Fatalf("next expected revision %d, want 255", res.NextExpectedRevision)
			}
			got, err := store.ReadStream(testContext(t), "inbox-a", 0, 1000)
			if err != nil || len(got) != 256 {
				t.Fatalf("read %d events, %v", len(got), err)
			}
			for i, e := range got {
				if e.ID != events[i].ID {
					t.Fatalf("event %d is %s, want %s", i, e.ID, events[i].ID)
				}
			}
			if res.Position != got[255].Position {
				t.Errorf("append reported %+v, the last event is at %+v", res.Position, got[255].Position)
			}
			if srv.AllEvents() != 256 {
				t.Errorf("$all holds %d events", srv.AllEvents())
			}
		})
	}
}

// One event larger than any append can hold is refused with a distinct
// error before anything is written.
func TestEventTooLarge(t *testing.T) {
	store, srv := openFake(t, fakestreams.Options{})
	huge := jsonEvent("Huge", esdb.DefaultMaxAppendBytes)
	_, err := store.Append(testContext(t), "s", eventstore.Any(), event("Small", `{}`), huge)
	var tooLarge *eventstore.EventTooLargeError
	if !errors.Is(err, eventstore.ErrEventTooLarge) || !errors.As(err, &tooLarge) {
		t.Fatalf("error %v, want ErrEventTooLarge", err)
	}
	if len(tooLarge.IDs) != 1 || tooLarge.IDs[0] != huge.ID || tooLarge.Limit != esdb.DefaultMaxAppendBytes {
		t.Fatalf("error names %v over %d, want only the huge event's ID", tooLarge.IDs, tooLarge.Limit)
	}
	if srv.AllEvents() != 0 {
		t.Errorf("%d events written", srv.AllEvents())
	}
}

// The budget can be set lower (or higher, for a server allowed more) in
// the connection string.
func TestAppendBudgetFromConnectionString(t *testing.T) {
	srv := fakestreams.StartServer(t, fakestreams.Options{MaxAppendSize: 4000})
	store, err := esdb.Open(testContext(t), srv.ConnString()+"&maxAppendBytes=3000", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	events := []eventstore.EventData{jsonEvent("A", 1500), jsonEvent("A", 1500), jsonEvent("A", 1500)}
	mustAppend(t, store, "s", eventstore.NoStream(), events...)
	if _, err := store.Append(testContext(t), "s", eventstore.Any(), jsonEvent("A", 3000)); !errors.Is(err, eventstore.ErrEventTooLarge) {
		t.Fatalf("error %v, want ErrEventTooLarge", err)
	}
}

// The server times an append out after storing it and goes down; it
// restarts, forgetting its weak cache of recent IDs, before the retry. The
// retry stores nothing twice and Append returns once, with the stored
// events' place, for exact and for any expected revisions.
func TestUnclearAppendRetriedAcrossRestart(t *testing.T) {
	for _, expected := range []eventstore.ExpectedRevision{eventstore.Exact(0), eventstore.Any()} {
		t.Run(expected.String(), func(t *testing.T) {
			srv := fakestreams.StartServer(t, fakestreams.Options{})
			store := openQuickDiscovery(t, srv)
			mustAppend(t, store, "outbox", eventstore.NoStream(), event("First", `{}`))
			srv.TimeoutThenStop()
			events := []eventstore.EventData{event("A", `{"n":1}`), event("B", `{"n":2}`)}
			type result struct {
				res eventstore.AppendResult
				err error
			}
			done := make(chan result, 2)
			go func() {
				res, err := store.Append(testContext(t), "outbox", expected, events...)
				done <- result{res, err}
			}()
			deadline := time.Now().Add(10 * time.Second)
			for !srv.Down() {
				if time.Now().After(deadline) {
					t.Fatal("the append never reached the server")
				}
				time.Sleep(5 * time.Millisecond)
			}
			time.Sleep(100 * time.Millisecond) // let a retry or two meet the server down
			select {
			case r := <-done:
				t.Fatalf("Append returned while the server was down: %+v, %v", r.res, r.err)
			default:
			}
			if err := srv.Restart(); err != nil {
				t.Fatal(err)
			}
			var r result
			select {
			case r = <-done:
			case <-time.After(20 * time.Second):
				t.Fatal("Append did not return after the restart")
			}
			if r.err != nil {
				t.Fatalf("append: %v", r.err)
			}
			got, err := store.ReadStream(testContext(t), "outbox", 0, 10)
			if err != nil || len(got) != 3 || got[1].ID != events[0].ID || got[2].ID != events[1].ID {
				t.Fatalf("stream holds %d events (%v), want First, A, B once", len(got), err)
			}
			if r.res.NextExpectedRevision != 2 || r.res.Position != got[2].Position {
				t.Errorf("append result %+v, the last event is at %+v", r.res, got[2].Position)
			}
			if srv.AllEvents() != 3 {
				t.Errorf("$all holds %d events, want 3", srv.AllEvents())
			}
		})
	}
}

// Appends and reads carry requires-leader; subscriptions do not.
func TestRequiresLeaderReachesServer(t *testing.T) {
	store, srv := openFake(t, fakestreams.Options{})
	mustAppend(t, store, "s", eventstore.NoStream(), event("A", `{}`))
	if _, err := store.ReadStream(testContext(t), "s", 0, 10); err != nil {
		t.Fatal(err)
	}
	sub := subscribe(t, store, eventstore.Filter{}, eventstore.FromStart())
	recv(t, sub)
	_ = sub.Close()
	for _, kind := range []string{"append", "read"} {
		if with, without := srv.RequiresLeader(kind); with == 0 || without != 0 {
			t.Errorf("%s: %d calls with requires-leader, %d without", kind, with, without)
		}
	}
	if with, without := srv.RequiresLeader("subscribe"); with != 0 || without == 0 {
		t.Errorf("subscribe: %d calls with requires-leader, %d without", with, without)
	}
}

// A follower's NotLeader answer sends the client to the leader it names
// (here the same address, so a new connection), and the call succeeds
// there; it is never taken for a missing stream.
func TestNotLeaderSendsClientToLeader(t *testing.T) {
	store, srv := openFake(t, fakestreams.Options{})
	before := srv.Connections()
	srv.NotLeader(1)
	mustAppend(t, store, "s", eventstore.NoStream(), event("A", `{}`))
	if srv.Connections() <= before {
		t.Errorf("no new connection after NotLeader (%d, before %d)", srv.Connections(), before)
	}
	if srv.AllEvents() != 1 {
		t.Errorf("$all holds %d events", srv.AllEvents())
	}
	srv.NotLeader(1)
	if got, err := store.ReadStream(testContext(t), "s", 0, 10); err != nil || len(got) != 1 {
		t.Fatalf("read after NotLeader: %d events, %v", len(got), err)
	}
	// A node that keeps saying so: an error, but not "stream not found".
	srv.NotLeader(100)
	_, err := store.ReadStream(testContext(t), "s", 0, 10)
	if err == nil || errors.Is(err, eventstore.ErrStreamNotFound) {
		t.Fatalf("read from a follower that never finds the leader: %v", err)
	}
	srv.NotLeader(0)
	if _, err := store.ReadStream(testContext(t), "missing", 0, 10); !errors.Is(err, eventstore.ErrStreamNotFound) {
		t.Fatalf("read of a missing stream: %v", err)
	}
}

// Servers before 22.10 are refused at Open, naming the version and why.
func TestOldServerRefused(t *testing.T) {
	srv := fakestreams.StartServer(t, fakestreams.Options{Profile: "20.10"})
	_, err := esdb.Open(testContext(t), srv.ConnString(), testLogger(t))
	if err == nil {
		t.Fatal("Open accepted a 20.10 server")
	}
	for _, want := range []string{"20.10", "22.10 or later"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

// A subscription from a position that is no event's is refused on every
// server version: servers up to 23.10 would skip the next event, later
// ones refuse it.
func TestSubscribeFromNonEventPositionRefused(t *testing.T) {
	for _, profile := range []string{"22.10", "24.10"} {
		t.Run(profile, func(t *testing.T) {
			store, _ := openFake(t, fakestreams.Options{Profile: profile})
			res := mustAppend(t, store, "s", eventstore.NoStream(), event("A", `{}`), event("B", `{}`))
			p := eventstore.Position{Commit: res.Position.Commit - 1, Prepare: res.Position.Prepare - 1}
			_, err := store.Subscribe(testContext(t), eventstore.Filter{}, eventstore.After(p))
			if err == nil || !strings.Contains(err.Error(), "not the position of an event") {
				t.Fatalf("subscribe after %+v: %v", p, err)
			}
		})
	}
}
