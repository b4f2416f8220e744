package storetest

import (
	"errors"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
)

// EventStoreDB: reading a stream forwards starts at the given revision,
// inclusive, and returns at most maxCount events; from past the end it
// returns no events and no error.
func (su *suite) readForward(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	stream := su.stream(t, "s")
	events := newEvents(5, "A")
	mustAppend(t, s, stream, eventstore.NoStream(), events[:3]...)
	mustAppend(t, s, stream, eventstore.Exact(2), events[3:]...)

	t.Run("all", func(t *testing.T) {
		checkEvents(t, mustRead(t, s, stream, 0, 100), stream, events, 0, false)
	})
	t.Run("from inclusive, limited", func(t *testing.T) {
		checkEvents(t, mustRead(t, s, stream, 1, 2), stream, events[1:3], 1, false)
	})
	t.Run("limit beyond the end", func(t *testing.T) {
		checkEvents(t, mustRead(t, s, stream, 3, 10), stream, events[3:], 3, false)
	})
	t.Run("last event", func(t *testing.T) {
		checkEvents(t, mustRead(t, s, stream, 4, 1), stream, events[4:], 4, false)
	})
	t.Run("past the end", func(t *testing.T) {
		if got := mustRead(t, s, stream, 5, 10); len(got) != 0 {
			t.Errorf("got revisions %v, want none", revisions(got))
		}
	})
	t.Run("paging", func(t *testing.T) {
		var got []eventstore.RecordedEvent
		for from := uint64(0); ; {
			page := mustRead(t, s, stream, from, 2)
			if len(page) == 0 {
				break
			}
			got = append(got, page...)
			from = page[len(page)-1].Revision + 1
		}
		checkEvents(t, got, stream, events, 0, false)
	})
}

// EventStoreDB: reading a stream backwards from the end returns the newest
// events first, at most maxCount of them.
func (su *suite) readBackward(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	stream := su.stream(t, "s")
	events := newEvents(5, "A")
	mustAppend(t, s, stream, eventstore.NoStream(), events...)

	got, err := s.ReadStreamBackward(ctxFor(t), stream, 2)
	if err != nil {
		t.Fatalf("read backward: %v", err)
	}
	checkEvents(t, got, stream, reversed(events[3:]), 4, true)

	got, err = s.ReadStreamBackward(ctxFor(t), stream, 10)
	if err != nil {
		t.Fatalf("read backward: %v", err)
	}
	checkEvents(t, got, stream, reversed(events), 4, true)
}

// EventStoreDB: reading a stream that was never written returns
// StreamNotFound, forwards and backwards.
func (su *suite) readNotFound(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	stream := su.stream(t, "missing")
	if _, err := s.ReadStream(ctxFor(t), stream, 0, 10); !errors.Is(err, eventstore.ErrStreamNotFound) {
		t.Errorf("ReadStream: got %v, want ErrStreamNotFound", err)
	}
	if _, err := s.ReadStreamBackward(ctxFor(t), stream, 10); !errors.Is(err, eventstore.ErrStreamNotFound) {
		t.Errorf("ReadStreamBackward: got %v, want ErrStreamNotFound", err)
	}
}

// EventStoreDB: a tombstoned (hard-deleted) stream can never be recreated:
// reads and appends, whatever their expected revision, return StreamDeleted,
// and so does deleting it again.
func (su *suite) deleteTombstone(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	stream := su.stream(t, "s")
	mustAppend(t, s, stream, eventstore.NoStream(), newEvents(2, "A")...)
	if err := s.Delete(ctxFor(t), stream, eventstore.Exact(1)); err != nil {
		t.Fatalf("delete: %v", err)
	}
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, eventstore.ErrStreamDeleted) {
			t.Errorf("%s: got %v, want ErrStreamDeleted", what, err)
		}
	}
	_, err := s.ReadStream(ctxFor(t), stream, 0, 10)
	check("ReadStream", err)
	_, err = s.ReadStreamBackward(ctxFor(t), stream, 10)
	check("ReadStreamBackward", err)
	_, err = s.Append(ctxFor(t), stream, eventstore.Any(), newEvents(1, "B")...)
	check("Append Any", err)
	_, err = s.Append(ctxFor(t), stream, eventstore.NoStream(), newEvents(1, "B")...)
	check("Append NoStream", err)
	_, err = s.Append(ctxFor(t), stream, eventstore.Exact(1), newEvents(1, "B")...)
	check("Append Exact", err)
	check("Delete again", s.Delete(ctxFor(t), stream, eventstore.Any()))

	// Other streams are untouched.
	other := su.stream(t, "other")
	mustAppend(t, s, other, eventstore.NoStream(), newEvents(1, "C")...)
	if got := mustRead(t, s, other, 0, 10); len(got) != 1 {
		t.Errorf("other stream holds %d events, want 1", len(got))
	}
}

// EventStoreDB: deleting a stream honours the expected revision like an
// append, failing with WrongExpectedVersion and deleting nothing.
func (su *suite) deleteStaleRevision(t *testing.T) {
	t.Parallel()
	s, _ := su.open(t)
	stream := su.stream(t, "s")
	mustAppend(t, s, stream, eventstore.NoStream(), newEvents(3, "A")...)
	wantConflict(t, s.Delete(ctxFor(t), stream, eventstore.Exact(1)), stream, 2, true)
	wantConflict(t, s.Delete(ctxFor(t), stream, eventstore.NoStream()), stream, 2, true)
	if got := mustRead(t, s, stream, 0, 10); len(got) != 3 {
		t.Errorf("stream holds %d events after failed deletes, want 3", len(got))
	}
}
