package embedded

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/harmony-postbox/postbox/domain"
)

// ErrDiskFull answers the appends of a transaction that did not fit on disk:
// it was rolled back whole, and the store takes writes again once there is
// room. It is a domain.ErrStorageFull, so a peer's push is told to retry
// (hrpc.unavailable) and the operator's send is told why.
var ErrDiskFull = fmt.Errorf("event store: %w", domain.ErrStorageFull)

// failure is what a failed write means for the store.
type failure int

const (
	// failStatement: the request's own problem (or a cause unrelated to the
	// disk); its append alone fails, the store goes on.
	failStatement failure = iota
	// failDiskFull: nothing was written, and trying again is safe once
	// there is room.
	failDiskFull
	// failStorage: the disk failed some other way, a failed fsync above
	// all. What is durable is no longer known (after a failed fsync Linux
	// may drop the dirty pages and report success next time), so the
	// process must stop and recover from the files, as after a crash.
	failStorage
)

// lowSpace is the free space below which an I/O error counts as a full
// disk. ENOSPC may surface from an fsync (delayed allocation, network and
// thin-provisioned storage) as SQLITE_IOERR_FSYNC, which alone reads as a
// failed sync; exiting on it would restart the server into the same full
// disk, again and again. A commit is at most a few MiB (the largest append
// is a pull reply or push of --max-request-bytes, 4 MiB by default), so a
// sync that failed for want of space leaves less than this free.
const lowSpace = 16 << 20

// Full-disk retries: while the disk is full, one batch is tried now and
// then and every other append is refused at once; the first commit that
// succeeds ends it.
const (
	fullRetryFirst = 100 * time.Millisecond
	fullRetryMax   = 2 * time.Second
)

// sqliteError is what modernc.org/sqlite's *sqlite.Error offers: the
// extended result code (extended codes are on in that driver).
type sqliteError interface {
	error
	Code() int
}

var _ sqliteError = (*sqlite.Error)(nil)

// classify tells a full disk from a failed sync by SQLite's extended result
// code, and by the filesystem's free space for I/O errors. committing is
// true for an error of COMMIT itself: an unexplained failure there leaves
// the transaction's fate unknown.
func (s *Store) classify(err error, committing bool) failure {
	var se sqliteError
	if errors.As(err, &se) {
		switch se.Code() & 0xff { // the primary code; the rest is the extension
		case sqlite3.SQLITE_FULL:
			// SQLite's VFS answers ENOSPC from write(2) so; the
			// transaction is rolled back, nothing was half written.
			return failDiskFull
		case sqlite3.SQLITE_IOERR:
			if s.spaceLow() {
				return failDiskFull
			}
			return failStorage
		}
	}
	if committing {
		return failStorage
	}
	return failStatement
}

// spaceLow reports whether the data directory's filesystem is (nearly)
// full. An unreadable statfs says no: the error is then taken for what
// SQLite called it.
func (s *Store) spaceLow() bool {
	free, err := s.freeSpace(s.dir)
	return err == nil && free < lowSpace
}

// freeSpace is the space unprivileged writers may still use on dir's
// filesystem.
func freeSpace(dir string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// DiskFull reports whether the store refuses writes for want of disk space
// (health and metrics read it).
func (s *Store) DiskFull() bool { return s.full.Load() }

// setFull records that the disk is full, and when to try again. Only the
// writer goroutine calls it (and Open, before the writer starts).
func (s *Store) setFull(cause error) {
	w := s.w
	w.fullBackoff = min(max(2*w.fullBackoff, fullRetryFirst), fullRetryMax)
	w.retryAt = s.clock().Add(w.fullBackoff)
	if s.full.Swap(true) {
		return
	}
	w.fullSince = s.clock()
	go s.watchSpace()
	s.log.Error("event store: disk full; appends are refused until there is room again, and retried meanwhile",
		"dir", s.dir, "err", cause)
}

// watchSpace ends the full state once the filesystem has room again, for a
// store nobody writes to meanwhile: a server out of rotation because its
// health says NOT_SERVING may get no append to find out with.
func (s *Store) watchSpace() {
	t := time.NewTicker(fullRetryMax)
	defer t.Stop()
	for s.full.Load() {
		select {
		case <-s.closedCh:
			return
		case <-t.C:
		}
		if !s.spaceLow() && s.full.CompareAndSwap(true, false) {
			s.log.Info("event store: the disk has room again; appends are taken", "dir", s.dir)
			return
		}
	}
}

// clearFull records a commit that succeeded after the disk was full.
func (s *Store) clearFull() {
	w := s.w
	w.fullBackoff, w.retryAt = 0, time.Time{}
	if s.full.Swap(false) {
		s.log.Info("event store: writes succeed again after a full disk", "dir", s.dir,
			"full_for", s.clock().Sub(w.fullSince).Round(time.Millisecond))
	}
}

// failStorage stops writes for good and tells the process to exit.
func (s *Store) failStorage(err error) {
	w := s.w
	w.failed = fmt.Errorf("event store failed, restart required: %w", err)
	s.log.Error("event store: storage failure (failed sync or I/O error); continuing could acknowledge writes that are not on disk, so writes stop and the process must restart and recover from its files",
		"dir", s.dir, "err", err)
	if s.onFatal != nil {
		s.onFatal(w.failed)
	}
}
