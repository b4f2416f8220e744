package storetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
)

// EventStoreDB: acknowledged writes are durable; after the store (or the
// client) is closed and opened again, streams, tombstones and positions are
// as they were, idempotence by expected revision still holds (it rests on
// the stream index, not on a cache) and new events go after the old ones.
func (su *suite) reopenKeepsEverything(t *testing.T) {
	t.Parallel()
	if su.h.Reopen == nil {
		t.Skip("Harness.Reopen is nil: this harness cannot open a store again over the same storage")
	}
	s, raw := su.open(t)
	a, gone := su.stream(t, "a"), su.stream(t, "gone")
	first, second := newEvents(2, "A"), newEvents(1, "A")
	mustAppend(t, s, a, eventstore.NoStream(), first...)
	last := mustAppend(t, s, a, eventstore.Exact(1), second...)
	mustAppend(t, s, gone, eventstore.NoStream(), newEvents(1, "G")...)
	if err := s.Delete(ctxFor(t), gone, eventstore.Exact(0)); err != nil {
		t.Fatalf("delete: %v", err)
	}
	before := mustRead(t, s, a, 0, 10)
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}

	reopened := su.h.Reopen(t, raw)
	if reopened == nil {
		t.Fatal("Harness.Reopen returned nil")
	}
	s = &closeOnce{Store: reopened}
	t.Cleanup(func() { _ = s.Close() })

	after := mustRead(t, s, a, 0, 10)
	checkEvents(t, after, a, append(append([]eventstore.EventData{}, first...), second...), 0, false)
	for i := range min(len(before), len(after)) {
		if before[i].Position != after[i].Position || !before[i].Created.Equal(after[i].Created) {
			t.Errorf("event %d was at %v, created %v; now at %v, created %v",
				i, before[i].Position, before[i].Created, after[i].Position, after[i].Created)
		}
	}
	if _, err := s.ReadStream(ctxFor(t), gone, 0, 10); !errors.Is(err, eventstore.ErrStreamDeleted) {
		t.Errorf("deleted stream after reopening: got %v, want ErrStreamDeleted", err)
	}
	if res := mustAppend(t, s, a, eventstore.NoStream(), first...); res.NextExpectedRevision != 1 {
		t.Errorf("retry after reopening: NextExpectedRevision = %d, want 1", res.NextExpectedRevision)
	}
	more := newEvents(1, "A")
	res := mustAppend(t, s, a, eventstore.Exact(2), more...)
	if res.NextExpectedRevision != 3 || !last.Position.Less(res.Position) {
		t.Errorf("append after reopening: got revision %d at %v, want 3 after %v", res.NextExpectedRevision, res.Position, last.Position)
	}

	sub := subscribe(t, s, eventstore.Filter{StreamPrefix: a}, eventstore.FromStart())
	want := append(append(refs(a, 0, first), refs(a, 2, second)...), refs(a, 3, more)...)
	expectEvents(t, sub, eventstore.Position{}, want...)
	expectCaughtUp(t, sub)
}

// The port: once closed, a store answers every call with ErrClosed and ends
// its subscriptions with it (the EventStoreDB client likewise refuses calls
// once closed).
func (su *suite) closedStore(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	prefix := su.prefix(t)
	stream := prefix + "s"
	mustAppend(t, s, stream, eventstore.NoStream(), newEvents(1, "A")...)
	sub := subscribe(t, s, eventstore.Filter{StreamPrefix: prefix}, eventstore.FromStart())
	recv(t, sub)
	expectCaughtUp(t, sub)
	errc := make(chan error, 1)
	go func() {
		_, err := sub.Recv(t.Context())
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond) // let Recv start waiting

	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, eventstore.ErrClosed) {
			t.Errorf("waiting Recv: got %v, want ErrClosed", err)
		}
	case <-time.After(recvTimeout):
		t.Fatal("Recv still waiting after the store was closed")
	}

	ctx := ctxFor(t)
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, eventstore.ErrClosed) {
			t.Errorf("%s: got %v, want ErrClosed", what, err)
		}
	}
	_, err := s.Append(ctx, stream, eventstore.Exact(0), newEvents(1, "A")...)
	check("Append", err)
	_, err = s.ReadStream(ctx, stream, 0, 10)
	check("ReadStream", err)
	_, err = s.ReadStreamBackward(ctx, stream, 10)
	check("ReadStreamBackward", err)
	check("Delete", s.Delete(ctx, stream, eventstore.Any()))
	check("Truncate", s.Truncate(ctx, stream, 1))
	_, err = s.TruncatedBefore(ctx, stream)
	check("TruncatedBefore", err)
	// A store may refuse the subscription or end it at the first Recv.
	if sub2, err := s.Subscribe(ctx, eventstore.Filter{StreamPrefix: prefix}, eventstore.FromStart()); err != nil {
		check("Subscribe", err)
	} else {
		rctx, cancel := context.WithTimeout(ctx, recvTimeout)
		defer cancel()
		_, err := sub2.Recv(rctx)
		check("Recv of a subscription made after Close", err)
		_ = sub2.Close()
	}
}
