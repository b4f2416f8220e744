package embedded

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
)

// readStmts are prepared once on the read-only pool; database/sql prepares
// them again on each connection as needed.
type readStmts struct {
	stream   *sql.Stmt
	forward  *sql.Stmt
	backward *sql.Stmt
	head     *sql.Stmt
	all      *sql.Stmt
}

func (r *readStmts) prepare(ctx context.Context, db *sql.DB, noTruncation bool) error {
	var err error
	prep := func(dst **sql.Stmt, query string) {
		if err != nil {
			return
		}
		*dst, err = db.PrepareContext(ctx, query)
	}
	// Rows below a stream's truncation point may still be there: removal
	// goes in bounded steps after the point is set, and the event at the
	// largest position is kept. Every read hides them.
	tb, stb := "truncate_before", "s.truncate_before"
	if noTruncation {
		tb, stb = "0", "0"
	}
	prep(&r.stream, `SELECT id, deleted, `+tb+` FROM streams WHERE name = ?`)
	prep(&r.forward, `SELECT revision, position, event_id, type, data, created FROM events
		WHERE stream_id = ? AND revision >= ? ORDER BY revision LIMIT ?`)
	prep(&r.backward, `SELECT revision, position, event_id, type, data, created FROM events
		WHERE stream_id = ? AND revision >= ? ORDER BY revision DESC LIMIT ?`)
	prep(&r.head, `SELECT COALESCE(MAX(position), 0) FROM events`)
	// The subscription page: events after a position, up to a bound, of the
	// streams whose names start with ?3 (compared as bytes), skipping "$"
	// streams unless ?4, and truncated events. Scanning by position keeps
	// the global order.
	prep(&r.all, `SELECT e.position, s.name, e.revision, e.event_id, e.type, e.data, e.created
		FROM events e JOIN streams s ON s.id = e.stream_id
		WHERE e.position > ?1 AND e.position <= ?2
		  AND substr(CAST(s.name AS BLOB), 1, length(CAST(?3 AS BLOB))) = CAST(?3 AS BLOB)
		  AND (?4 OR substr(s.name, 1, 1) <> '$')
		  AND e.revision >= `+stb+`
		ORDER BY e.position LIMIT ?5`)
	if err != nil {
		return fmt.Errorf("prepare reads: %w", err)
	}
	return nil
}

func (r *readStmts) close() error {
	var errs []error
	for _, st := range []*sql.Stmt{r.stream, r.forward, r.backward, r.head, r.all} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	return errors.Join(errs...)
}

// ReadStream returns up to limit events of stream from revision from on.
func (s *Store) ReadStream(ctx context.Context, stream string, from uint64, limit int) ([]eventstore.RecordedEvent, error) {
	events, err := s.read(ctx, stream, limit, func(id int64, tb uint64) (*sql.Rows, error) {
		return s.rd.forward.QueryContext(ctx, id, int64(min(max(from, tb), 1<<63-1)), limit)
	})
	if err != nil {
		return nil, fmt.Errorf("read stream %q: %w", stream, err)
	}
	return events, nil
}

// ReadStreamBackward returns up to limit events of stream, newest first.
func (s *Store) ReadStreamBackward(ctx context.Context, stream string, limit int) ([]eventstore.RecordedEvent, error) {
	events, err := s.read(ctx, stream, limit, func(id int64, tb uint64) (*sql.Rows, error) {
		return s.rd.backward.QueryContext(ctx, id, int64(tb), limit)
	})
	if err != nil {
		return nil, fmt.Errorf("read stream %q backward: %w", stream, err)
	}
	return events, nil
}

func (s *Store) read(ctx context.Context, stream string, limit int, query func(id int64, tb uint64) (*sql.Rows, error)) ([]eventstore.RecordedEvent, error) {
	if s.closed.Load() {
		return nil, eventstore.ErrClosed
	}
	if limit <= 0 {
		return nil, fmt.Errorf("limit %d: must be positive", limit)
	}
	// A streams row is written in the transaction of the stream's first
	// append (or of its deletion), so a row that is not a tombstone means
	// the stream has had events. Two statements, no transaction: events
	// never change, a row only ever turns into a tombstone and a truncation
	// point only rises, so the pair cannot disagree in a way that matters
	// (a read racing a truncation may return what it is removing).
	id, tb, err := s.streamRow(ctx, stream)
	if err != nil {
		return nil, err
	}
	rows, err := query(id, tb)
	if err != nil {
		return nil, s.closedErr(err)
	}
	defer rows.Close()
	events := make([]eventstore.RecordedEvent, 0, min(limit, 1024))
	for rows.Next() {
		var (
			e       eventstore.RecordedEvent
			rev     int64
			pos     int64
			eid     []byte
			created int64
		)
		if err := rows.Scan(&rev, &pos, &eid, &e.Type, &e.Data, &created); err != nil {
			return nil, s.closedErr(err)
		}
		e.Stream = stream
		e.Revision = uint64(rev)
		e.Position = eventstore.Position{Commit: uint64(pos), Prepare: uint64(pos)}
		copy(e.ID[:], eid)
		e.Created = time.Unix(0, created).UTC()
		events = append(events, e)
	}
	if err := rows.Err(); err != nil {
		return nil, s.closedErr(err)
	}
	return events, nil
}

// streamRow returns a readable stream's row ID and truncation point.
func (s *Store) streamRow(ctx context.Context, stream string) (id int64, tb uint64, err error) {
	var (
		deleted bool
		before  int64
	)
	err = s.rd.stream.QueryRowContext(ctx, stream).Scan(&id, &deleted, &before)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return 0, 0, eventstore.ErrStreamNotFound
	case err != nil:
		return 0, 0, s.closedErr(err)
	case deleted:
		return 0, 0, eventstore.ErrStreamDeleted
	}
	return id, uint64(before), nil
}

// readHead returns the position of the last stored event, 0 if none.
func (s *Store) readHead(ctx context.Context) (uint64, error) {
	var head int64
	if err := s.rd.head.QueryRowContext(ctx).Scan(&head); err != nil {
		return 0, fmt.Errorf("read head position: %w", s.closedErr(err))
	}
	return uint64(head), nil
}
