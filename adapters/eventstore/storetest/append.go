package storetest

import (
	"errors"
	"sync"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
)

// EventStoreDB: expected revision NoStream succeeds on a stream that does
// not exist; revisions start at 0 and the result's next expected revision is
// the last event's.
func (su *suite) appendNoStreamCreatesStream(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	stream := su.stream(t, "s")
	events := newEvents(2, "Created")
	res := mustAppend(t, s, stream, eventstore.NoStream(), events...)
	if res.NextExpectedRevision != 1 {
		t.Errorf("NextExpectedRevision = %d, want 1", res.NextExpectedRevision)
	}
	got := mustRead(t, s, stream, 0, 10)
	checkEvents(t, got, stream, events, 0, false)
	if len(got) == 2 && got[1].Position != res.Position {
		t.Errorf("result position %v, last event at %v", res.Position, got[1].Position)
	}
}

// EventStoreDB: expected revision NoStream fails with WrongExpectedVersion
// if the stream exists.
func (su *suite) appendNoStreamOnExistingConflicts(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	stream := su.stream(t, "s")
	mustAppend(t, s, stream, eventstore.NoStream(), newEvents(2, "A")...)
	_, err := s.Append(ctxFor(t), stream, eventstore.NoStream(), newEvents(1, "B")...)
	wantConflict(t, err, stream, 1, true)
}

// EventStoreDB: an exact expected revision succeeds when it is the stream's
// last event number, and the events go on after it.
func (su *suite) appendExactRevision(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	stream := su.stream(t, "s")
	first := newEvents(1, "A")
	second := newEvents(2, "B")
	third := newEvents(1, "C")
	mustAppend(t, s, stream, eventstore.NoStream(), first...)
	if res := mustAppend(t, s, stream, eventstore.Exact(0), second...); res.NextExpectedRevision != 2 {
		t.Errorf("after Exact(0): NextExpectedRevision = %d, want 2", res.NextExpectedRevision)
	}
	if res := mustAppend(t, s, stream, eventstore.Exact(2), third...); res.NextExpectedRevision != 3 {
		t.Errorf("after Exact(2): NextExpectedRevision = %d, want 3", res.NextExpectedRevision)
	}
	all := append(append(append([]eventstore.EventData{}, first...), second...), third...)
	checkEvents(t, mustRead(t, s, stream, 0, 10), stream, all, 0, false)
}

// EventStoreDB: an expected revision other than the stream's last event
// number, behind or ahead, fails with WrongExpectedVersion carrying the
// actual revision, and writes nothing.
func (su *suite) appendStaleRevisionConflicts(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	stream := su.stream(t, "s")
	mustAppend(t, s, stream, eventstore.NoStream(), newEvents(3, "A")...)
	for _, expected := range []uint64{0, 1, 3, 7} {
		_, err := s.Append(ctxFor(t), stream, eventstore.Exact(expected), newEvents(1, "B")...)
		wantConflict(t, err, stream, 2, true)
	}
	if got := mustRead(t, s, stream, 0, 10); len(got) != 3 {
		t.Errorf("stream holds %d events after conflicts, want 3", len(got))
	}
}

// EventStoreDB: an exact expected revision on a stream that does not exist
// fails with WrongExpectedVersion (the actual version is "no stream").
func (su *suite) appendExactOnMissingStreamConflicts(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	stream := su.stream(t, "s")
	_, err := s.Append(ctxFor(t), stream, eventstore.Exact(0), newEvents(1, "A")...)
	wantConflict(t, err, stream, 0, false)
	_, err = s.ReadStream(ctxFor(t), stream, 0, 10)
	if !errors.Is(err, eventstore.ErrStreamNotFound) {
		t.Errorf("read after the failed append: got %v, want ErrStreamNotFound", err)
	}
}

// EventStoreDB: expected revision Any disables the concurrency check: it
// creates a missing stream and appends to an existing one.
func (su *suite) appendAny(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	stream := su.stream(t, "s")
	first := newEvents(2, "A")
	second := newEvents(1, "B")
	if res := mustAppend(t, s, stream, eventstore.Any(), first...); res.NextExpectedRevision != 1 {
		t.Errorf("first Any: NextExpectedRevision = %d, want 1", res.NextExpectedRevision)
	}
	if res := mustAppend(t, s, stream, eventstore.Any(), second...); res.NextExpectedRevision != 2 {
		t.Errorf("second Any: NextExpectedRevision = %d, want 2", res.NextExpectedRevision)
	}
	checkEvents(t, mustRead(t, s, stream, 0, 10), stream, append(first, second...), 0, false)
}

// EventStoreDB: optimistic concurrency. Of writers racing with the same
// expected revision exactly one succeeds; the others get WrongExpectedVersion
// with the revision the winner wrote. This is what keeps two replicas from
// both advancing a delivery cursor.
func (su *suite) appendConcurrentExact(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	stream := su.stream(t, "s")
	const writers, rounds = 8, 12
	var winners []eventstore.EventData
	for round := range uint64(rounds) {
		expected := eventstore.NoStream()
		if round > 0 {
			expected = eventstore.Exact(round - 1)
		}
		start := make(chan struct{})
		type outcome struct {
			event eventstore.EventData
			res   eventstore.AppendResult
			err   error
		}
		outcomes := make([]outcome, writers)
		var wg sync.WaitGroup
		for i := range outcomes {
			outcomes[i].event = newEvents(1, "Race")[0]
			wg.Go(func() {
				<-start
				outcomes[i].res, outcomes[i].err = s.Append(ctxFor(t), stream, expected, outcomes[i].event)
			})
		}
		close(start)
		wg.Wait()
		won := 0
		for _, o := range outcomes {
			if o.err == nil {
				won++
				winners = append(winners, o.event)
				if o.res.NextExpectedRevision != round {
					t.Errorf("round %d: winner's NextExpectedRevision = %d", round, o.res.NextExpectedRevision)
				}
				continue
			}
			wantConflict(t, o.err, stream, round, true)
		}
		if won != 1 {
			t.Fatalf("round %d: %d appends succeeded, want exactly 1", round, won)
		}
	}
	checkEvents(t, mustRead(t, s, stream, 0, 2*rounds), stream, winners, 0, false)
}

// A store that appends to several streams in one commit (MultiAppender;
// EventStoreDB has no such call, and skips this case) checks each part
// against its own expected revision and answers each as its own Append
// would: a conflict in one part leaves the others stored.
func (su *suite) appendStreams(t *testing.T) {
	s, raw := su.open(t)
	m, ok := raw.(eventstore.MultiAppender)
	if !ok {
		t.Skip("the store has no AppendStreams")
	}
	ctx := ctxFor(t)
	a, b, c := su.stream(t, "a"), su.stream(t, "b"), su.stream(t, "c")
	mustAppend(t, s, b, eventstore.NoStream(), newEvents(1, "seed")...)
	res, errs := m.AppendStreams(ctx, []eventstore.StreamAppend{
		{Stream: a, Expected: eventstore.NoStream(), Events: newEvents(2, "part")},
		{Stream: b, Expected: eventstore.Exact(5), Events: newEvents(1, "part")},
		{Stream: c, Expected: eventstore.NoStream(), Events: newEvents(1, "part")},
		{Stream: c, Expected: eventstore.Any(), Events: nil},
	})
	if len(res) != 4 || len(errs) != 4 {
		t.Fatalf("%d results and %d errors for 4 parts", len(res), len(errs))
	}
	if errs[0] != nil || res[0].NextExpectedRevision != 1 {
		t.Errorf("part a: %+v, %v; want revision 1", res[0], errs[0])
	}
	if !errors.Is(errs[1], eventstore.ErrWrongExpectedRevision) {
		t.Errorf("part b: %v, want a wrong expected revision", errs[1])
	}
	if errs[2] != nil || res[2].NextExpectedRevision != 0 {
		t.Errorf("part c: %+v, %v; want revision 0", res[2], errs[2])
	}
	if errs[3] == nil {
		t.Errorf("a part with no events: no error")
	}
	if got := mustRead(t, s, a, 0, 10); len(got) != 2 {
		t.Errorf("stream a holds %d events, want 2", len(got))
	}
	if got := mustRead(t, s, b, 0, 10); len(got) != 1 {
		t.Errorf("stream b holds %d events, want 1 (the refused part stored nothing)", len(got))
	}
	if got := mustRead(t, s, c, 0, 10); len(got) != 1 {
		t.Errorf("stream c holds %d events, want 1", len(got))
	}
}
