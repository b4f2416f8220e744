package embedded

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
)

// truncateStep bounds the rows one truncation step deletes. Each step is a
// transaction of its own, shared with whatever appends are queued, so a
// large truncation neither holds appends up for long nor grows the WAL by
// more than a step's pages before the space is given back.
const truncateStep = 16384

// checkpointBusy bounds the wait of the truncating checkpoint for readers
// (here or in another process) that still read from the WAL. The
// checkpoint is redone after the next removal; appends must not wait.
const checkpointBusy = 100 * time.Millisecond

// Truncate removes the events of stream before revision before. The
// truncation point is recorded first, in the step's transaction, so reads
// stop returning the events at once; the rows go in steps of at most
// truncateStep, and after each the freed pages are given back to the
// filesystem (incremental vacuum, then a checkpoint that truncates the
// WAL). If the process stops half way, the rest goes with the next
// truncation of the stream. The event at the largest position in the store
// stays on disk (hidden) until later events are appended and the stream is
// truncated again: deleting it would let SQLite give its position out twice.
func (s *Store) Truncate(ctx context.Context, stream string, before uint64) error {
	for {
		r := &request{ctx: ctx, trunc: true, stream: stream, before: before}
		if err := s.submit(ctx, r); err != nil {
			return err
		}
		if !r.more {
			return nil
		}
	}
}

// TruncatedBefore returns the stream's truncation point.
func (s *Store) TruncatedBefore(ctx context.Context, stream string) (uint64, error) {
	if s.closed.Load() {
		return 0, fmt.Errorf("truncation point of %q: %w", stream, eventstore.ErrClosed)
	}
	_, tb, err := s.streamRow(ctx, stream)
	if err != nil {
		return 0, fmt.Errorf("truncation point of %q: %w", stream, err)
	}
	return tb, nil
}

// truncate raises the stream's truncation point and deletes one step of
// the rows below it; r.more tells the caller to ask for the next step.
func (w *writer) truncate(ctx context.Context, b *batch, st *streamState, r *request) error {
	switch {
	case !st.exists:
		r.err = fmt.Errorf("truncate %q: %w", r.stream, eventstore.ErrStreamNotFound)
		return nil
	case r.before > st.last+1:
		r.err = fmt.Errorf("truncate %q before %d, its last revision is %d: %w", r.stream, r.before, st.last, eventstore.ErrTruncateBeyondEnd)
		return nil
	}
	if r.before > st.tb {
		if _, err := w.setTB.ExecContext(ctx, int64(r.before), st.id); err != nil {
			return fmt.Errorf("set truncation point: %w", err)
		}
		st.tb = r.before
	}
	b.applied++
	var first sql.NullInt64
	if err := w.minRev.QueryRowContext(ctx, st.id).Scan(&first); err != nil {
		return fmt.Errorf("find the first event: %w", err)
	}
	if !first.Valid || uint64(first.Int64) >= st.tb {
		return nil
	}
	upto := min(st.tb, uint64(first.Int64)+w.step)
	res, err := w.delEvents.ExecContext(ctx, st.id, first.Int64, int64(upto), int64(b.last))
	if err != nil {
		return fmt.Errorf("delete truncated events: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("delete truncated events: %w", err)
	}
	b.removed += n
	r.more = upto < st.tb
	return nil
}

// reclaim gives the pages that removals freed back to the filesystem: the
// incremental vacuum moves the last pages into the free ones and shortens
// the database file, and the checkpoint copies that into the file and
// empties the WAL. Neither needs more room than the pages moved, unlike a
// full VACUUM (a copy of the whole database). A failure other than a
// failed sync is not fatal: the events are gone either way, and the next
// removal tries again. A failed sync stops writes, as in a commit.
func (s *Store) reclaim(ctx context.Context) {
	w := s.w
	_, err := w.conn.ExecContext(ctx, `PRAGMA incremental_vacuum`)
	if err == nil {
		err = s.checkpoint(ctx, w.conn)
	}
	if err == nil {
		return
	}
	if s.classify(err, false) == failStorage {
		s.failStorage(err)
		return
	}
	s.log.Warn("event store: giving the space of removed events back failed; retried after the next removal", "dir", s.dir, "err", err)
}

// checkpoint copies the WAL into the database and truncates it, waiting at
// most checkpointBusy for readers.
func (s *Store) checkpoint(ctx context.Context, conn *sql.Conn) error {
	if _, err := conn.ExecContext(ctx, fmt.Sprintf(`PRAGMA busy_timeout = %d`, checkpointBusy.Milliseconds())); err != nil {
		return err
	}
	var busy, logPages, done int64
	err := conn.QueryRowContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`).Scan(&busy, &logPages, &done)
	if _, rerr := conn.ExecContext(ctx, `PRAGMA busy_timeout = 5000`); err == nil {
		err = rerr
	}
	if err == nil && busy != 0 {
		s.log.Debug("event store: WAL checkpoint left pages behind for readers", "dir", s.dir, "wal_pages", logPages, "copied", done)
	}
	return err
}

// migrate brings a database of an older format version up to this one.
// Each step is atomic and checks whether it is done, so an interrupted
// migration is simply run again by the next Open (the VERSION file is
// written only after it).
func (s *Store) migrate(ctx context.Context, from int) error {
	if from < 2 {
		// Version 2: streams can be truncated. Adding a column with a
		// default rewrites no row.
		has, err := hasColumn(ctx, s.wdb, "streams", "truncate_before")
		if err != nil {
			return err
		}
		if !has {
			if _, err := s.wdb.ExecContext(ctx, `ALTER TABLE streams ADD COLUMN truncate_before INTEGER NOT NULL DEFAULT 0`); err != nil {
				return fmt.Errorf("add truncation points: %w", err)
			}
		}
		s.log.Info("event store: data directory migrated", "dir", s.dir, "from_version", from, "to_version", FormatVersion)
	}
	return nil
}

func hasColumn(ctx context.Context, db *sql.DB, table, column string) (bool, error) {
	rows, err := db.QueryContext(ctx, `SELECT name FROM pragma_table_info(?)`, table)
	if err != nil {
		return false, fmt.Errorf("read the columns of %s: %w", table, err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return false, err
		}
		if name == column {
			return true, nil
		}
	}
	return false, rows.Err()
}

// autoVacuumIncremental is PRAGMA auto_vacuum's value for INCREMENTAL.
const autoVacuumIncremental = 2

// convertAutoVacuum turns incremental auto-vacuum on in a database created
// without it (every data directory before this build). SQLite can do that
// only with a VACUUM: a one-time rewrite of the whole database, atomic (an
// interrupted one leaves the database as it was, and the next Open tries
// again) but needing room for a copy of the database beside it and in the
// WAL. Without that room, the conversion waits for a later start and the
// store runs as before: removed events free pages that later appends
// reuse, but the file does not shrink.
func (s *Store) convertAutoVacuum(ctx context.Context) {
	var mode int
	if err := s.wdb.QueryRowContext(ctx, `PRAGMA auto_vacuum`).Scan(&mode); err != nil {
		s.log.Warn("event store: cannot read the auto-vacuum mode", "dir", s.dir, "err", err)
		return
	}
	if mode == autoVacuumIncremental {
		return
	}
	size, err := s.DiskUsage()
	if err != nil {
		s.log.Warn("event store: cannot size the database for the auto-vacuum conversion; it waits for a later start", "dir", s.dir, "err", err)
		return
	}
	need := 2*size + lowSpace
	if free, err := s.freeSpace(s.dir); err != nil || free < need {
		s.log.Warn("event store: not enough free space to turn on incremental auto-vacuum (a one-time VACUUM); it waits for a later start, and until then removed events free space only for reuse inside the database",
			"dir", s.dir, "database_bytes", size, "needed_bytes", need, "free_bytes", free, "err", err)
		return
	}
	s.log.Info("event store: turning on incremental auto-vacuum: a one-time VACUUM of the whole database", "dir", s.dir, "database_bytes", size)
	start := time.Now()
	conn, err := s.wdb.Conn(ctx)
	if err == nil {
		defer conn.Close()
		_, err = conn.ExecContext(ctx, `PRAGMA auto_vacuum = INCREMENTAL`)
	}
	if err == nil {
		_, err = conn.ExecContext(ctx, `VACUUM`)
	}
	if err == nil {
		err = s.checkpoint(ctx, conn)
	}
	if err != nil {
		s.log.Warn("event store: the auto-vacuum conversion failed, nothing was changed; it is tried again at the next start", "dir", s.dir, "err", err)
		return
	}
	after, _ := s.DiskUsage()
	s.log.Info("event store: incremental auto-vacuum on", "dir", s.dir, "took", time.Since(start).Round(time.Millisecond), "database_bytes", after)
}

// DiskUsage returns the bytes the store's files take in the data
// directory: the database, its WAL and the WAL's index. It costs a few
// stat calls.
func (s *Store) DiskUsage() (uint64, error) {
	var total uint64
	for _, name := range []string{dbFile, dbFile + "-wal", dbFile + "-shm"} {
		fi, err := os.Stat(filepath.Join(s.dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("disk usage: %w", err)
		}
		total += uint64(fi.Size())
	}
	return total, nil
}
