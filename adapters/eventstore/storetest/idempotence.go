package storetest

import (
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
)

// EventStoreDB "idempotence": retrying a write with the same event IDs and
// the same expected version (here NoStream) is acknowledged as successful
// and no duplicate events are written.
func (su *suite) idempotentNoStream(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	stream := su.stream(t, "s")
	events := newEvents(2, "A")
	first := mustAppend(t, s, stream, eventstore.NoStream(), events...)
	retry := mustAppend(t, s, stream, eventstore.NoStream(), events...)
	if retry.NextExpectedRevision != first.NextExpectedRevision {
		t.Errorf("retry NextExpectedRevision = %d, first %d", retry.NextExpectedRevision, first.NextExpectedRevision)
	}
	checkEvents(t, mustRead(t, s, stream, 0, 10), stream, events, 0, false)
}

// EventStoreDB "idempotence": with an exact expected version behind the
// stream's, the events written after that version are compared by ID; if
// they all match, the retry succeeds without writing, even after later
// appends.
func (su *suite) idempotentExact(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	stream := su.stream(t, "s")
	head := newEvents(1, "A")
	body := newEvents(2, "B")
	tail := newEvents(1, "C")
	mustAppend(t, s, stream, eventstore.NoStream(), head...)
	first := mustAppend(t, s, stream, eventstore.Exact(0), body...)
	retry := mustAppend(t, s, stream, eventstore.Exact(0), body...)
	if retry.NextExpectedRevision != first.NextExpectedRevision {
		t.Errorf("retry NextExpectedRevision = %d, first %d", retry.NextExpectedRevision, first.NextExpectedRevision)
	}
	mustAppend(t, s, stream, eventstore.Exact(2), tail...)
	late := mustAppend(t, s, stream, eventstore.Exact(0), body...)
	if late.NextExpectedRevision != 2 {
		t.Errorf("late retry NextExpectedRevision = %d, want 2", late.NextExpectedRevision)
	}
	all := append(append(append([]eventstore.EventData{}, head...), body...), tail...)
	checkEvents(t, mustRead(t, s, stream, 0, 10), stream, all, 0, false)
}

// EventStoreDB "idempotence": with expected version Any the check is best
// effort (a cache of recent event IDs), but a prompt retry of the same
// events is acknowledged without a duplicate.
func (su *suite) idempotentAny(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	stream := su.stream(t, "s")
	before := newEvents(1, "A")
	events := newEvents(2, "B")
	mustAppend(t, s, stream, eventstore.Any(), before...)
	first := mustAppend(t, s, stream, eventstore.Any(), events...)
	retry := mustAppend(t, s, stream, eventstore.Any(), events...)
	if retry.NextExpectedRevision != first.NextExpectedRevision {
		t.Errorf("retry NextExpectedRevision = %d, first %d", retry.NextExpectedRevision, first.NextExpectedRevision)
	}
	checkEvents(t, mustRead(t, s, stream, 0, 10), stream, append(before, events...), 0, false)
}

// EventStoreDB "idempotence": when the events after the expected version
// carry other IDs, the write is a genuine conflict: WrongExpectedVersion.
func (su *suite) idempotentOtherIDsConflict(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	stream := su.stream(t, "s")
	mustAppend(t, s, stream, eventstore.NoStream(), newEvents(2, "A")...)
	_, err := s.Append(ctxFor(t), stream, eventstore.NoStream(), newEvents(2, "A")...)
	wantConflict(t, err, stream, 1, true)
}

// EventStoreDB "idempotence": a retry whose first events match but whose
// later ones do not is not idempotent (the server's CorruptedIdempotency
// decision), and reaches the client as WrongExpectedVersion.
func (su *suite) idempotentPartialConflicts(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	stream := su.stream(t, "s")
	events := newEvents(3, "A")
	mustAppend(t, s, stream, eventstore.NoStream(), events...)
	changed := append([]eventstore.EventData{events[0], events[1]}, newEvents(1, "B")...)
	_, err := s.Append(ctxFor(t), stream, eventstore.NoStream(), changed...)
	wantConflict(t, err, stream, 2, true)
	checkEvents(t, mustRead(t, s, stream, 0, 10), stream, events, 0, false)
}
