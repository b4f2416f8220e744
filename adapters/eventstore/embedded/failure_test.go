package embedded

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	sqlite3 "modernc.org/sqlite/lib"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/domain"
)

// codedError stands for the driver's *sqlite.Error, whose fields are not
// exported: the failures it reports here (a failed fsync) cannot be
// provoked through SQLite itself.
type codedError int

func (e codedError) Error() string { return fmt.Sprintf("sqlite error %d", int(e)) }
func (e codedError) Code() int     { return int(e) }

func TestClassifyTellsAFullDiskFromAFailedSync(t *testing.T) {
	t.Parallel()
	const plenty, none = 10 << 30, 4096
	tests := []struct {
		name       string
		err        error
		committing bool
		free       uint64
		want       failure
	}{
		{"SQLITE_FULL is a full disk", codedError(sqlite3.SQLITE_FULL), true, plenty, failDiskFull},
		{"SQLITE_FULL in a statement is a full disk", fmt.Errorf("insert event: %w", codedError(sqlite3.SQLITE_FULL)), false, plenty, failDiskFull},
		{"a failed fsync with room on disk is a storage failure", codedError(sqlite3.SQLITE_IOERR_FSYNC), true, plenty, failStorage},
		{"a failed fsync on a full disk is a full disk", codedError(sqlite3.SQLITE_IOERR_FSYNC), true, none, failDiskFull},
		{"a failed write with room on disk is a storage failure", codedError(sqlite3.SQLITE_IOERR_WRITE), false, plenty, failStorage},
		{"a failed shared-memory extension on a full disk is a full disk", codedError(sqlite3.SQLITE_IOERR_SHMSIZE), false, none, failDiskFull},
		{"a constraint in a statement fails that append only", codedError(sqlite3.SQLITE_CONSTRAINT_UNIQUE), false, none, failStatement},
		{"any other error in a statement fails that append only", errors.New("poisoned"), false, none, failStatement},
		{"an unexplained COMMIT failure leaves the state unknown", errors.New("sql: statement is closed"), true, plenty, failStorage},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &Store{dir: t.TempDir(), freeSpace: func(string) (uint64, error) { return tt.free, nil }}
			if got := s.classify(tt.err, tt.committing); got != tt.want {
				t.Errorf("classify(%v, committing=%v) with %d bytes free = %d, want %d", tt.err, tt.committing, tt.free, got, tt.want)
			}
		})
	}
}

// fillDatabase caps the database at its current size (PRAGMA
// max_page_count, per connection) and appends events until one does not fit.
// It returns the appends that succeeded and the error of the one that did not.
func fillDatabase(t *testing.T, s *Store, stream string) (acked []eventstore.EventData, full error) {
	t.Helper()
	ctx := t.Context()
	if _, err := s.w.conn.ExecContext(ctx, `PRAGMA max_page_count = 1`); err != nil { // raised to the current size
		t.Fatal(err)
	}
	for i := range 10000 {
		e := event("T")
		e.Data = bytes.Repeat([]byte{byte(i)}, 512)
		expected := eventstore.NoStream()
		if i > 0 {
			expected = eventstore.Exact(uint64(i - 1))
		}
		if _, err := s.Append(ctx, stream, expected, e); err != nil {
			return acked, err
		}
		acked = append(acked, e)
	}
	t.Fatal("the database never filled")
	return nil, nil
}

func TestFullDiskRefusesAppendsThenRecovers(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	var fatal atomic.Int32
	s, err := Open(ctx, t.TempDir(), Options{OnFatal: func(error) { fatal.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if s.DiskFull() {
		t.Fatal("a fresh store says its disk is full")
	}

	// Given a database that cannot grow, when an append does not fit,
	acked, err := fillDatabase(t, s, "s")

	// then it is refused as a full disk, nothing of it is written, and the
	// store says so without giving up.
	if !errors.Is(err, ErrDiskFull) || !errors.Is(err, domain.ErrUnavailable) {
		t.Fatalf("append to a full database: got %v, want ErrDiskFull", err)
	}
	if !s.DiskFull() {
		t.Error("DiskFull is false after an append did not fit")
	}
	got, rerr := s.ReadStream(ctx, "s", 0, 100000)
	if rerr != nil || len(got) != len(acked) {
		t.Fatalf("after the failed append the stream holds %d events (%v), want the %d acknowledged", len(got), rerr, len(acked))
	}
	// Appends meanwhile are refused at once.
	start := time.Now()
	if _, err := s.Append(ctx, "t", eventstore.Any(), event("T")); !errors.Is(err, ErrDiskFull) {
		t.Errorf("append while full: got %v, want ErrDiskFull", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("an append while full took %s", took)
	}

	// When there is room again, appends succeed again within the backoff,
	// without a restart.
	if _, err := s.w.conn.ExecContext(ctx, `PRAGMA max_page_count = 1073741823`); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * fullRetryMax)
	for {
		_, err := s.Append(ctx, "s", eventstore.Exact(uint64(len(acked)-1)), event("T"))
		if err == nil {
			break
		}
		if !errors.Is(err, ErrDiskFull) || time.Now().After(deadline) {
			t.Fatalf("append after room returned: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if s.DiskFull() {
		t.Error("DiskFull is still true after a commit succeeded")
	}
	if got, err := s.ReadStream(ctx, "s", 0, 100000); err != nil || len(got) != len(acked)+1 {
		t.Errorf("the stream holds %d events (%v), want %d", len(got), err, len(acked)+1)
	}
	if fatal.Load() != 0 {
		t.Error("a full disk was taken for a fatal failure")
	}
}

func TestFailedSyncStopsWritesAndCallsOnFatal(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	fatal := make(chan error, 1)
	s, err := Open(ctx, t.TempDir(), Options{OnFatal: func(err error) { fatal <- err }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if _, err := s.Append(ctx, "s", eventstore.NoStream(), event("A")); err != nil {
		t.Fatal(err)
	}

	// Given a disk with room, when COMMIT reports a failed fsync,
	s.w.failCommit = func() error { return codedError(sqlite3.SQLITE_IOERR_FSYNC) }
	_, err = s.Append(ctx, "s", eventstore.Exact(0), event("A"))

	// then the append fails, the process is told to exit, and no write is
	// taken after it, even once the disk seems fine again.
	if err == nil || errors.Is(err, ErrDiskFull) {
		t.Fatalf("append whose sync failed: got %v, want a storage failure", err)
	}
	select {
	case ferr := <-fatal:
		if !strings.Contains(ferr.Error(), "restart required") {
			t.Errorf("OnFatal got %v", ferr)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OnFatal was not called after a failed sync")
	}
	if s.DiskFull() {
		t.Error("a failed sync was taken for a full disk")
	}
	s.w.failCommit = nil
	if _, err := s.Append(ctx, "t", eventstore.Any(), event("A")); err == nil || !strings.Contains(err.Error(), "restart required") {
		t.Errorf("append after a failed sync: got %v, want a refusal", err)
	}
}

func TestFailedSyncOnAFullDiskIsAFullDisk(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	var fatal atomic.Int32
	s, err := Open(ctx, t.TempDir(), Options{OnFatal: func(error) { fatal.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })

	// Given a filesystem with no room left, when COMMIT reports a failed
	// fsync (ENOSPC from fsync reads so),
	var free atomic.Uint64
	s.freeSpace = func(string) (uint64, error) { return free.Load(), nil }
	s.w.failCommit = func() error { return codedError(sqlite3.SQLITE_IOERR_FSYNC) }
	_, err = s.Append(ctx, "s", eventstore.NoStream(), event("A"))

	// then it is a full disk, not a reason to restart into the same disk.
	if !errors.Is(err, ErrDiskFull) || !s.DiskFull() || fatal.Load() != 0 {
		t.Fatalf("failed sync on a full disk: got %v, full=%v, fatal calls %d; want ErrDiskFull and no exit", err, s.DiskFull(), fatal.Load())
	}
	s.w.failCommit = nil
	free.Store(1 << 40)
	deadline := time.Now().Add(3 * fullRetryMax)
	for {
		_, err := s.Append(ctx, "s", eventstore.NoStream(), event("A"))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("append after room returned: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A server started on a full disk must say so before any append fails.
// This needs a filesystem that is really full: a small tmpfs, for root.
func TestOpenOnAFullFilesystemReportsDiskFull(t *testing.T) {
	t.Parallel()
	dir := mountTmpfs(t, 4<<20)
	data := filepath.Join(dir, "data")
	s, err := Open(t.Context(), data, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(t.Context(), "s", eventstore.NoStream(), event("A")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	fill(t, dir)

	s, err = Open(t.Context(), data, Options{})
	if err != nil {
		t.Fatalf("open on a full filesystem: %v", err)
	}
	defer s.Close()
	if !s.DiskFull() {
		t.Error("a store opened on a full filesystem does not say its disk is full")
	}
	if got, err := s.ReadStream(t.Context(), "s", 0, 10); err != nil || len(got) != 1 {
		t.Errorf("reads on a full filesystem: %d events, %v", len(got), err)
	}
}

// mountTmpfs mounts a tmpfs of size bytes for the test, and unmounts it in
// t.Cleanup; it skips the test where that is not possible (not root, no
// mount(8), a container without the capability).
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs", dir).CombinedOutput()
	if err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// fill writes a file into dir until the filesystem has no room left.
func fill(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			break
		}
	}
	for {
		if _, err := f.Write(buf[:512]); err != nil {
			return
		}
	}
}
