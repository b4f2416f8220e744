// Package embedded is Postbox's default event store: SQLite in WAL mode, in
// the data directory, through modernc.org/sqlite (pure Go, no cgo).
//
// One goroutine writes. Concurrent appends queue up while it commits, and it
// takes everything waiting into the next transaction: one fsync serves them
// all (natural group commit, no timers). Each append is still checked and
// answered on its own. Readers, in this process or another (postbox audit),
// read through WAL snapshots without blocking the writer.
package embedded

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// Options configures a Store. The zero value is usable.
type Options struct {
	// Logger receives the store's few log lines; nil discards them.
	Logger *slog.Logger
	// Clock stamps RecordedEvent.Created; nil means time.Now.
	Clock func() time.Time
	// PollInterval is how often a read-only store looks for events another
	// process appended, for live subscriptions; zero means 200ms.
	PollInterval time.Duration
	// OnFatal is called, from the writer, when the disk failed in a way
	// that makes further writes unsafe (a failed fsync): the process should
	// exit so that it restarts and recovers from its files. The store
	// refuses writes from then on either way. A full disk is not fatal.
	OnFatal func(error)
}

// Store is the embedded event store. It is safe for concurrent use.
type Store struct {
	dir      string
	log      *slog.Logger
	clock    func() time.Time
	poll     time.Duration
	readOnly bool
	// version is the data directory's format version: FormatVersion once
	// Open has migrated it; a read-only store leaves it as it found it.
	version int
	// noTruncation: a read-only store of a version 1 directory, whose
	// streams table has no truncation points.
	noTruncation bool

	lock *dirLock // nil when read-only
	rdb  *sql.DB  // read-only connections: reads and subscriptions
	rd   readStmts

	// Writer state; unused when read-only.
	wdb        *sql.DB
	w          *writer
	queueMu    sync.Mutex
	queueCond  *sync.Cond
	queue      []*request
	closing    bool
	writerDone chan struct{}

	// head is the position of the last committed event: subscriptions
	// compare it with what they have seen to know whether to read more.
	head atomic.Uint64

	subsMu sync.Mutex
	subs   map[*subscription]struct{}
	nsubs  atomic.Int64 // len(subs), read by the writer without the lock

	closed    atomic.Bool
	closedCh  chan struct{} // closed by Close, to wake subscriptions
	closeOnce sync.Once
	closeErr  error

	commits atomic.Uint64
	appends atomic.Uint64

	// full is set while writes fail for want of disk space.
	full      atomic.Bool
	onFatal   func(error)
	freeSpace func(dir string) (uint64, error) // a seam for tests
}

var _ eventstore.Store = (*Store)(nil)

// Open opens, or creates, the data directory dir for writing. It takes the
// directory's lock and fails at once, naming the holder, if another store
// has it; it refuses a directory of an unknown format version.
func Open(ctx context.Context, dir string, opts Options) (*Store, error) {
	return openStore(ctx, newStore(dir, opts))
}

// openStore opens s for writing; tests set its seams first.
func openStore(ctx context.Context, s *Store) (*Store, error) {
	dir := s.dir
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("open event store: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, fmt.Errorf("open event store: %w", err)
	}
	s.lock = lock
	if err := s.openWriter(ctx); err != nil {
		s.closeResources()
		return nil, fmt.Errorf("open event store %s: %w", dir, err)
	}
	s.log.Info("event store opened", "dir", dir, "head", s.head.Load())
	return s, nil
}

// OpenReadOnly opens an existing data directory for reading, without taking
// its lock, so that it works while a server writes to it. Live
// subscriptions poll for new events every Options.PollInterval.
func OpenReadOnly(ctx context.Context, dir string, opts Options) (*Store, error) {
	s := newStore(dir, opts)
	s.readOnly = true
	version, create, err := checkVersion(dir)
	if err == nil && create {
		err = fmt.Errorf("%s is not a data directory (no %s file): %w", dir, versionFile, ErrUnsupportedFormat)
	}
	if err == nil {
		// A version 1 directory (a server of an older build may be running
		// on it) has no truncation points: every stream starts at 0.
		s.version = version
		s.noTruncation = version < 2
		err = s.openReaders(ctx)
	}
	if err == nil {
		var head uint64
		head, err = s.readHead(ctx)
		s.head.Store(head)
	}
	if err != nil {
		s.closeResources()
		return nil, fmt.Errorf("open event store %s read-only: %w", dir, err)
	}
	return s, nil
}

func newStore(dir string, opts Options) *Store {
	s := &Store{
		dir:        dir,
		log:        opts.Logger,
		clock:      opts.Clock,
		poll:       opts.PollInterval,
		onFatal:    opts.OnFatal,
		freeSpace:  freeSpace,
		writerDone: make(chan struct{}),
		subs:       make(map[*subscription]struct{}),
		closedCh:   make(chan struct{}),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.clock == nil {
		s.clock = time.Now
	}
	if s.poll <= 0 {
		s.poll = 200 * time.Millisecond
	}
	s.queueCond = sync.NewCond(&s.queueMu)
	return s
}

func (s *Store) openWriter(ctx context.Context) error {
	version, create, err := checkVersion(s.dir)
	if err != nil {
		return err
	}
	path := filepath.Join(s.dir, dbFile)
	s.wdb, err = sql.Open("sqlite", WriterDSN(path))
	if err != nil {
		return err
	}
	// One connection: the writer goroutine owns it for the store's life.
	s.wdb.SetMaxOpenConns(1)
	s.wdb.SetMaxIdleConns(1)
	s.wdb.SetConnMaxLifetime(0)
	s.wdb.SetConnMaxIdleTime(0)
	if create {
		if _, err := s.wdb.ExecContext(ctx, NewDatabase); err != nil {
			return fmt.Errorf("set incremental auto-vacuum: %w", err)
		}
	}
	if _, err := s.wdb.ExecContext(ctx, Schema); err != nil {
		return fmt.Errorf("create schema: %w", err)
	}
	if !create && version < FormatVersion {
		if err := s.migrate(ctx, version); err != nil {
			return fmt.Errorf("migrate the data directory from format version %d: %w", version, err)
		}
	}
	if create || version < FormatVersion {
		// The version goes in after the database exists (and is migrated),
		// so that a crash in between leaves a directory Open recognises as
		// new or migrates again, never one it misreads.
		if err := writeVersion(s.dir, FormatVersion); err != nil {
			return err
		}
	}
	s.version = FormatVersion
	s.convertAutoVacuum(ctx)
	s.w, err = newWriter(ctx, s.wdb)
	if err != nil {
		return err
	}
	if err := s.openReaders(ctx); err != nil {
		return err
	}
	head, err := s.readHead(ctx)
	if err != nil {
		return err
	}
	s.head.Store(head)
	if s.spaceLow() {
		// Starting on a full disk: say so at once (health, metrics), and
		// let the first append find out whether it fits.
		s.setFull(fmt.Errorf("less than %d MiB free in %s at start", lowSpace>>20, s.dir))
		s.w.retryAt = time.Time{}
	}
	go s.runWriter(context.WithoutCancel(ctx))
	return nil
}

func (s *Store) openReaders(ctx context.Context) error {
	var err error
	s.rdb, err = sql.Open("sqlite", readerDSN(filepath.Join(s.dir, dbFile)))
	if err != nil {
		return err
	}
	s.rdb.SetMaxOpenConns(8)
	s.rdb.SetMaxIdleConns(8)
	if err := s.rdb.PingContext(ctx); err != nil {
		return err
	}
	return s.rd.prepare(ctx, s.rdb, s.noTruncation)
}

// Dir returns the data directory.
func (s *Store) Dir() string { return s.dir }

// Stats counts the work of the writer since Open.
type Stats struct {
	// Commits is the number of transactions, each one fsync.
	Commits uint64
	// Appends is the number of successful appends and deletes.
	Appends uint64
}

// Stats returns the writer's counters: Appends/Commits is the mean group
// commit size.
func (s *Store) Stats() Stats {
	return Stats{Commits: s.commits.Load(), Appends: s.appends.Load()}
}

// Close stops the writer once it has committed every queued append, ends
// subscriptions with eventstore.ErrClosed and releases the lock. Later calls
// return eventstore.ErrClosed; Close itself may be called again.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		if s.w != nil {
			s.queueMu.Lock()
			s.closing = true
			s.queueCond.Signal()
			s.queueMu.Unlock()
			<-s.writerDone
		}
		close(s.closedCh)
		s.closeErr = s.closeResources()
		s.log.Info("event store closed", "dir", s.dir)
	})
	return s.closeErr
}

func (s *Store) closeResources() error {
	var errs []error
	// Readers first: the last connection to close checkpoints the WAL into
	// the database and removes it, which only the writer is allowed to do.
	errs = append(errs, s.rd.close())
	if s.rdb != nil {
		errs = append(errs, s.rdb.Close())
	}
	if s.w != nil {
		errs = append(errs, s.w.close())
	}
	if s.wdb != nil {
		errs = append(errs, s.wdb.Close())
	}
	if s.lock != nil {
		errs = append(errs, s.lock.release())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close event store: %w", err)
	}
	return nil
}

// closedErr maps errors from a database closed under a running call to
// ErrClosed, so that callers see one error for a store that went away.
func (s *Store) closedErr(err error) error {
	if s.closed.Load() {
		return fmt.Errorf("%w (%v)", eventstore.ErrClosed, err)
	}
	return err
}
