package storetest

import (
	"errors"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
)

// truncated appends n events to a new stream and truncates it before
// `before`; it returns the events and their positions as read before the
// truncation.
func truncated(t *testing.T, s eventstore.Store, stream string, n int, before uint64) ([]eventstore.EventData, []eventstore.RecordedEvent) {
	t.Helper()
	events := newEvents(n, "A")
	mustAppend(t, s, stream, eventstore.NoStream(), events...)
	stored := mustRead(t, s, stream, 0, n)
	if err := s.Truncate(ctxFor(t), stream, before); err != nil {
		t.Fatalf("truncate %q before %d: %v", stream, before, err)
	}
	return events, stored
}

func wantTruncatedBefore(t *testing.T, s eventstore.Store, stream string, want uint64) {
	t.Helper()
	got, err := s.TruncatedBefore(ctxFor(t), stream)
	if err != nil {
		t.Fatalf("TruncatedBefore(%q): %v", stream, err)
	}
	if got != want {
		t.Errorf("TruncatedBefore(%q) = %d, want %d", stream, got, want)
	}
}

// EventStoreDB truncate-before ($tb, IndexReader.ReadStreamEventsForward and
// Backward): reads start at the first kept revision, whatever revision they
// ask for below it; the kept events are as they were (same revisions, IDs,
// positions); the limit counts kept events only.
func (su *suite) truncateReadsStartAtTheFirstKept(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	stream := su.stream(t, "s")
	events, stored := truncated(t, s, stream, 10, 4)

	got := mustRead(t, s, stream, 0, 100)
	checkEvents(t, got, stream, events[4:], 4, false)
	for i, e := range got {
		if e.Position != stored[4+i].Position {
			t.Errorf("event %d moved from %v to %v", e.Revision, stored[4+i].Position, e.Position)
		}
	}
	checkEvents(t, mustRead(t, s, stream, 2, 3), stream, events[4:7], 4, false)
	checkEvents(t, mustRead(t, s, stream, 6, 2), stream, events[6:8], 6, false)
	back, err := s.ReadStreamBackward(ctxFor(t), stream, 100)
	if err != nil {
		t.Fatalf("read backward: %v", err)
	}
	checkEvents(t, back, stream, reversed(events[4:]), 9, true)
	wantTruncatedBefore(t, s, stream, 4)
}

// EventStoreDB: truncation leaves the stream's revisions alone, so appends
// go on expecting the last revision, and an expectation below it or of no
// stream still conflicts with the real last revision.
func (su *suite) truncateKeepsRevisions(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	stream := su.stream(t, "s")
	events, _ := truncated(t, s, stream, 5, 3)

	_, err := s.Append(ctxFor(t), stream, eventstore.NoStream(), newEvents(1, "A")...)
	wantConflict(t, err, stream, 4, true)
	_, err = s.Append(ctxFor(t), stream, eventstore.Exact(1), newEvents(1, "A")...)
	wantConflict(t, err, stream, 4, true)
	more := newEvents(2, "A")
	if res := mustAppend(t, s, stream, eventstore.Exact(4), more...); res.NextExpectedRevision != 6 {
		t.Errorf("append after truncation: NextExpectedRevision = %d, want 6", res.NextExpectedRevision)
	}
	checkEvents(t, mustRead(t, s, stream, 0, 10), stream, append(events[3:], more...), 3, false)
}

// EventStoreDB: truncating before one past the last revision hides every
// event; the stream still exists (reads succeed, empty; no-stream appends
// conflict) and the next append takes the next revision, at a position
// after every truncated event's (positions are never given twice). A
// subscription whose history is all truncated is caught up at once.
func (su *suite) truncateEverything(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	stream := su.stream(t, "s")
	_, stored := truncated(t, s, stream, 3, 3)
	sub := subscribe(t, s, eventstore.Filter{StreamPrefix: su.prefix(t)}, eventstore.FromStart())
	expectCaughtUp(t, sub)

	if got := mustRead(t, s, stream, 0, 10); len(got) != 0 {
		t.Errorf("read of a fully truncated stream: got revisions %v, want none", revisions(got))
	}
	back, err := s.ReadStreamBackward(ctxFor(t), stream, 10)
	if err != nil || len(back) != 0 {
		t.Errorf("read backward of a fully truncated stream: got %v, %v; want no events, no error", revisions(back), err)
	}
	_, err = s.Append(ctxFor(t), stream, eventstore.NoStream(), newEvents(1, "A")...)
	wantConflict(t, err, stream, 2, true)
	next := newEvents(1, "A")
	res := mustAppend(t, s, stream, eventstore.Exact(2), next...)
	if res.NextExpectedRevision != 3 {
		t.Errorf("append after truncating everything: NextExpectedRevision = %d, want 3", res.NextExpectedRevision)
	}
	if !stored[2].Position.Less(res.Position) {
		t.Errorf("append after truncating everything landed at %v, not after the truncated %v", res.Position, stored[2].Position)
	}
	checkEvents(t, mustRead(t, s, stream, 0, 10), stream, next, 3, false)
	expectEvents(t, sub, stored[2].Position, refs(stream, 3, next)...)
}

// EventStoreDB keeps any $tb it is given, and one past the end would hide
// the events appended later as well: the port refuses it, and nothing is
// hidden.
func (su *suite) truncateBeyondTheEndRefused(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	stream := su.stream(t, "s")
	events := newEvents(3, "A")
	mustAppend(t, s, stream, eventstore.NoStream(), events...)
	err := s.Truncate(ctxFor(t), stream, 4)
	if !errors.Is(err, eventstore.ErrTruncateBeyondEnd) {
		t.Fatalf("truncate before 4 with the last event at 2: got %v, want ErrTruncateBeyondEnd", err)
	}
	more := newEvents(2, "A")
	mustAppend(t, s, stream, eventstore.Exact(2), more...)
	checkEvents(t, mustRead(t, s, stream, 0, 10), stream, append(events, more...), 0, false)
	wantTruncatedBefore(t, s, stream, 0)
}

// A truncation is idempotent and never moves back (EventStoreDB would
// show truncated events again, until a scavenge, if $tb were lowered: the
// port does not lower it). Before 0 does nothing.
func (su *suite) truncateIdempotentNeverBack(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	stream := su.stream(t, "s")
	events, _ := truncated(t, s, stream, 6, 4)
	for _, before := range []uint64{4, 2, 0} {
		if err := s.Truncate(ctxFor(t), stream, before); err != nil {
			t.Fatalf("truncate again before %d: %v", before, err)
		}
		checkEvents(t, mustRead(t, s, stream, 0, 10), stream, events[4:], 4, false)
		wantTruncatedBefore(t, s, stream, 4)
	}
	fresh := su.stream(t, "fresh")
	mustAppend(t, s, fresh, eventstore.NoStream(), newEvents(1, "A")...)
	if err := s.Truncate(ctxFor(t), fresh, 0); err != nil {
		t.Fatalf("truncate before 0: %v", err)
	}
	wantTruncatedBefore(t, s, fresh, 0)
}

// A stream that never had events cannot be truncated (on EventStoreDB the
// metadata would hide the first events appended later); a deleted one is
// deleted.
func (su *suite) truncateMissingOrDeleted(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	missing, gone := su.stream(t, "missing"), su.stream(t, "gone")
	if err := s.Truncate(ctxFor(t), missing, 1); !errors.Is(err, eventstore.ErrStreamNotFound) {
		t.Errorf("truncate a missing stream: got %v, want ErrStreamNotFound", err)
	}
	if _, err := s.TruncatedBefore(ctxFor(t), missing); !errors.Is(err, eventstore.ErrStreamNotFound) {
		t.Errorf("TruncatedBefore of a missing stream: got %v, want ErrStreamNotFound", err)
	}
	mustAppend(t, s, gone, eventstore.NoStream(), newEvents(2, "A")...)
	if err := s.Delete(ctxFor(t), gone, eventstore.Exact(1)); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if err := s.Truncate(ctxFor(t), gone, 1); !errors.Is(err, eventstore.ErrStreamDeleted) {
		t.Errorf("truncate a deleted stream: got %v, want ErrStreamDeleted", err)
	}
	if _, err := s.TruncatedBefore(ctxFor(t), gone); !errors.Is(err, eventstore.ErrStreamDeleted) {
		t.Errorf("TruncatedBefore of a deleted stream: got %v, want ErrStreamDeleted", err)
	}
}

// Subscriptions skip truncated events on every store (EventStoreDB keeps
// them in $all until a scavenge; the adapter skips them), with a prefix
// filter and with the default one, and the position of a truncated event
// is still a place to subscribe after.
func (su *suite) truncateSubscriptionsSkip(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	prefix := su.prefix(t)
	a, b := prefix+"a", prefix+"b"
	a1 := newEvents(4, "A")
	mustAppend(t, s, a, eventstore.NoStream(), a1...)
	b1 := newEvents(1, "B")
	mustAppend(t, s, b, eventstore.NoStream(), b1...)
	a2 := newEvents(2, "A")
	mustAppend(t, s, a, eventstore.Exact(3), a2...)
	stored := mustRead(t, s, a, 0, 10)
	if err := s.Truncate(ctxFor(t), a, 5); err != nil {
		t.Fatalf("truncate: %v", err)
	}
	want := append(refs(b, 0, b1), refs(a, 5, a2[1:])...)

	sub := subscribe(t, s, eventstore.Filter{StreamPrefix: prefix}, eventstore.FromStart())
	last := expectEvents(t, sub, eventstore.Position{}, want...)
	expectCaughtUp(t, sub)
	a3 := newEvents(1, "A")
	mustAppend(t, s, a, eventstore.Exact(5), a3...)
	expectEvents(t, sub, last, refs(a, 6, a3)...)

	t.Run("after a truncated event", func(t *testing.T) {
		sub := subscribe(t, s, eventstore.Filter{StreamPrefix: prefix}, eventstore.After(stored[1].Position))
		expectEvents(t, sub, stored[1].Position, append(want, refs(a, 6, a3)...)...)
		expectCaughtUp(t, sub)
	})
	t.Run("default filter", func(t *testing.T) {
		// Other tests may share the store: look at this test's streams only.
		sub := subscribe(t, s, eventstore.Filter{}, eventstore.After(stored[0].Position))
		var got []ref
		for len(got) < 3 {
			item := recv(t, sub)
			if item.CaughtUp || (item.Event.Stream != a && item.Event.Stream != b) {
				continue
			}
			got = append(got, ref{item.Event.Stream, item.Event.Revision, item.Event.ID})
		}
		for i, w := range append(want, refs(a, 6, a3)...) {
			if got[i] != w {
				t.Errorf("event %d: got %v, want %v", i, got[i], w)
			}
		}
	})
}

// EventStoreDB keeps stream metadata like any event: after the store is
// closed and opened again, a truncation point holds, for a partly and for
// a fully truncated stream, and appends go on at the right revision.
func (su *suite) truncateSurvivesReopen(t *testing.T) {
	t.Parallel()
	if su.h.Reopen == nil {
		t.Skip("Harness.Reopen is nil: this harness cannot open a store again over the same storage")
	}
	s, raw := su.open(t)
	part, all := su.stream(t, "part"), su.stream(t, "all")
	events, _ := truncated(t, s, part, 5, 2)
	truncated(t, s, all, 3, 3)
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	reopened := su.h.Reopen(t, raw)
	if reopened == nil {
		t.Fatal("Harness.Reopen returned nil")
	}
	s = &closeOnce{Store: reopened}
	t.Cleanup(func() { _ = s.Close() })

	checkEvents(t, mustRead(t, s, part, 0, 10), part, events[2:], 2, false)
	wantTruncatedBefore(t, s, part, 2)
	wantTruncatedBefore(t, s, all, 3)
	if got := mustRead(t, s, all, 0, 10); len(got) != 0 {
		t.Errorf("fully truncated stream after reopening: got revisions %v, want none", revisions(got))
	}
	_, err := s.Append(ctxFor(t), all, eventstore.Exact(1), newEvents(1, "A")...)
	wantConflict(t, err, all, 2, true)
	next := newEvents(1, "A")
	mustAppend(t, s, all, eventstore.Exact(2), next...)
	checkEvents(t, mustRead(t, s, all, 0, 10), all, next, 3, false)
	more := newEvents(1, "A")
	mustAppend(t, s, part, eventstore.Exact(4), more...)
	checkEvents(t, mustRead(t, s, part, 0, 10), part, append(events[2:], more...), 2, false)
}
