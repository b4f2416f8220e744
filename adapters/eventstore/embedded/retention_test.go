package embedded_test

import (
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
)

// bulkEvents returns n events with bodies of about 200 bytes.
func bulkEvents(n int, tag string) []eventstore.EventData {
	out := make([]eventstore.EventData, n)
	pad := strings.Repeat("x", 160)
	for i := range out {
		id := newID()
		out[i] = eventstore.EventData{ID: id, Type: "Bulk", Data: fmt.Appendf(nil, `{"tag":%q,"n":%d,"pad":%q}`, tag, i, pad)}
	}
	return out
}

func mustReadAll(t *testing.T, s eventstore.Store, stream string) []eventstore.RecordedEvent {
	t.Helper()
	got, err := s.ReadStream(t.Context(), stream, 0, 1<<20)
	if err != nil {
		t.Fatalf("read %s: %v", stream, err)
	}
	return got
}

// sameEvents checks got are want, field by field (positions and times
// included): what was not truncated is untouched.
func sameEvents(t *testing.T, what string, got, want []eventstore.RecordedEvent) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d events, want %d", what, len(got), len(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.Stream != w.Stream || g.Revision != w.Revision || g.Position != w.Position || g.ID != w.ID ||
			g.Type != w.Type || string(g.Data) != string(w.Data) || !g.Created.Equal(w.Created) {
			t.Fatalf("%s: event %d is %+v, want %+v", what, i, g, w)
		}
	}
}

func diskUsage(t *testing.T, s *embedded.Store) uint64 {
	t.Helper()
	n, err := s.DiskUsage()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// autoVacuum reads the database's auto-vacuum mode (2 is incremental)
// through a connection of its own.
func autoVacuum(t *testing.T, dir string) int {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "events.db")+"?mode=ro")
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

// A store written with about 100,000 events, most of them truncated, gives
// the space back to the filesystem without a VACUUM: its files shrink to
// under a tenth, the events it keeps (interleaved with the removed ones)
// are untouched, and it reopens and keeps working. Under the race detector
// the history is a tenth as long, in the same proportions.
func TestTruncationGivesDiskSpaceBack(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openStore(t, dir)
	defer func() { _ = s.Close() }()
	if mode := autoVacuum(t, dir); mode != 2 {
		t.Fatalf("a new database has auto_vacuum %d, want 2 (incremental)", mode)
	}
	rounds, bigPerRound, smallPerRound, kept := 96, 1000, 40, 500
	if raceDetector {
		rounds, bigPerRound, smallPerRound, kept = 12, 800, 16, 200
	}
	keepFrom := uint64(rounds*bigPerRound - kept)
	big, small := "outbox-big", "outbox-small"
	for i := range rounds {
		exp := eventstore.NoStream()
		if i > 0 {
			exp = eventstore.Exact(uint64(i*bigPerRound - 1))
		}
		if _, err := s.Append(t.Context(), big, exp, bulkEvents(bigPerRound, "big")...); err != nil {
			t.Fatal(err)
		}
		exp = eventstore.NoStream()
		if i > 0 {
			exp = eventstore.Exact(uint64(i*smallPerRound - 1))
		}
		if _, err := s.Append(t.Context(), small, exp, bulkEvents(smallPerRound, "small")...); err != nil {
			t.Fatal(err)
		}
	}
	keptSmall := mustReadAll(t, s, small)
	keptBig := mustReadAll(t, s, big)[keepFrom:]
	before := diskUsage(t, s)

	if err := s.Truncate(t.Context(), big, keepFrom); err != nil {
		t.Fatalf("truncate: %v", err)
	}
	after := diskUsage(t, s)
	t.Logf("%d events: %d bytes on disk; %d kept after truncation: %d bytes",
		rounds*(bigPerRound+smallPerRound), before, len(keptBig)+len(keptSmall), after)
	if after >= before/10 {
		t.Errorf("after truncating %d of %d events the store takes %d bytes, want under a tenth of %d",
			keepFrom, rounds*(bigPerRound+smallPerRound), after, before)
	}
	sameEvents(t, "the untouched stream", mustReadAll(t, s, small), keptSmall)
	sameEvents(t, "the kept part of the truncated stream", mustReadAll(t, s, big), keptBig)

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir)
	sameEvents(t, "the untouched stream after reopening", mustReadAll(t, s, small), keptSmall)
	sameEvents(t, "the kept part after reopening", mustReadAll(t, s, big), keptBig)
	// Nothing truncated comes back through a subscription either.
	sub, err := s.Subscribe(t.Context(), eventstore.Filter{StreamPrefix: "outbox-"}, eventstore.FromStart())
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	var seen int
	for item := recvItem(t, sub); !item.CaughtUp; item = recvItem(t, sub) {
		if item.Event.Stream == big && item.Event.Revision < keepFrom {
			t.Fatalf("subscription delivered truncated event %d", item.Event.Revision)
		}
		seen++
	}
	if want := len(keptBig) + len(keptSmall); seen != want {
		t.Errorf("subscription delivered %d events, want %d", seen, want)
	}
	more := bulkEvents(3, "more")
	res, err := s.Append(t.Context(), big, eventstore.Exact(uint64(rounds*bigPerRound-1)), more...)
	if err != nil || res.NextExpectedRevision != uint64(rounds*bigPerRound+2) {
		t.Fatalf("append after reopening: %+v, %v", res, err)
	}
	if _, err := s.Append(t.Context(), small, eventstore.Exact(uint64(rounds*smallPerRound-1)), more...); err != nil {
		t.Fatalf("append to the untouched stream: %v", err)
	}
	if got := diskUsage(t, s); got >= before/10 {
		t.Errorf("after reopening the store takes %d bytes, want under a tenth of %d", got, before)
	}
}

// v1Schema is the layout of format version 1, before truncation points.
const v1Schema = `
CREATE TABLE streams (
	id      INTEGER PRIMARY KEY,
	name    TEXT    NOT NULL UNIQUE,
	deleted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE events (
	position  INTEGER PRIMARY KEY,
	stream_id INTEGER NOT NULL,
	revision  INTEGER NOT NULL,
	event_id  BLOB    NOT NULL,
	type      TEXT    NOT NULL,
	data      BLOB,
	created   INTEGER NOT NULL
);
CREATE UNIQUE INDEX events_by_stream ON events (stream_id, revision);
`

// writeV1Dir makes a data directory as a build of format version 1 left
// it (no auto-vacuum, no truncation points), with n events in stream "s"
// and one in stream "t"; addColumn leaves it as a migration interrupted
// after its first step would.
func writeV1Dir(t *testing.T, n int, addColumn bool) string {
	t.Helper()
	dir := t.TempDir()
	db, err := sql.Open("sqlite", embedded.WriterDSN(filepath.Join(dir, "events.db")))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := t.Context()
	if _, err := db.ExecContext(ctx, v1Schema); err != nil {
		t.Fatal(err)
	}
	// One statement writes the history: SQLite generates the rows.
	if _, err := db.ExecContext(ctx, `
		INSERT INTO streams (id, name) VALUES (1, 's'), (2, 't');
		WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?1)
		INSERT INTO events (stream_id, revision, event_id, type, data, created)
			SELECT 1, i, randomblob(16), 'Bulk', printf('{"n":%d,"pad":"%s"}', i, hex(randomblob(80))), 1700000000000000000 + i FROM n;
		INSERT INTO events (stream_id, revision, event_id, type, data, created) VALUES (2, 0, zeroblob(16), 'T', '{}', 1);`, n); err != nil {
		t.Fatal(err)
	}
	if addColumn {
		if _, err := db.ExecContext(ctx, `ALTER TABLE streams ADD COLUMN truncate_before INTEGER NOT NULL DEFAULT 0`); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "VERSION"), "1\n")
	return dir
}

// A data directory of format version 1 is read as it is by a read-only
// store (a server of the older build may still run on it), and migrated
// by Open: truncation points added, incremental auto-vacuum turned on with
// a one-time VACUUM, every event kept; then truncation gives space back.
// A migration interrupted after its first step completes at the next Open.
func TestVersion1DataDirectoryIsMigrated(t *testing.T) {
	t.Parallel()
	for _, interrupted := range []bool{false, true} {
		t.Run(fmt.Sprintf("interrupted=%v", interrupted), func(t *testing.T) {
			t.Parallel()
			n := 20000
			if raceDetector {
				n = 4000
			}
			dir := writeV1Dir(t, n, interrupted)
			if mode := autoVacuum(t, dir); mode != 0 {
				t.Fatalf("the version 1 database has auto_vacuum %d, want 0", mode)
			}
			ro, err := embedded.OpenReadOnly(t.Context(), dir, embedded.Options{Logger: testLogger(t)})
			if err != nil {
				t.Fatalf("open a version 1 directory read-only: %v", err)
			}
			old := mustReadAll(t, ro, "s")
			if len(old) != n {
				t.Fatalf("read-only store of a version 1 directory reads %d events, want %d", len(old), n)
			}
			if err := ro.Close(); err != nil {
				t.Fatal(err)
			}

			s := openStore(t, dir)
			defer func() { _ = s.Close() }()
			if b, err := os.ReadFile(filepath.Join(dir, "VERSION")); err != nil || strings.TrimSpace(string(b)) != fmt.Sprint(embedded.FormatVersion) {
				t.Errorf("VERSION after the migration: %q, %v; want %d", b, err, embedded.FormatVersion)
			}
			if mode := autoVacuum(t, dir); mode != 2 {
				t.Errorf("auto_vacuum after the migration is %d, want 2 (incremental)", mode)
			}
			sameEvents(t, "events after the migration", mustReadAll(t, s, "s"), old)
			before := diskUsage(t, s)
			if err := s.Truncate(t.Context(), "s", uint64(n-100)); err != nil {
				t.Fatal(err)
			}
			if after := diskUsage(t, s); after >= before/10 {
				t.Errorf("after truncating %d of %d events the store takes %d bytes, want under a tenth of %d", n-100, n, after, before)
			}
			sameEvents(t, "kept events", mustReadAll(t, s, "s"), old[n-100:])
			if got := mustReadAll(t, s, "t"); len(got) != 1 {
				t.Errorf("the other stream has %d events, want 1", len(got))
			}
			if _, err := s.Append(t.Context(), "s", eventstore.Exact(uint64(n-1)), bulkEvents(1, "new")...); err != nil {
				t.Fatalf("append after the migration: %v", err)
			}
		})
	}
}

// DiskUsage counts the database, its WAL and the WAL's index.
func TestDiskUsageCountsTheStoreFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openStore(t, dir)
	defer func() { _ = s.Close() }()
	appendN(t, s, "s", 0, 3)
	var want uint64
	for _, name := range []string{"events.db", "events.db-wal", "events.db-shm"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		want += uint64(fi.Size())
	}
	if got := diskUsage(t, s); got != want || got == 0 {
		t.Errorf("DiskUsage = %d, want %d", got, want)
	}
}

// A backup keeps truncation points and incremental auto-vacuum; a backup
// of a version 1 directory, taken read-only, is a version 1 directory that
// Open migrates.
func TestBackupKeepsTheFormat(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openStore(t, dir)
	defer func() { _ = s.Close() }()
	events := appendN(t, s, "s", 0, 5)
	if err := s.Truncate(t.Context(), "s", 3); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "backup")
	if _, err := s.Backup(t.Context(), target); err != nil {
		t.Fatal(err)
	}
	if mode := autoVacuum(t, target); mode != 2 {
		t.Errorf("the backup has auto_vacuum %d, want 2 (incremental)", mode)
	}
	copied := openStore(t, target)
	got := mustReadAll(t, copied, "s")
	if len(got) != 2 || got[0].Revision != 3 || got[0].ID != events[3].ID {
		t.Errorf("the backup reads %v, want revisions 3 and 4", got)
	}
	if err := copied.Close(); err != nil {
		t.Fatal(err)
	}

	old := writeV1Dir(t, 10, false)
	ro, err := embedded.OpenReadOnly(t.Context(), old, embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	oldTarget := filepath.Join(t.TempDir(), "backup")
	if _, err := ro.Backup(t.Context(), oldTarget); err != nil {
		t.Fatalf("back up a version 1 directory: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(oldTarget, "VERSION")); err != nil || strings.TrimSpace(string(b)) != "1" {
		t.Errorf("VERSION of the backup of a version 1 directory: %q, %v; want 1", b, err)
	}
	migrated := openStore(t, oldTarget)
	defer migrated.Close()
	if got := mustReadAll(t, migrated, "s"); len(got) != 10 {
		t.Errorf("the migrated backup reads %d events, want 10", len(got))
	}
}
