package fakestreams_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb/fakestreams"
)

// sized is an event with n bytes of data.
func sized(typ string, n int) esdb.EventData {
	e := ev(typ)
	e.Data = bytes.Repeat([]byte{'x'}, n)
	return e
}

func TestAppendSizeLimitByProfile(t *testing.T) {
	cases := []struct {
		profile string
		events  []esdb.EventData
		refused bool
	}{
		// 1 MiB of data in all passes the old count and the new one fails
		// on the type length.
		{"24.10", []esdb.EventData{sized("T", 1<<19), sized("T", 1<<19)}, false},
		{"24.10.4", []esdb.EventData{sized("T", 1<<19), sized("T", 1<<19)}, true},
		{"25.1", []esdb.EventData{sized("T", 1<<19), sized("T", 1<<19-4)}, false},
		{"22.10", []esdb.EventData{sized("T", 1<<20+1)}, true},
		// Far over the limit: the client is still sending when the server
		// ends the call.
		{"24.10", []esdb.EventData{sized("T", 1<<20), sized("T", 1<<20), sized("T", 1<<20)}, true},
	}
	for _, c := range cases {
		srv := fakestreams.StartServer(t, fakestreams.Options{Profile: c.profile})
		cl := newClient(t, srv)
		_, err := cl.AppendToStream(ctxT(t), "s", esdb.AppendToStreamOptions{ExpectedRevision: esdb.Any{}}, c.events...)
		if !c.refused {
			if err != nil {
				t.Errorf("%s: %v", c.profile, err)
			}
			continue
		}
		// The cause never reaches the caller as a code of its own.
		if code(err) != esdb.ErrorCodeUnknown {
			t.Errorf("%s: error %v (code %d), want ErrorCode Unknown", c.profile, err, code(err))
		}
		if srv.AllEvents() != 0 {
			t.Errorf("%s: a refused append stored %d events", c.profile, srv.AllEvents())
		}
	}
}

func TestPerEventLimitFrom24104(t *testing.T) {
	srv := fakestreams.StartServer(t, fakestreams.Options{Profile: "24.10.4", MaxAppendEventSize: 1000})
	cl := newClient(t, srv)
	_, err := cl.AppendToStream(ctxT(t), "s", esdb.AppendToStreamOptions{ExpectedRevision: esdb.Any{}}, sized("T", 999))
	if code(err) != esdb.ErrorCodeUnknown || !strings.Contains(err.Error(), "Maximum Append Event Size of 1000") {
		t.Fatalf("error %v", err)
	}
	old := fakestreams.StartServer(t, fakestreams.Options{Profile: "24.10", MaxAppendEventSize: 1000})
	if _, err := newClient(t, old).AppendToStream(ctxT(t), "s", esdb.AppendToStreamOptions{ExpectedRevision: esdb.Any{}}, sized("T", 2000)); err != nil {
		t.Fatalf("24.10 has no per-event limit: %v", err)
	}
}

func TestPositionsAreEachEventsOwn(t *testing.T) {
	srv := fakestreams.StartServer(t, fakestreams.Options{})
	c := newClient(t, srv)
	ctx := ctxT(t)
	evs := []esdb.EventData{ev("A"), ev("B"), ev("C")}
	wr, err := c.AppendToStream(ctx, "s", esdb.AppendToStreamOptions{ExpectedRevision: esdb.NoStream{}}, evs...)
	if err != nil {
		t.Fatal(err)
	}
	read, err := readAll(t, c, "s", esdb.ReadStreamOptions{From: esdb.Start{}}, 10)
	if err != nil || len(read) != 3 {
		t.Fatalf("read %d, %v", len(read), err)
	}
	for i, r := range read {
		p := r.Event.Position
		if p.Commit != p.Prepare || (i > 0 && p.Commit <= read[i-1].Event.Position.Commit) {
			t.Errorf("event %d at %+v", i, p)
		}
	}
	last := read[2].Event.Position
	if wr.CommitPosition != last.Commit || wr.PreparePosition != last.Prepare {
		t.Errorf("append reported %d/%d, last event at %+v", wr.CommitPosition, wr.PreparePosition, last)
	}
	retry, err := c.AppendToStream(ctx, "s", esdb.AppendToStreamOptions{ExpectedRevision: esdb.NoStream{}}, evs...)
	if err != nil || retry.CommitPosition != last.Commit || retry.NextExpectedVersion != 2 {
		t.Errorf("retry %+v, %v", retry, err)
	}
}

func TestAllSubscriptionStartRules(t *testing.T) {
	for _, c := range []struct {
		profile string
		// wantFirst is the first event delivered from a position between
		// events A and B; "" for a refusal.
		wantFirst string
	}{
		{"23.10", "C"}, // B, the record after the position, is skipped.
		{"24.10", ""},
	} {
		srv := fakestreams.StartServer(t, fakestreams.Options{Profile: c.profile})
		cl := newClient(t, srv)
		ctx := ctxT(t)
		if _, err := cl.AppendToStream(ctx, "s", esdb.AppendToStreamOptions{ExpectedRevision: esdb.NoStream{}}, ev("A"), ev("B"), ev("C")); err != nil {
			t.Fatal(err)
		}
		read, err := readAll(t, cl, "s", esdb.ReadStreamOptions{From: esdb.Start{}}, 10)
		if err != nil {
			t.Fatal(err)
		}
		a := read[0].Event.Position
		// From A's own position both rules start at B.
		if got := firstFrom(t, cl, esdb.Position{Commit: a.Commit, Prepare: a.Prepare}); got != "B" {
			t.Errorf("%s: from A's position got %q", c.profile, got)
		}
		mid := esdb.Position{Commit: a.Commit + 1, Prepare: a.Commit + 1}
		if got := firstFrom(t, cl, mid); got != c.wantFirst {
			t.Errorf("%s: from inside A got %q, want %q", c.profile, got, c.wantFirst)
		}
	}
}

// firstFrom returns the type of the first event a $all subscription from p
// delivers, or "" if the server refuses p as an invalid position.
func firstFrom(t *testing.T, c *esdb.Client, p esdb.Position) string {
	t.Helper()
	invalid := func(err error) string {
		t.Helper()
		if !strings.Contains(err.Error(), "InvalidArgument desc = Trying to read from an invalid position.") {
			t.Fatalf("subscription failed: %v", err)
		}
		return ""
	}
	sub, err := c.SubscribeToAll(ctxT(t), esdb.SubscribeToAllOptions{From: p})
	if err != nil {
		return invalid(err)
	}
	defer sub.Close()
	for {
		e := sub.Recv()
		switch {
		case e.SubscriptionDropped != nil:
			return invalid(e.SubscriptionDropped.Error)
		case e.EventAppeared != nil:
			return e.EventAppeared.Event.EventType
		}
	}
}

func TestIdempotency(t *testing.T) {
	srv := fakestreams.StartServer(t, fakestreams.Options{})
	c := newClient(t, srv)
	ctx := ctxT(t)
	a, b, x := ev("A"), ev("B"), ev("X")
	if _, err := c.AppendToStream(ctx, "s", esdb.AppendToStreamOptions{ExpectedRevision: esdb.NoStream{}}, a, b); err != nil {
		t.Fatal(err)
	}
	// Strong: a partial match is a conflict, for no-stream and exact.
	if _, err := c.AppendToStream(ctx, "s", esdb.AppendToStreamOptions{ExpectedRevision: esdb.NoStream{}}, a, x); code(err) != esdb.ErrorCodeWrongExpectedVersion {
		t.Errorf("partial retry at no-stream: %v", err)
	}
	if _, err := c.AppendToStream(ctx, "s", esdb.AppendToStreamOptions{ExpectedRevision: esdb.NoStream{}}, a, b, x); code(err) != esdb.ErrorCodeWrongExpectedVersion {
		t.Errorf("retry running past the end: %v", err)
	}
	// Weak (any): a partial match is a conflict too.
	if _, err := c.AppendToStream(ctx, "s", esdb.AppendToStreamOptions{ExpectedRevision: esdb.Any{}}, a, x); code(err) != esdb.ErrorCodeWrongExpectedVersion {
		t.Errorf("partial retry at any: %v", err)
	}
	// A restart forgets the weak cache: the retry with any writes again,
	// while the strong check still holds.
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	c = newClient(t, srv)
	if _, err := c.AppendToStream(ctx, "s", esdb.AppendToStreamOptions{ExpectedRevision: esdb.NoStream{}}, a, b); err != nil {
		t.Errorf("strong retry after restart: %v", err)
	}
	if _, err := c.AppendToStream(ctx, "s", esdb.AppendToStreamOptions{ExpectedRevision: esdb.Any{}}, a, b); err != nil {
		t.Fatal(err)
	}
	if n := srv.AllEvents(); n != 4 {
		t.Errorf("after a weak retry past a restart $all holds %d events, want 4 (a duplicate, as the server writes)", n)
	}
}

func TestTimeoutAfterStore(t *testing.T) {
	srv := fakestreams.StartServer(t, fakestreams.Options{})
	c := newClient(t, srv)
	srv.TimeoutAfterStore(1)
	a := ev("A")
	_, err := c.AppendToStream(ctxT(t), "s", esdb.AppendToStreamOptions{ExpectedRevision: esdb.NoStream{}}, a)
	if code(err) != esdb.ErrorAborted {
		t.Fatalf("error %v, want Aborted", err)
	}
	if srv.AllEvents() != 1 {
		t.Fatalf("the timed-out write did not land")
	}
}

func TestNotLeaderAndRequiresLeader(t *testing.T) {
	srv := fakestreams.StartServer(t, fakestreams.Options{})
	c := newClient(t, srv)
	srv.NotLeader(1)
	// Without the header a follower forwards the write.
	if _, err := c.AppendToStream(ctxT(t), "s", esdb.AppendToStreamOptions{ExpectedRevision: esdb.Any{}}, ev("A")); err != nil {
		t.Fatal(err)
	}
	if with, without := srv.RequiresLeader("append"); with != 0 || without != 1 {
		t.Fatalf("requires-leader: %d with, %d without", with, without)
	}
	// The v4 client's own RequiresLeader option never reaches the server.
	_, err := c.AppendToStream(ctxT(t), "s", esdb.AppendToStreamOptions{ExpectedRevision: esdb.Any{}, RequiresLeader: true}, ev("B"))
	if err != nil {
		t.Fatal(err)
	}
	if with, _ := srv.RequiresLeader("append"); with != 0 {
		t.Fatalf("the client sent requires-leader; the test double's model of it is stale")
	}
}

func TestServerFeaturesAndCaughtUpByProfile(t *testing.T) {
	for _, name := range fakestreams.Profiles() {
		p, err := fakestreams.LookupProfile(name)
		if err != nil || !strings.HasPrefix(p.Version, strings.Join(strings.Split(name, ".")[:2], ".")) {
			t.Fatalf("%s: %+v, %v", name, p, err)
		}
		srv := fakestreams.StartServer(t, fakestreams.Options{Profile: name})
		c := newClient(t, srv)
		// History A, then live B: a caught-up message, if any, comes
		// between them.
		if _, err := c.AppendToStream(ctxT(t), "s", esdb.AppendToStreamOptions{ExpectedRevision: esdb.Any{}}, ev("A")); err != nil {
			t.Fatal(err)
		}
		sub, err := c.SubscribeToAll(ctxT(t), esdb.SubscribeToAllOptions{From: esdb.Start{}})
		if err != nil {
			t.Fatal(err)
		}
		caughtUp := false
		for {
			e := sub.Recv()
			if e.CaughtUp != nil {
				caughtUp = true
			}
			if e.SubscriptionDropped != nil {
				t.Fatal(e.SubscriptionDropped.Error)
			}
			if e.EventAppeared != nil && e.EventAppeared.Event.EventType == "A" {
				if _, err := c.AppendToStream(ctxT(t), "s", esdb.AppendToStreamOptions{ExpectedRevision: esdb.Any{}}, ev("B")); err != nil {
					t.Fatal(err)
				}
			}
			if e.EventAppeared != nil && e.EventAppeared.Event.EventType == "B" {
				break
			}
		}
		_ = sub.Close()
		if caughtUp != p.CaughtUp {
			t.Errorf("%s: caught-up sent %v, want %v", name, caughtUp, p.CaughtUp)
		}
	}
	if _, err := fakestreams.LookupProfile("21.6"); err == nil {
		t.Error("an unknown profile was accepted")
	}
}
