package embedded

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// FormatVersion is the layout of the data directory this build writes and
// reads. A directory of another version is refused rather than guessed at,
// except version 1 (before streams could be truncated), which Open
// migrates and OpenReadOnly reads as it is.
const FormatVersion = 2

// oldestFormat is the oldest version this build still reads.
const oldestFormat = 1

// Names inside the data directory.
const (
	versionFile = "VERSION"
	lockFile    = "LOCK"
	dbFile      = "events.db"
)

var (
	// ErrLocked means another process (or another Store in this one) holds
	// the data directory's lock.
	ErrLocked = errors.New("data directory is locked by another store")
	// ErrUnsupportedFormat means the data directory was written by another
	// version of Postbox, or is not a Postbox data directory.
	ErrUnsupportedFormat = errors.New("unsupported data directory format")
	// ErrReadOnly is returned by writes to a store opened with OpenReadOnly.
	ErrReadOnly = errors.New("event store opened read-only")
)

// dirLock is an flock(2) on the LOCK file. flock belongs to the open file
// description, so the kernel drops it when the holder dies, even by SIGKILL:
// a stale LOCK file never needs cleaning up by hand.
type dirLock struct {
	f *os.File
}

// lockDir takes the exclusive lock without waiting: a second server on the
// same directory must fail at once, not hang behind the first.
func lockDir(dir string) (*dirLock, error) {
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder := readHolder(f)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("data directory %s is in use by %s: %w", dir, holder, ErrLocked)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	info := fmt.Sprintf("pid=%d\nhost=%s\nsince=%s\n", os.Getpid(), host, time.Now().UTC().Format(time.RFC3339))
	// The holder's identity is advisory, for the error message above; the
	// flock alone decides who holds the directory.
	err = f.Truncate(0)
	if err == nil {
		_, err = f.WriteAt([]byte(info), 0)
	}
	if errors.Is(err, unix.ENOSPC) {
		// On a full disk the server must still start (and say it cannot
		// write); the holder's identity is only advisory.
		err = nil
	}
	if err != nil {
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
		return nil, fmt.Errorf("write lock holder: %w", err)
	}
	return &dirLock{f: f}, nil
}

// readHolder describes the lock holder from what it wrote into the LOCK file.
func readHolder(f *os.File) string {
	buf := make([]byte, 512)
	n, _ := f.ReadAt(buf, 0)
	var pid, host string
	for line := range strings.Lines(string(buf[:n])) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), "=")
		switch k {
		case "pid":
			pid = v
		case "host":
			host = v
		}
	}
	if pid == "" {
		// The holder has locked the file but not yet written to it.
		return "another process (pid not yet recorded)"
	}
	return fmt.Sprintf("pid %s on host %s", pid, host)
}

func (l *dirLock) release() error {
	err := unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
	if cerr := l.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("release lock: %w", err)
	}
	return nil
}

// checkVersion reads the format version. A directory without a VERSION file
// and without a database is new; create reports whether to write one.
func checkVersion(dir string) (version int, create bool, err error) {
	b, err := os.ReadFile(filepath.Join(dir, versionFile))
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat(filepath.Join(dir, dbFile)); serr == nil {
			return 0, false, fmt.Errorf("data directory %s has a database but no %s file: %w", dir, versionFile, ErrUnsupportedFormat)
		}
		return FormatVersion, true, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("read format version: %w", err)
	}
	v, perr := strconv.Atoi(strings.TrimSpace(string(b)))
	if perr != nil {
		return 0, false, fmt.Errorf("data directory %s: %s holds %q, not a version number: %w", dir, versionFile, strings.TrimSpace(string(b)), ErrUnsupportedFormat)
	}
	if v < oldestFormat || v > FormatVersion {
		return 0, false, fmt.Errorf("data directory %s has format version %d, this build reads versions %d to %d only: %w", dir, v, oldestFormat, FormatVersion, ErrUnsupportedFormat)
	}
	return v, false, nil
}

// writeVersion writes the VERSION file durably: through a temporary file,
// renamed into place, with the directory synced so the name survives a crash.
func writeVersion(dir string, version int) error {
	tmp := filepath.Join(dir, versionFile+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("write format version: %w", err)
	}
	_, err = fmt.Fprintf(f, "%d\n", version)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, versionFile))
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("write format version: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
