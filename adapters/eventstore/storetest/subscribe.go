package storetest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
)

// ref names an appended event, to compare with what a subscription yields.
type ref struct {
	stream string
	rev    uint64
	id     eventstore.EventID
}

func (r ref) String() string { return fmt.Sprintf("%s@%d", r.stream, r.rev) }

func refs(stream string, first uint64, events []eventstore.EventData) []ref {
	out := make([]ref, len(events))
	for i, e := range events {
		out[i] = ref{stream, first + uint64(i), e.ID}
	}
	return out
}

func subscribe(t *testing.T, s eventstore.Store, filter eventstore.Filter, from eventstore.SubscribeFrom) eventstore.Subscription {
	t.Helper()
	sub, err := s.Subscribe(ctxFor(t), filter, from)
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	return sub
}

func recv(t *testing.T, sub eventstore.Subscription) eventstore.Item {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), recvTimeout)
	defer cancel()
	item, err := sub.Recv(ctx)
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	if (item.Event == nil) == !item.CaughtUp {
		t.Fatalf("recv: item has Event=%v and CaughtUp=%v, want exactly one", item.Event != nil, item.CaughtUp)
	}
	return item
}

// expectEvents receives len(want) events, in order, checking each and that
// positions rise; it returns the last position.
func expectEvents(t *testing.T, sub eventstore.Subscription, after eventstore.Position, want ...ref) eventstore.Position {
	t.Helper()
	last := after
	for i, w := range want {
		item := recv(t, sub)
		if item.CaughtUp {
			t.Fatalf("event %d: got CaughtUp, want %v", i, w)
		}
		e := item.Event
		got := ref{e.Stream, e.Revision, e.ID}
		if got != w {
			t.Fatalf("event %d: got %v, want %v", i, got, w)
		}
		if !last.Less(e.Position) {
			t.Fatalf("event %d (%v) at position %v, not after %v", i, got, e.Position, last)
		}
		last = e.Position
	}
	return last
}

func expectCaughtUp(t *testing.T, sub eventstore.Subscription) {
	t.Helper()
	if item := recv(t, sub); !item.CaughtUp {
		e := item.Event
		t.Fatalf("got event %s@%d, want CaughtUp", e.Stream, e.Revision)
	}
}

// expectQuiet checks the subscription yields nothing more for a moment. It
// cancels a Recv, so it comes last.
func expectQuiet(t *testing.T, sub eventstore.Subscription) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), quietTimeout)
	defer cancel()
	item, err := sub.Recv(ctx)
	if err == nil {
		if item.Event != nil {
			t.Fatalf("unexpected event %s@%d", item.Event.Stream, item.Event.Revision)
		}
		t.Fatalf("unexpected item %+v", item)
	}
}

// EventStoreDB catch-up subscriptions: a subscription to $all from the
// start delivers the stored events in commit order, then signals caught-up
// (servers from 23.10 send it; the adapter derives it), then delivers new
// events live, in order.
func (su *suite) subscribeFromStart(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	prefix := su.prefix(t)
	a, b := prefix+"a", prefix+"b"
	a1, b1, a2 := newEvents(2, "A"), newEvents(1, "B"), newEvents(1, "A")
	mustAppend(t, s, a, eventstore.NoStream(), a1...)
	mustAppend(t, s, b, eventstore.NoStream(), b1...)
	mustAppend(t, s, a, eventstore.Exact(1), a2...)

	sub := subscribe(t, s, eventstore.Filter{StreamPrefix: prefix}, eventstore.FromStart())
	var history []ref
	history = append(history, refs(a, 0, a1)...)
	history = append(history, refs(b, 0, b1)...)
	history = append(history, refs(a, 2, a2)...)
	last := expectEvents(t, sub, eventstore.Position{}, history...)
	expectCaughtUp(t, sub)

	b2, a3 := newEvents(1, "B"), newEvents(2, "A")
	mustAppend(t, s, b, eventstore.Exact(0), b2...)
	mustAppend(t, s, a, eventstore.Exact(2), a3...)
	expectEvents(t, sub, last, append(refs(b, 1, b2), refs(a, 3, a3)...)...)
	expectQuiet(t, sub)
}

// EventStoreDB: a subscription's start position is exclusive (a read's is
// inclusive): subscribing from an event's position starts with the next.
func (su *suite) subscribeFromPositionExclusive(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	prefix := su.prefix(t)
	stream := prefix + "s"
	events := newEvents(4, "A")
	var results []eventstore.AppendResult
	for i, e := range events[:3] {
		expected := eventstore.NoStream()
		if i > 0 {
			expected = eventstore.Exact(uint64(i - 1))
		}
		results = append(results, mustAppend(t, s, stream, expected, e))
	}
	filter := eventstore.Filter{StreamPrefix: prefix}

	t.Run("from the first event", func(t *testing.T) {
		sub := subscribe(t, s, filter, eventstore.After(results[0].Position))
		expectEvents(t, sub, results[0].Position, refs(stream, 1, events[1:3])...)
		expectCaughtUp(t, sub)
	})
	t.Run("from the last event", func(t *testing.T) {
		sub := subscribe(t, s, filter, eventstore.After(results[2].Position))
		expectCaughtUp(t, sub)
		mustAppend(t, s, stream, eventstore.Exact(2), events[3])
		expectEvents(t, sub, results[2].Position, refs(stream, 3, events[3:])...)
	})
}

// EventStoreDB server-side filtering: a subscription to $all with a stream
// name prefix filter delivers only the events of streams whose names start
// with the prefix, in history and live.
func (su *suite) subscribePrefix(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	prefix := su.prefix(t)
	in1, in2 := prefix+"in-1", prefix+"in-2"
	near, out := prefix+"in", prefix+"out-1" // "in" lacks the dash: not selected
	e1, e2 := newEvents(1, "A"), newEvents(1, "A")
	mustAppend(t, s, out, eventstore.NoStream(), newEvents(1, "X")...)
	mustAppend(t, s, in1, eventstore.NoStream(), e1...)
	mustAppend(t, s, near, eventstore.NoStream(), newEvents(1, "X")...)
	mustAppend(t, s, in2, eventstore.NoStream(), e2...)

	sub := subscribe(t, s, eventstore.Filter{StreamPrefix: prefix + "in-"}, eventstore.FromStart())
	last := expectEvents(t, sub, eventstore.Position{}, append(refs(in1, 0, e1), refs(in2, 0, e2)...)...)
	expectCaughtUp(t, sub)

	e3 := newEvents(1, "A")
	mustAppend(t, s, out, eventstore.Exact(0), newEvents(1, "X")...)
	mustAppend(t, s, near, eventstore.Exact(0), newEvents(1, "X")...)
	mustAppend(t, s, in1, eventstore.Exact(0), e3...)
	expectEvents(t, sub, last, refs(in1, 1, e3)...)
	expectQuiet(t, sub)
}

// EventStoreDB: stream names starting with "$" are reserved for system
// streams (metadata, statistics, projections' output); the port's zero
// Filter leaves them out, so that Postbox folds only its own streams.
func (su *suite) subscribeExcludesSystemStreams(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	plain, sys := su.stream(t, "plain"), "$"+su.stream(t, "sys")
	anchor := mustAppend(t, s, plain, eventstore.NoStream(), newEvents(1, "A")...)
	if _, err := s.Append(ctxFor(t), sys, eventstore.NoStream(), newEvents(1, "S")...); err != nil {
		t.Skipf("this store does not let Postbox write a system stream, so there is nothing to exclude: %v", err)
	}
	p1 := newEvents(1, "A")
	mustAppend(t, s, plain, eventstore.Exact(0), p1...)

	sub := subscribe(t, s, eventstore.Filter{}, eventstore.After(anchor.Position))
	// Other tests may share the store: skip their events, but no system
	// stream's, ours or the store's own, may show up.
	await := func(want ref) {
		t.Helper()
		for {
			item := recv(t, sub)
			if item.CaughtUp {
				continue
			}
			if strings.HasPrefix(item.Event.Stream, "$") {
				t.Fatalf("got event of system stream %q", item.Event.Stream)
			}
			if item.Event.Stream == want.stream && item.Event.Revision == want.rev {
				return
			}
		}
	}
	await(refs(plain, 1, p1)[0])

	mustAppend(t, s, sys, eventstore.Exact(0), newEvents(1, "S")...)
	p2 := newEvents(1, "A")
	mustAppend(t, s, plain, eventstore.Exact(1), p2...)
	await(refs(plain, 2, p2)[0])
}

// EventStoreDB catch-up subscriptions: the switch from reading history to
// live delivery loses nothing and repeats nothing, even while writers keep
// appending during it; every event arrives once, in commit order, and
// caught-up is signalled once.
func (su *suite) subscribeAcrossCatchUp(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	prefix := su.prefix(t)
	const writers, perWriter = 4, 60
	var appended atomic.Int64
	halfway := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	for w := range writers {
		stream := fmt.Sprintf("%sw%d", prefix, w)
		wg.Go(func() {
			for i := range uint64(perWriter) {
				expected := eventstore.NoStream()
				if i > 0 {
					expected = eventstore.Exact(i - 1)
				}
				if _, err := s.Append(ctxFor(t), stream, expected, newEvents(1, "W")...); err != nil {
					t.Errorf("append %s@%d: %v", stream, i, err)
					return
				}
				if appended.Add(1) >= writers*perWriter/4 {
					once.Do(func() { close(halfway) })
				}
			}
		})
	}
	select {
	case <-halfway:
	case <-time.After(opTimeout):
		t.Fatal("writers did not get going")
	}

	sub := subscribe(t, s, eventstore.Filter{StreamPrefix: prefix}, eventstore.FromStart())
	next := make(map[string]uint64)
	var last eventstore.Position
	caughtUp, events := 0, 0
	for events < writers*perWriter || caughtUp == 0 {
		item := recv(t, sub)
		if item.CaughtUp {
			caughtUp++
			if caughtUp > 1 {
				t.Fatal("CaughtUp signalled twice")
			}
			continue
		}
		e := item.Event
		if !last.Less(e.Position) {
			t.Fatalf("%s@%d at position %v, not after %v", e.Stream, e.Revision, e.Position, last)
		}
		last = e.Position
		if e.Revision != next[e.Stream] {
			t.Fatalf("%s: got revision %d, want %d (a gap or a duplicate)", e.Stream, e.Revision, next[e.Stream])
		}
		next[e.Stream]++
		events++
	}
	wg.Wait()
	expectQuiet(t, sub)
}

// EventStoreDB clients end a subscription's read when the caller's context
// (deadline) ends, with that context's error.
func (su *suite) subscribeRecvContext(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	sub := subscribe(t, s, eventstore.Filter{StreamPrefix: su.prefix(t)}, eventstore.FromStart())
	expectCaughtUp(t, sub)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := sub.Recv(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Recv after the deadline: got %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Recv took %v to notice its deadline", d)
	}
}

// EventStoreDB clients: closing a subscription ends a Recv waiting on it;
// the store goes on serving.
func (su *suite) subscribeClose(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	prefix := su.prefix(t)
	sub := subscribe(t, s, eventstore.Filter{StreamPrefix: prefix}, eventstore.FromStart())
	expectCaughtUp(t, sub)
	errc := make(chan error, 1)
	go func() {
		_, err := sub.Recv(t.Context())
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond) // let Recv start waiting
	if err := sub.Close(); err != nil {
		t.Errorf("close subscription: %v", err)
	}
	select {
	case err := <-errc:
		if err == nil {
			t.Error("Recv on a closed subscription returned no error")
		}
	case <-time.After(recvTimeout):
		t.Fatal("Recv still waiting after the subscription was closed")
	}
	mustAppend(t, s, prefix+"s", eventstore.NoStream(), newEvents(1, "A")...)
}

// A start after a position past the store's end (another database's, say)
// is refused, rather than waiting there and skipping what comes until then.
func (su *suite) subscribePastTheEnd(t *testing.T) {
	s, _ := su.open(t)
	res := mustAppend(t, s, su.stream(t, "a"), eventstore.NoStream(), newEvents(1, "A")...)
	far := eventstore.Position{Commit: res.Position.Commit + 1<<40, Prepare: res.Position.Prepare + 1<<40}
	sub, err := s.Subscribe(ctxFor(t), eventstore.Filter{}, eventstore.After(far))
	if err == nil {
		defer sub.Close()
		ctx, cancel := context.WithTimeout(ctxFor(t), recvTimeout)
		defer cancel()
		_, err = sub.Recv(ctx)
	}
	if !errors.Is(err, eventstore.ErrNotAPosition) {
		t.Fatalf("subscribe after a position past the end: %v, want ErrNotAPosition", err)
	}
}

// EventStoreDB: a subscription to $all from End is caught up at once and
// delivers only what is appended after it was made, here with a prefix
// filter (as a watcher of some streams' news subscribes).
func (su *suite) subscribeFromEnd(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	prefix := su.prefix(t)
	a, other := prefix+"in-a", prefix+"out"
	mustAppend(t, s, a, eventstore.NoStream(), newEvents(2, "A")...)
	mustAppend(t, s, other, eventstore.NoStream(), newEvents(1, "X")...)

	sub := subscribe(t, s, eventstore.Filter{StreamPrefix: prefix + "in-"}, eventstore.FromEnd())
	expectCaughtUp(t, sub)
	a2, b1 := newEvents(1, "A"), newEvents(2, "B")
	mustAppend(t, s, other, eventstore.Exact(0), newEvents(1, "X")...)
	mustAppend(t, s, a, eventstore.Exact(1), a2...)
	mustAppend(t, s, prefix+"in-b", eventstore.NoStream(), b1...)
	expectEvents(t, sub, eventstore.Position{}, append(refs(a, 2, a2), refs(prefix+"in-b", 0, b1)...)...)
	expectQuiet(t, sub)
}
