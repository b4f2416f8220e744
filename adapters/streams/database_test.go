package streams

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/memory"
)

// identityStore is a store whose database stream reads or appends fail
// as set, and whose first append can be beaten by another writer's.
type identityStore struct {
	*memory.Store
	readErr, appendErr error
	// emptyRead: the database stream reads as no events and no error
	// (a stream whose events were all removed).
	emptyRead bool
	// beaten, if set, writes another server's identity just before this
	// one's first append, as a server starting at the same moment would.
	beaten  func()
	appends int
}

func (s *identityStore) ReadStream(ctx context.Context, stream string, from uint64, limit int) ([]eventstore.RecordedEvent, error) {
	if s.readErr != nil {
		return nil, s.readErr
	}
	if s.emptyRead {
		return nil, nil
	}
	return s.Store.ReadStream(ctx, stream, from, limit)
}

func (s *identityStore) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	s.appends++
	if s.appendErr != nil {
		return eventstore.AppendResult{}, s.appendErr
	}
	if s.beaten != nil {
		beaten := s.beaten
		s.beaten = nil
		beaten()
	}
	return s.Store.Append(ctx, stream, expected, events...)
}

// Given a store with no database identity, when DatabaseID is asked twice,
// then the first call writes a random ID and both return it; another
// reader of the store sees the same.
func TestTheFirstCallerWritesTheDatabaseIdentity(t *testing.T) {
	t.Parallel()
	store := &identityStore{Store: memory.New(memory.Options{})}
	first, err := DatabaseID(t.Context(), store, rand.Reader)
	if err != nil || len(first) != 32 {
		t.Fatalf("first call: %q, %v; want 32 hex digits", first, err)
	}
	again, err := DatabaseID(t.Context(), store, rand.Reader)
	if err != nil || again != first || store.appends != 1 {
		t.Fatalf("second call: %q, %v after %d appends; want %q, read back, one append", again, err, store.appends, first)
	}
}

// Given a store another server writes its identity to at the same moment,
// when DatabaseID's own append finds the stream no longer empty, then it
// returns the other server's ID, so both agree.
func TestASimultaneousFirstWriterIdentityIsTaken(t *testing.T) {
	t.Parallel()
	store := &identityStore{Store: memory.New(memory.Options{})}
	var theirs string
	store.beaten = func() {
		other := &identityStore{Store: store.Store}
		id, err := DatabaseID(t.Context(), other, io.MultiReader(bytes.NewReader(bytes.Repeat([]byte{7}, 16)), rand.Reader))
		if err != nil {
			t.Error(err)
		}
		theirs = id
	}
	got, err := DatabaseID(t.Context(), store, rand.Reader)
	if err != nil || got != theirs || theirs != "07070707070707070707070707070707" {
		t.Fatalf("got %q, %v; want the other writer's %q", got, err, theirs)
	}
}

// A read that fails for another reason than a missing stream, a failing
// append, and a random source that fails are errors, and nothing is
// written after a failed read.
func TestDatabaseIdentityFailures(t *testing.T) {
	t.Parallel()
	broken := errors.New("disk on fire")
	for _, tc := range []struct {
		name   string
		store  *identityStore
		random io.Reader
	}{
		{"read", &identityStore{readErr: broken}, rand.Reader},
		{"append", &identityStore{appendErr: broken}, rand.Reader},
		{"random", &identityStore{}, bytes.NewReader(nil)},
		// Enough for the ID, not for the record's event ID.
		{"random for the record", &identityStore{}, bytes.NewReader(make([]byte, 16))},
	} {
		tc.store.Store = memory.New(memory.Options{})
		id, err := DatabaseID(t.Context(), tc.store, tc.random)
		if err == nil || id != "" {
			t.Errorf("%s fails: %q, %v; want an error", tc.name, id, err)
		}
		if want := map[string]int{"append": 1}[tc.name]; tc.store.appends != want {
			t.Errorf("%s fails: %d appends, want %d (a failed append is not tried again)", tc.name, tc.store.appends, want)
		}
		if (tc.name == "read" || tc.name == "append") && !errors.Is(err, broken) {
			t.Errorf("%s fails: %v, want it to wrap the store's error", tc.name, err)
		}
	}
}

// A database stream that reads as empty (its events removed) has no
// identity: a new one is written.
func TestAnEmptyDatabaseStreamGetsAnIdentity(t *testing.T) {
	t.Parallel()
	store := &identityStore{Store: memory.New(memory.Options{}), emptyRead: true}
	id, err := DatabaseID(t.Context(), store, rand.Reader)
	if err != nil || len(id) != 32 || store.appends != 1 {
		t.Fatalf("%q, %v after %d appends; want a new ID, written", id, err, store.appends)
	}
}
