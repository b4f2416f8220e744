package fakestreams_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"

	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb/fakestreams"
)

// These tests drive the test double with the real client directly, to pin
// down the wire behaviour the adapter relies on.

func newClient(t *testing.T, srv *fakestreams.Server) *esdb.Client {
	t.Helper()
	conf, err := esdb.ParseConnectionString(srv.ConnString())
	if err != nil {
		t.Fatal(err)
	}
	conf.Logger = esdb.NoopLogging()
	c, err := esdb.NewClient(conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func ev(typ string) esdb.EventData {
	return esdb.EventData{EventID: uuid.New(), EventType: typ, ContentType: esdb.ContentTypeJson, Data: []byte(`{}`)}
}

func readAll(t *testing.T, c *esdb.Client, stream string, opts esdb.ReadStreamOptions, n uint64) ([]*esdb.ResolvedEvent, error) {
	t.Helper()
	rs, err := c.ReadStream(ctxT(t), stream, opts, n)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var out []*esdb.ResolvedEvent
	for {
		e, err := rs.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, e)
	}
}

func code(err error) esdb.ErrorCode {
	var e *esdb.Error
	if errors.As(err, &e) {
		return e.Code()
	}
	return -1
}

func TestAppendReadIdempotentConflict(t *testing.T) {
	srv := fakestreams.StartServer(t, fakestreams.Options{})
	c := newClient(t, srv)
	ctx := ctxT(t)
	a, b := ev("A"), ev("B")
	wr, err := c.AppendToStream(ctx, "s", esdb.AppendToStreamOptions{ExpectedRevision: esdb.NoStream{}}, a, b)
	if err != nil || wr.NextExpectedVersion != 1 || wr.CommitPosition == 0 {
		t.Fatalf("append: %+v, %v", wr, err)
	}
	// The same events at the same place again: written once.
	again, err := c.AppendToStream(ctx, "s", esdb.AppendToStreamOptions{ExpectedRevision: esdb.NoStream{}}, a, b)
	if err != nil || again.NextExpectedVersion != 1 {
		t.Fatalf("retry: %+v, %v", again, err)
	}
	_, err = c.AppendToStream(ctx, "s", esdb.AppendToStreamOptions{ExpectedRevision: esdb.Revision(0)}, ev("C"))
	if code(err) != esdb.ErrorCodeWrongExpectedVersion {
		t.Fatalf("conflict: %v", err)
	}
	evs, err := readAll(t, c, "s", esdb.ReadStreamOptions{From: esdb.Start{}}, 10)
	if err != nil || len(evs) != 2 {
		t.Fatalf("read: %d events, %v", len(evs), err)
	}
	e := evs[1].Event
	if e.EventID != b.EventID || e.EventType != "B" || e.ContentType != "application/json" || e.EventNumber != 1 ||
		e.Position.Commit != wr.CommitPosition || e.Position.Prepare != wr.PreparePosition || e.CreatedDate.IsZero() {
		t.Fatalf("event %+v, write %+v", e, wr)
	}
	if _, err := readAll(t, c, "missing", esdb.ReadStreamOptions{From: esdb.Start{}}, 10); code(err) != esdb.ErrorCodeResourceNotFound {
		t.Fatalf("missing stream: %v", err)
	}
}

func TestTombstone(t *testing.T) {
	srv := fakestreams.StartServer(t, fakestreams.Options{})
	c := newClient(t, srv)
	ctx := ctxT(t)
	if _, err := c.AppendToStream(ctx, "s", esdb.AppendToStreamOptions{}, ev("A")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.TombstoneStream(ctx, "s", esdb.TombstoneStreamOptions{ExpectedRevision: esdb.Revision(5)}); err == nil {
		t.Fatal("tombstone at the wrong revision succeeded")
	}
	if _, err := c.TombstoneStream(ctx, "s", esdb.TombstoneStreamOptions{ExpectedRevision: esdb.Revision(0)}); err != nil {
		t.Fatal(err)
	}
	if _, err := readAll(t, c, "s", esdb.ReadStreamOptions{From: esdb.Start{}}, 10); code(err) != esdb.ErrorCodeStreamDeleted {
		t.Fatalf("read after tombstone: %v", err)
	}
	if _, err := c.AppendToStream(ctx, "s", esdb.AppendToStreamOptions{}, ev("A")); code(err) != esdb.ErrorCodeStreamDeleted {
		t.Fatalf("append after tombstone: %v", err)
	}
}

func TestSubscribeToAllFilteredThenDrop(t *testing.T) {
	srv := fakestreams.StartServer(t, fakestreams.Options{})
	c := newClient(t, srv)
	ctx := ctxT(t)
	for _, s := range []string{"p-1", "$system", "q-1", "p-2"} {
		if _, err := c.AppendToStream(ctx, s, esdb.AppendToStreamOptions{}, ev("A")); err != nil {
			t.Fatal(err)
		}
	}
	sub, err := c.SubscribeToAll(ctx, esdb.SubscribeToAllOptions{
		From:   esdb.Start{},
		Filter: &esdb.SubscriptionFilter{Type: esdb.StreamFilterType, Prefixes: []string{"p-"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	var got []string
	for len(got) < 3 {
		e := sub.Recv()
		switch {
		case e.EventAppeared != nil:
			got = append(got, e.EventAppeared.Event.StreamID)
		case e.CaughtUp != nil:
			got = append(got, "caught-up")
		case e.SubscriptionDropped != nil:
			t.Fatalf("dropped: %v", e.SubscriptionDropped.Error)
		}
	}
	if want := "p-1 p-2 caught-up"; strings.Join(got, " ") != want {
		t.Fatalf("got %q, want %q", strings.Join(got, " "), want)
	}
	if _, err := c.AppendToStream(ctx, "p-3", esdb.AppendToStreamOptions{}, ev("A")); err != nil {
		t.Fatal(err)
	}
	for {
		e := sub.Recv()
		if e.EventAppeared != nil {
			if e.EventAppeared.Event.StreamID != "p-3" {
				t.Fatalf("live event from %s", e.EventAppeared.Event.StreamID)
			}
			break
		}
		if e.SubscriptionDropped != nil {
			t.Fatalf("dropped: %v", e.SubscriptionDropped.Error)
		}
	}
	if n := srv.DropSubscriptions(); n != 1 {
		t.Fatalf("dropped %d subscriptions, want 1", n)
	}
	for {
		e := sub.Recv()
		if e.SubscriptionDropped != nil {
			break
		}
	}
}

func TestSubscribeToStream(t *testing.T) {
	srv := fakestreams.StartServer(t, fakestreams.Options{})
	c := newClient(t, srv)
	ctx := ctxT(t)
	for _, s := range []string{"s", "other", "s"} {
		if _, err := c.AppendToStream(ctx, s, esdb.AppendToStreamOptions{}, ev("A")); err != nil {
			t.Fatal(err)
		}
	}
	// From revision 0, exclusive: only s@1 is history.
	sub, err := c.SubscribeToStream(ctx, "s", esdb.SubscribeToStreamOptions{From: esdb.Revision(0)})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	var got []string
	for len(got) < 3 {
		e := sub.Recv()
		switch {
		case e.EventAppeared != nil:
			got = append(got, fmt.Sprintf("%s@%d", e.EventAppeared.Event.StreamID, e.EventAppeared.Event.EventNumber))
		case e.CaughtUp != nil:
			got = append(got, "caught-up")
			for _, s := range []string{"other", "s"} {
				if _, err := c.AppendToStream(ctx, s, esdb.AppendToStreamOptions{}, ev("A")); err != nil {
					t.Fatal(err)
				}
			}
		case e.SubscriptionDropped != nil:
			t.Fatalf("dropped: %v", e.SubscriptionDropped.Error)
		}
	}
	if want := "s@1 caught-up s@2"; strings.Join(got, " ") != want {
		t.Fatalf("got %q, want %q", strings.Join(got, " "), want)
	}
}

func revs(evs []*esdb.ResolvedEvent) string {
	var out []string
	for _, e := range evs {
		out = append(out, fmt.Sprint(e.Event.EventNumber))
	}
	return strings.Join(out, " ")
}

// $tb in a stream's metadata, as every modelled version treats it
// (IndexReader.ReadStreamEventsForward and Backward: minEventNumber): reads
// start at it and a fully truncated stream reads as empty; the metadata
// stream reads as its last event only ($maxCount 1); $all keeps truncated
// events (until a scavenge, which the double does not model); a value past
// the end is kept as it is and hides the events appended later; the
// metadata of a deleted stream cannot be written.
func TestTruncateBefore(t *testing.T) {
	for _, profile := range fakestreams.Profiles() {
		t.Run(profile, func(t *testing.T) {
			t.Parallel()
			srv := fakestreams.StartServer(t, fakestreams.Options{Profile: profile})
			c := newClient(t, srv)
			ctx := ctxT(t)
			events := make([]esdb.EventData, 10)
			for i := range events {
				events[i] = ev("A")
			}
			if _, err := c.AppendToStream(ctx, "s", esdb.AppendToStreamOptions{ExpectedRevision: esdb.NoStream{}}, events...); err != nil {
				t.Fatal(err)
			}
			setTB := func(stream string, tb uint64) error {
				var meta esdb.StreamMetadata
				meta.SetTruncateBefore(tb)
				_, err := c.SetStreamMetadata(ctx, stream, esdb.AppendToStreamOptions{}, meta)
				return err
			}
			if err := setTB("s", 2); err != nil {
				t.Fatal(err)
			}
			if err := setTB("s", 4); err != nil {
				t.Fatal(err)
			}
			meta, err := c.GetStreamMetadata(ctx, "s", esdb.ReadStreamOptions{})
			if err != nil || meta.TruncateBefore() == nil || *meta.TruncateBefore() != 4 {
				t.Fatalf("metadata read from the start: %+v, %v; want the last one, $tb 4", meta, err)
			}
			for _, tc := range []struct {
				opts  esdb.ReadStreamOptions
				count uint64
				want  string
			}{
				{esdb.ReadStreamOptions{From: esdb.Start{}}, 3, "4 5 6"},
				{esdb.ReadStreamOptions{From: esdb.Revision(1)}, 100, "4 5 6 7 8 9"},
				{esdb.ReadStreamOptions{From: esdb.Revision(7)}, 100, "7 8 9"},
				{esdb.ReadStreamOptions{Direction: esdb.Backwards, From: esdb.End{}}, 100, "9 8 7 6 5 4"},
				{esdb.ReadStreamOptions{Direction: esdb.Backwards, From: esdb.Revision(2)}, 100, ""},
			} {
				evs, err := readAll(t, c, "s", tc.opts, tc.count)
				if err != nil || revs(evs) != tc.want {
					t.Errorf("read %+v count %d: %q, %v; want %q", tc.opts, tc.count, revs(evs), err, tc.want)
				}
			}
			all, err := c.ReadAll(ctx, esdb.ReadAllOptions{From: esdb.Start{}}, 100)
			if err != nil {
				t.Fatal(err)
			}
			var inAll int
			for {
				e, err := all.Recv()
				if err != nil {
					break
				}
				if e.Event.StreamID == "s" {
					inAll++
				}
			}
			all.Close()
			if inAll != 10 {
				t.Errorf("$all holds %d events of the truncated stream, want all 10", inAll)
			}
			// Past the end: kept, and hiding what comes later.
			if err := setTB("s", 12); err != nil {
				t.Fatal(err)
			}
			if evs, err := readAll(t, c, "s", esdb.ReadStreamOptions{From: esdb.Start{}}, 100); err != nil || len(evs) != 0 {
				t.Errorf("fully truncated stream: %q, %v; want no events, no error", revs(evs), err)
			}
			if _, err := c.AppendToStream(ctx, "s", esdb.AppendToStreamOptions{ExpectedRevision: esdb.Revision(9)}, ev("A"), ev("A"), ev("A")); err != nil {
				t.Fatal(err)
			}
			if evs, err := readAll(t, c, "s", esdb.ReadStreamOptions{From: esdb.Start{}}, 100); err != nil || revs(evs) != "12" {
				t.Errorf("after appending past a $tb beyond the end: %q, %v; want only 12", revs(evs), err)
			}
			if _, err := c.TombstoneStream(ctx, "s", esdb.TombstoneStreamOptions{ExpectedRevision: esdb.Any{}}); err != nil {
				t.Fatal(err)
			}
			if err := setTB("s", 13); code(err) != esdb.ErrorCodeStreamDeleted {
				t.Errorf("metadata of a deleted stream: %v, want stream deleted", err)
			}
		})
	}
}

// A stream subscription's catch-up reads the stream, so it skips truncated
// events.
func TestSubscribeToTruncatedStream(t *testing.T) {
	srv := fakestreams.StartServer(t, fakestreams.Options{})
	c := newClient(t, srv)
	ctx := ctxT(t)
	if _, err := c.AppendToStream(ctx, "s", esdb.AppendToStreamOptions{}, ev("A"), ev("A"), ev("A")); err != nil {
		t.Fatal(err)
	}
	var meta esdb.StreamMetadata
	meta.SetTruncateBefore(2)
	if _, err := c.SetStreamMetadata(ctx, "s", esdb.AppendToStreamOptions{}, meta); err != nil {
		t.Fatal(err)
	}
	sub, err := c.SubscribeToStream(ctx, "s", esdb.SubscribeToStreamOptions{From: esdb.Start{}})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for {
		e := sub.Recv()
		if e.SubscriptionDropped != nil {
			t.Fatalf("dropped: %v", e.SubscriptionDropped.Error)
		}
		if e.EventAppeared != nil {
			if n := e.EventAppeared.Event.EventNumber; n != 2 {
				t.Fatalf("first event of the subscription is %d, want 2", n)
			}
			return
		}
	}
}
