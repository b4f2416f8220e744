package embedded

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"time"

	"modernc.org/sqlite"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
)

// maxBatch bounds one transaction, so that a burst of appends cannot make a
// single commit (and the memory behind it) arbitrarily large.
const maxBatch = 4096

// insertRows is how many events one INSERT statement writes when an append
// carries many, such as a pull reply: each statement costs the driver and
// SQLite's virtual machine a setup, so a reply of thousands of events takes
// a few dozen statements rather than thousands.
const insertRows = 64

const (
	insertEvents = `INSERT INTO events (stream_id, revision, event_id, type, data, created) VALUES `
	eventValues  = `(?, ?, ?, ?, ?, ?)`
)

// maxCachedStreams bounds the writer's cache of stream heads; past it the
// cache starts afresh and refills from the streams table.
const maxCachedStreams = 1 << 16

// request is one Append, Delete or step of a Truncate waiting for the
// writer. It carries the caller's context across to the writer goroutine
// only so that the writer can skip a request whose caller has given up.
type request struct {
	ctx      context.Context
	del      bool
	trunc    bool
	before   uint64 // the truncation point, for trunc
	more     bool   // answer to trunc: rows below the point remain
	stream   string
	expected eventstore.ExpectedRevision
	events   []eventstore.EventData
	res      eventstore.AppendResult
	err      error
	done     chan struct{}
	// groupRest: how many requests after this one belong to the same
	// AppendStreams, which one commit takes together.
	groupRest int
}

// streamState is the writer's view of a stream. The writer is the only
// process writing, so once loaded this view is authoritative.
type streamState struct {
	id      int64 // streams.id; 0 until the row exists
	last    uint64
	exists  bool   // the stream has had events
	tb      uint64 // streams.truncate_before
	deleted bool
}

// batch is the work of one transaction, kept apart from the writer's
// committed state until COMMIT succeeds, so a rollback leaves no trace.
type batch struct {
	created int64
	streams map[string]*streamState
	ids     map[idKey]uint64 // event IDs written in this batch -> revision
	events  []eventstore.RecordedEvent
	live    bool // build events for subscribers
	from    uint64
	last    uint64
	applied int
	removed int64 // rows deleted by truncations
}

type writer struct {
	conn      *sql.Conn
	begin     *sql.Stmt
	commit    *sql.Stmt
	rollback  *sql.Stmt
	selStream *sql.Stmt
	insStream *sql.Stmt
	delStream *sql.Stmt
	setTB     *sql.Stmt
	minRev    *sql.Stmt
	delEvents *sql.Stmt
	insEvent  *sql.Stmt
	insEvents *sql.Stmt // insertRows rows
	selEvents *sql.Stmt
	streams   map[string]*streamState
	ids       *idCache
	idsLoaded bool // ids holds the newest event IDs (loadIDs)
	b         batch
	args      []any // reused for each INSERT
	failed    error // sticky: set when the storage failed (failStorage)

	// While the disk is full (Store.full): the next try, and the backoff.
	retryAt     time.Time
	fullBackoff time.Duration
	fullSince   time.Time

	// failCommit, in tests, makes COMMIT fail with its error instead of
	// running: the seam for disk failures SQLite cannot be made to report.
	failCommit func() error
	// step is the most rows a truncation step deletes (truncateStep).
	step uint64
}

func newWriter(ctx context.Context, db *sql.DB) (*writer, error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	w := &writer{
		conn:    conn,
		streams: make(map[string]*streamState),
		ids:     newIDCache(idCacheSize),
		step:    truncateStep,
		b: batch{
			streams: make(map[string]*streamState),
			ids:     make(map[idKey]uint64),
		},
	}
	// Keep the WAL and its shared-memory index when the store closes: a
	// server restarted on a full disk could not create them again, and
	// could then neither read nor say why. Their size is bounded by the
	// checkpoints either way.
	err = conn.Raw(func(dc any) error {
		fc, ok := dc.(sqlite.FileControl)
		if !ok {
			return fmt.Errorf("driver connection %T has no file control", dc)
		}
		_, err := fc.FileControlPersistWAL("main", 1)
		return err
	})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("persist the WAL: %w", err)
	}
	prep := func(dst **sql.Stmt, query string) {
		if err != nil {
			return
		}
		*dst, err = conn.PrepareContext(ctx, query)
	}
	prep(&w.begin, `BEGIN IMMEDIATE`)
	prep(&w.commit, `COMMIT`)
	prep(&w.rollback, `ROLLBACK`)
	prep(&w.selStream, `SELECT id, deleted, truncate_before, (SELECT MAX(revision) FROM events WHERE stream_id = streams.id)
		FROM streams WHERE name = ?`)
	prep(&w.insStream, `INSERT INTO streams (name) VALUES (?)`)
	prep(&w.delStream, `UPDATE streams SET deleted = 1 WHERE id = ?`)
	prep(&w.setTB, `UPDATE streams SET truncate_before = ? WHERE id = ?`)
	prep(&w.minRev, `SELECT MIN(revision) FROM events WHERE stream_id = ?`)
	// ?4 is the largest position in the table, whose row stays so that
	// SQLite never hands its rowid out again.
	prep(&w.delEvents, `DELETE FROM events WHERE stream_id = ?1 AND revision >= ?2 AND revision < ?3 AND position < ?4`)
	prep(&w.insEvent, insertEvents+eventValues)
	prep(&w.insEvents, insertEvents+eventValues+strings.Repeat(", "+eventValues, insertRows-1))
	prep(&w.selEvents, `SELECT revision, event_id, position FROM events WHERE stream_id = ? AND revision >= ? ORDER BY revision LIMIT ?`)
	if err != nil {
		w.close()
		return nil, fmt.Errorf("prepare writer: %w", err)
	}
	return w, nil
}

// loadIDs fills the cache of recent event IDs once, before the first
// append, so that a retry across a restart of the store is recognised.
func (w *writer) loadIDs(ctx context.Context) error {
	if w.idsLoaded {
		return nil
	}
	if err := w.ids.load(ctx, w.conn); err != nil {
		w.ids = newIDCache(len(w.ids.ring)) // the next try starts afresh
		return err
	}
	w.idsLoaded = true
	return nil
}

func (w *writer) close() error {
	var errs []error
	for _, st := range []*sql.Stmt{w.begin, w.commit, w.rollback, w.selStream, w.insStream, w.delStream, w.setTB, w.minRev, w.delEvents, w.insEvent, w.insEvents, w.selEvents} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	errs = append(errs, w.conn.Close())
	return errors.Join(errs...)
}

// runWriter is the single writer: it takes every request queued so far,
// commits them in one transaction and answers each, until Close has been
// called and the queue is empty.
func (s *Store) runWriter(ctx context.Context) {
	defer close(s.writerDone)
	// The newest event IDs are read here, not in Open: a start reads the
	// store meanwhile, and only an append needs them (commitBatch waits).
	_ = s.w.loadIDs(ctx)
	var taken []*request
	for {
		s.queueMu.Lock()
		for len(s.queue) == 0 && !s.closing {
			s.queueCond.Wait()
		}
		if len(s.queue) == 0 {
			s.queueMu.Unlock()
			return
		}
		// Swap the buffers: appenders fill the other one meanwhile.
		taken, s.queue = s.queue, taken[:0]
		s.queueMu.Unlock()

		for rest := taken; len(rest) > 0; {
			n := min(len(rest), maxBatch)
			for n < len(rest) && rest[n-1].groupRest > 0 {
				n++ // an AppendStreams is not split across commits
			}
			s.commitBatch(ctx, rest[:n])
			rest = rest[n:]
		}
		clear(taken)
		// Let the callers just answered run before taking the next batch:
		// most append again at once, and then share the next commit instead
		// of waiting for the one after. This is a yield, not a delay: with
		// nothing else runnable it returns at once.
		runtime.Gosched()
	}
}

// commitBatch writes reqs in one transaction and answers each of them.
func (s *Store) commitBatch(ctx context.Context, reqs []*request) {
	w := s.w
	if w.failed != nil {
		answerAll(reqs, w.failed)
		return
	}
	if err := w.loadIDs(ctx); err != nil {
		answerAll(reqs, err)
		return
	}
	if s.full.Load() && s.clock().Before(w.retryAt) {
		// Not yet time to try the disk again: refuse without touching it.
		answerAll(reqs, ErrDiskFull)
		return
	}
	b := &w.b
	b.reset(s.clock().UnixNano(), s.hasSubscribers(), s.head.Load())

	_, err := w.begin.ExecContext(ctx)
	for _, r := range reqs {
		if err != nil {
			break
		}
		if cerr := r.ctx.Err(); cerr != nil {
			// Nobody waits for this answer: do not write what the caller
			// has already been told failed.
			r.err = cerr
			continue
		}
		err = w.apply(ctx, b, r)
	}
	committing := false
	if err == nil {
		committing = true
		err = w.execCommit(ctx)
	}
	if err != nil {
		_, _ = w.rollback.ExecContext(ctx) // may fail if SQLite already rolled back
		// Answers worked out inside the rolled-back transaction may rest
		// on appends that are now undone: every request gets the failure.
		switch s.classify(err, committing) {
		case failDiskFull:
			s.setFull(err)
			answerAll(reqs, fmt.Errorf("%w (%v)", ErrDiskFull, err))
		case failStorage:
			answerAll(reqs, fmt.Errorf("commit: %w", err))
			s.failStorage(err)
		default:
			if len(reqs) > 1 {
				// A statement failed: retry each append on its own, so
				// that one bad append cannot fail the others.
				for _, r := range reqs {
					r.err, r.res, r.more = nil, eventstore.AppendResult{}, false
					s.commitBatch(ctx, []*request{r})
				}
				return
			}
			answerAll(reqs, err)
		}
		return
	}

	if w.fullBackoff != 0 || s.full.Load() {
		s.clearFull()
	}
	s.commits.Add(1)
	s.appends.Add(uint64(b.applied))
	if b.last > b.from {
		s.head.Store(b.last)
		s.publish(b)
	}
	if b.removed > 0 {
		// Before answering, so that a Truncate that returns has given the
		// space back; appends of the same batch wait for it too.
		s.reclaim(ctx)
	}
	for _, r := range reqs {
		close(r.done)
	}
	// The writer's own view is brought up to date after the answers: only
	// this goroutine reads it, before the next batch, and merging the event
	// IDs of a large append (a pull reply's thousands) would otherwise delay
	// every caller of the batch.
	w.merge(b)
}

func (w *writer) execCommit(ctx context.Context) error {
	if w.failCommit != nil {
		if err := w.failCommit(); err != nil {
			return err
		}
	}
	_, err := w.commit.ExecContext(ctx)
	return err
}

// answerAll fails every request with err.
func answerAll(reqs []*request, err error) {
	for _, r := range reqs {
		r.err = fmt.Errorf("%s %q: %w", r.verb(), r.stream, err)
		close(r.done)
	}
}

func (r *request) verb() string {
	switch {
	case r.del:
		return "delete"
	case r.trunc:
		return "truncate"
	}
	return "append to"
}

func (b *batch) reset(created int64, live bool, head uint64) {
	b.created = created
	clear(b.streams)
	clear(b.ids)
	clear(b.events)
	b.events = b.events[:0]
	b.live = live
	b.from, b.last = head, head
	b.applied = 0
	b.removed = 0
}

// state returns the batch's copy of a stream's state, loading it on first use.
func (w *writer) state(ctx context.Context, b *batch, name string) (*streamState, error) {
	if st, ok := b.streams[name]; ok {
		return st, nil
	}
	st := new(streamState)
	if cached, ok := w.streams[name]; ok {
		*st = *cached
	} else {
		var (
			last sql.NullInt64
			tb   int64
		)
		err := w.selStream.QueryRowContext(ctx, name).Scan(&st.id, &st.deleted, &tb, &last)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return nil, fmt.Errorf("load stream: %w", err)
		default:
			st.tb = uint64(tb)
			st.exists = last.Valid || st.tb > 0
			st.last = uint64(last.Int64)
			if st.tb > 0 && (!last.Valid || uint64(last.Int64) < st.tb) {
				// Every event was truncated: the point is one past the last.
				st.last = st.tb - 1
			}
		}
	}
	b.streams[name] = st
	return st, nil
}

// apply checks one request against the stream's state and writes it. A
// conflict is the request's own answer (r.err) and leaves the batch going;
// only a failing statement returns an error.
func (w *writer) apply(ctx context.Context, b *batch, r *request) error {
	st, err := w.state(ctx, b, r.stream)
	if err != nil {
		return err
	}
	if st.deleted {
		r.err = fmt.Errorf("%s %q: %w", r.verb(), r.stream, eventstore.ErrStreamDeleted)
		return nil
	}
	if r.del {
		if !matches(st, r.expected) {
			r.err = conflict(r, st)
			return nil
		}
		if err := w.ensureRow(ctx, st, r.stream); err != nil {
			return err
		}
		if _, err := w.delStream.ExecContext(ctx, st.id); err != nil {
			return fmt.Errorf("delete stream: %w", err)
		}
		st.deleted = true
		b.applied++
		return nil
	}
	if r.trunc {
		return w.truncate(ctx, b, st, r)
	}

	if !matches(st, r.expected) {
		// EventStoreDB's idempotence: a retry of an append that already
		// happened finds its own events where it meant to put them.
		from, try := uint64(0), false
		if rev, ok := r.expected.Revision(); ok && st.exists && rev < st.last {
			from, try = rev+1, true
		} else if r.expected.IsNoStream() && st.exists {
			from, try = 0, true
		}
		if try {
			res, ok, err := w.sameEvents(ctx, b, st, from, r.events)
			if err != nil {
				return err
			}
			if ok {
				r.res = res
				b.applied++
				return nil
			}
		}
		r.err = conflict(r, st)
		return nil
	}
	if r.expected.IsAny() && st.exists {
		// With Any, like EventStoreDB, idempotence rests on a cache of
		// recent event IDs: best effort, but it catches a prompt retry.
		if rev, ok := w.lookupID(b, st.id, r.events[0].ID); ok {
			res, same, err := w.sameEvents(ctx, b, st, rev, r.events)
			if err != nil {
				return err
			}
			if !same {
				r.err = conflict(r, st)
				return nil
			}
			r.res = res
			b.applied++
			return nil
		}
	}

	if err := w.ensureRow(ctx, st, r.stream); err != nil {
		return err
	}
	rev := uint64(0)
	if st.exists {
		rev = st.last + 1
	}
	var liveData []byte // the subscribers' copy of every event's data, one allocation
	if b.live {
		b.events = slices.Grow(b.events, len(r.events))
		size := 0
		for i := range r.events {
			size += len(r.events[i].Data)
		}
		liveData = make([]byte, 0, size)
	}
	created := time.Unix(0, b.created).UTC()
	for done := 0; done < len(r.events); {
		// Many events go in insertRows to a statement, the rest one by one.
		rows, stmt := r.events[done:done+1], w.insEvent
		if len(r.events)-done >= insertRows {
			rows, stmt = r.events[done:done+insertRows], w.insEvents
		}
		args := w.args[:0]
		for i := range rows {
			e := &rows[i]
			args = append(args, st.id, int64(rev)+int64(i), e.ID[:], e.Type, e.Data, b.created)
		}
		res, err := stmt.ExecContext(ctx, args...)
		clear(args) // hold nothing of the caller's once it is answered
		w.args = args[:0]
		if err != nil {
			return fmt.Errorf("insert event: %w", err)
		}
		last, err := res.LastInsertId()
		if err != nil {
			return fmt.Errorf("insert event: %w", err)
		}
		// A new row's rowid is one more than the largest so far, and b.last
		// is the largest, so the rows of one statement take the positions
		// after it, in order. Checked, not assumed.
		if len(rows) > 1 && uint64(last) != b.last+uint64(len(rows)) {
			return fmt.Errorf("insert events: the last of %d rows after position %d is at %d", len(rows), b.last, last)
		}
		for i := range rows {
			e := &rows[i]
			pos := uint64(last) - uint64(len(rows)-1-i)
			b.ids[idKey{st.id, e.ID}] = rev
			if b.live {
				// The caller owns e.Data once Append returns; subscribers
				// get their own copy.
				var data []byte // nil for empty data, as an append to nil gives
				if len(e.Data) > 0 {
					at := len(liveData)
					liveData = append(liveData, e.Data...)
					data = liveData[at:len(liveData):len(liveData)]
				}
				b.events = append(b.events, eventstore.RecordedEvent{
					Stream:   r.stream,
					Revision: rev,
					Position: eventstore.Position{Commit: pos, Prepare: pos},
					ID:       e.ID,
					Type:     e.Type,
					Data:     data,
					Created:  created,
				})
			}
			st.last, st.exists = rev, true
			rev++
		}
		b.last = uint64(last)
		done += len(rows)
	}
	b.applied++
	r.res = eventstore.AppendResult{
		NextExpectedRevision: st.last,
		Position:             eventstore.Position{Commit: b.last, Prepare: b.last},
	}
	return nil
}

func matches(st *streamState, e eventstore.ExpectedRevision) bool {
	switch {
	case e.IsAny():
		return true
	case e.IsNoStream():
		return !st.exists
	default:
		rev, _ := e.Revision()
		return st.exists && st.last == rev
	}
}

func conflict(r *request, st *streamState) error {
	return &eventstore.WrongExpectedRevisionError{
		Stream:       r.stream,
		Expected:     r.expected,
		Actual:       st.last,
		StreamExists: st.exists,
	}
}

func (w *writer) ensureRow(ctx context.Context, st *streamState, name string) error {
	if st.id != 0 {
		return nil
	}
	res, err := w.insStream.ExecContext(ctx, name)
	if err == nil {
		st.id, err = res.LastInsertId()
	}
	if err != nil {
		return fmt.Errorf("create stream: %w", err)
	}
	return nil
}

// sameEvents reports whether the stream holds events with the IDs of events,
// in order, from revision from on; if so, res is what the original append
// returned. It reads through the transaction, so it sees this batch too.
func (w *writer) sameEvents(ctx context.Context, b *batch, st *streamState, from uint64, events []eventstore.EventData) (res eventstore.AppendResult, ok bool, err error) {
	if st.id == 0 || !st.exists || from > st.last || uint64(len(events)) > st.last-from+1 {
		return res, false, nil
	}
	rows, err := w.selEvents.QueryContext(ctx, st.id, int64(from), len(events))
	if err != nil {
		return res, false, fmt.Errorf("check idempotent append: %w", err)
	}
	defer rows.Close()
	i := 0
	for rows.Next() {
		var rev, pos int64
		var id []byte
		if err := rows.Scan(&rev, &id, &pos); err != nil {
			return res, false, fmt.Errorf("check idempotent append: %w", err)
		}
		if uint64(rev) != from+uint64(i) || string(id) != string(events[i].ID[:]) {
			return res, false, nil
		}
		res = eventstore.AppendResult{
			NextExpectedRevision: uint64(rev),
			Position:             eventstore.Position{Commit: uint64(pos), Prepare: uint64(pos)},
		}
		i++
	}
	if err := rows.Err(); err != nil {
		return res, false, fmt.Errorf("check idempotent append: %w", err)
	}
	return res, i == len(events), nil
}

func (w *writer) lookupID(b *batch, stream int64, id eventstore.EventID) (uint64, bool) {
	k := idKey{stream, id}
	if rev, ok := b.ids[k]; ok {
		return rev, true
	}
	return w.ids.lookup(k)
}

// merge makes a committed batch the writer's state.
func (w *writer) merge(b *batch) {
	if len(w.streams)+len(b.streams) > maxCachedStreams {
		clear(w.streams)
	}
	for name, st := range b.streams {
		w.streams[name] = st
	}
	for k, rev := range b.ids {
		w.ids.add(k, rev)
	}
}
