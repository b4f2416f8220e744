package projector

import (
	"crypto/rand"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/projections"
)

func TestTheDatabaseIdentityIsWrittenOnceAndKept(t *testing.T) {
	t.Parallel()
	store := newHistory(t).seen("p1", "a.example:2289").store()
	other := newHistory(t).store()
	// Given two servers starting on one database at once, when each asks
	// for its identity, then both get the same, written once.
	ids := make([]string, 2)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() {
			id, err := streams.DatabaseID(t.Context(), store, rand.Reader)
			if err != nil {
				t.Error(err)
			}
			ids[i] = id
		})
	}
	wg.Wait()
	again, err := streams.DatabaseID(t.Context(), store, rand.Reader)
	if err != nil || ids[0] == "" || ids[0] != ids[1] || again != ids[0] || len(again) != 32 {
		t.Fatalf("identities %q, then %q (%v); want one of 32 hex digits", ids, again, err)
	}
	if id, err := streams.DatabaseID(t.Context(), other, rand.Reader); err != nil || id == again {
		t.Fatalf("another database has identity %q (%v), the same as the first's", id, err)
	}
	// The identity record is no peer's and nothing unknown.
	s := given(t, readAll(t, store)...)
	if s.DatabaseID() != again || s.UnknownRecords() != 0 || len(s.Peers()) != 1 {
		t.Fatalf("replayed state: database %q, %d unknown records, peers %+v", s.DatabaseID(), s.UnknownRecords(), s.Peers())
	}
}

// A checkpoint written for one database, found beside a server on another
// (a data directory moved, or --store pointed elsewhere), is not resumed
// from: its position means nothing there. The state is rebuilt from the
// start, and the audit says why the checkpoint does not match.
func TestACheckpointOfAnotherDatabaseIsNotUsed(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "projections.checkpoint")
	first := mixedHistory(t).store()
	mixedHistory(t).appendTo(first) // further on than the other's end
	l := NewLive(first, path, testLogger(t))
	stop := startLive(t, l)
	if _, err := l.Current(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	firstID, err := streams.DatabaseID(t.Context(), first, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if cp, err := ReadCheckpoint(path); err != nil || cp.DatabaseID() != firstID {
		t.Fatalf("checkpoint of database %q (%v), want %q", cp.DatabaseID(), err, firstID)
	}

	second := newHistory(t).seen("pz", "z.example:2289").enqueueN("pz", 3).store()
	if _, err := streams.DatabaseID(t.Context(), second, rand.Reader); err != nil {
		t.Fatal(err)
	}
	rep := audit(t, second, AuditOptions{CheckpointPath: path})
	found := false
	for _, v := range rep.Violations {
		found = found || v.Rule == projections.RuleCheckpointMatchesReplay && strings.Contains(v.Detail, "is of database "+firstID)
	}
	if !found {
		t.Fatalf("audit with the other database's checkpoint: %v", rep.Violations)
	}

	resumed := NewLive(second, path, testLogger(t))
	stop = startLive(t, resumed)
	got, err := resumed.Current(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if same, diff := projections.Equal(given(t, readAll(t, second)...), got); !same {
		t.Fatalf("the projection of the second database differs from its replay: %s", diff)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	secondID, _ := streams.DatabaseID(t.Context(), second, rand.Reader)
	if cp, err := ReadCheckpoint(path); err != nil || cp.DatabaseID() != secondID {
		t.Fatalf("checkpoint now of database %q (%v), want %q", cp.DatabaseID(), err, secondID)
	}
	if rep := audit(t, second, AuditOptions{CheckpointPath: path}); !rep.Clean() {
		t.Fatalf("audit of the rewritten checkpoint: %v", rep.Violations)
	}
}

// A checkpoint that records no database (written before identities) is not
// used either: where it came from cannot be told.
func TestACheckpointWithoutADatabaseIsNotUsed(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "projections.checkpoint")
	other := given(t, mixedHistory(t).records()...)
	if err := WriteCheckpoint(path, other); err != nil {
		t.Fatal(err)
	}
	store := newHistory(t).seen("pz", "z.example:2289").store()
	// The store's identity is written before the projection starts, so
	// Current (everything stored when it is called) includes it.
	if _, err := streams.DatabaseID(t.Context(), store, rand.Reader); err != nil {
		t.Fatal(err)
	}
	l := NewLive(store, path, testLogger(t))
	startLive(t, l)
	got, err := l.Current(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if same, diff := projections.Equal(given(t, readAll(t, store)...), got); !same {
		t.Fatalf("the projection differs from a replay: %s", diff)
	}
}
