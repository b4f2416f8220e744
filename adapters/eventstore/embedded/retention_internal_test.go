package embedded

import (
	"database/sql"
	"os"
	"path/filepath"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
)

func autoVacuumMode(t *testing.T, dir string) int {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, dbFile)+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var mode int
	if err := db.QueryRowContext(t.Context(), `PRAGMA auto_vacuum`).Scan(&mode); err != nil {
		t.Fatal(err)
	}
	return mode
}

// Without room for a copy of the database, the one-time conversion to
// incremental auto-vacuum waits: the store opens and works as before, and
// the next start with room converts it.
func TestAutoVacuumConversionWaitsForRoom(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// A database made without auto-vacuum, as every build before this one.
	db, err := sql.Open("sqlite", WriterDSN(filepath.Join(dir, dbFile)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(t.Context(), Schema); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, versionFile), []byte("2\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	s := newStore(dir, Options{})
	// Enough not to count as a full disk, too little for the copy.
	s.freeSpace = func(string) (uint64, error) { return lowSpace + 1, nil }
	if _, err := openStore(t.Context(), s); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(t.Context(), "s", eventstore.NoStream(), event("A"), event("A")); err != nil {
		t.Fatal(err)
	}
	if err := s.Truncate(t.Context(), "s", 1); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if mode := autoVacuumMode(t, dir); mode != 0 {
		t.Fatalf("auto_vacuum is %d after a start without room, want 0 (unchanged)", mode)
	}

	s, err = Open(t.Context(), dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.ReadStream(t.Context(), "s", 0, 10)
	if err != nil || len(got) != 1 || got[0].Revision != 1 {
		t.Errorf("after the conversion: %v, %v; want revision 1 only", got, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if mode := autoVacuumMode(t, dir); mode != autoVacuumIncremental {
		t.Errorf("auto_vacuum is %d after a start with room, want %d", mode, autoVacuumIncremental)
	}
}

// A truncation step removes at most a step's rows; Truncate takes as many
// steps as it needs, and the event at the largest position stays on disk,
// hidden, until later appends let it go.
func TestTruncationStepsAndTheLastRow(t *testing.T) {
	t.Parallel()
	s := open(t)
	ctx := t.Context()
	const step = 50
	s.w.step = step // before any request: the writer reads it after the queue's lock
	n := step*2 + 10
	events := make([]eventstore.EventData, n)
	for i := range events {
		events[i] = event("A")
	}
	if _, err := s.Append(ctx, "s", eventstore.NoStream(), events...); err != nil {
		t.Fatal(err)
	}
	r := &request{ctx: ctx, trunc: true, stream: "s", before: uint64(n)}
	if err := s.submit(ctx, r); err != nil {
		t.Fatal(err)
	}
	if !r.more {
		t.Fatal("one step removed every row")
	}
	if got := rowCount(t, s); got != n-step {
		t.Fatalf("after one step %d rows remain, want %d", got, n-step)
	}
	if err := s.Truncate(ctx, "s", uint64(n)); err != nil {
		t.Fatal(err)
	}
	if got := rowCount(t, s); got != 1 {
		t.Fatalf("after truncating everything %d rows remain, want 1 (the last position's)", got)
	}
	res, err := s.Append(ctx, "s", eventstore.Exact(uint64(n-1)), event("A"))
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(n + 1); res.Position.Commit != want {
		t.Errorf("the next event is at position %d, want %d (never one given before)", res.Position.Commit, want)
	}
	if err := s.Truncate(ctx, "s", uint64(n+1)); err != nil {
		t.Fatal(err)
	}
	if got := rowCount(t, s); got != 1 {
		t.Errorf("%d rows remain, want only the newest", got)
	}
}

func rowCount(t *testing.T, s *Store) int {
	t.Helper()
	var n int
	if err := s.rdb.QueryRowContext(t.Context(), `SELECT COUNT(*) FROM events`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
