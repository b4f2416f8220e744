package main

import (
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"

	_ "modernc.org/sqlite" // the engine baseline opens SQLite directly
)

// result counts the work of one or more runs.
type result struct {
	n       int64 // appends or rows
	elapsed time.Duration
	appends uint64 // the store's counters, to tell the group commit size
	commits uint64
}

func (r *result) add(o result) {
	r.n += o.n
	r.elapsed += o.elapsed
	r.appends += o.appends
	r.commits += o.commits
}

func (r result) rate() float64 { return float64(r.n) / r.elapsed.Seconds() }

func (r result) perCommit() float64 { return float64(r.appends) / float64(max(r.commits, 1)) }

// body is an event body of the given size, JSON like Postbox's.
func body(size int) []byte {
	b := make([]byte, max(size, 2))
	for i := range b {
		b[i] = 'a' + byte(i%26)
	}
	b[0], b[len(b)-1] = '"', '"'
	return b
}

// ids makes unique event IDs without the cost of a random source in the
// measured loop.
type ids struct{ n atomic.Uint64 }

func (g *ids) next() eventstore.EventID {
	var id eventstore.EventID
	binary.BigEndian.PutUint64(id[:8], uint64(time.Now().UnixNano()))
	binary.BigEndian.PutUint64(id[8:], g.n.Add(1))
	return id
}

// storeWriters appends to the store, each writer to a stream of its own
// with an exact expected revision, one event per append: each append is
// one durable acknowledgement.
type storeWriters struct {
	s    *embedded.Store
	body []byte
	ids  ids
	next []uint64 // per writer: the next revision
}

func newStoreWriters(s *embedded.Store, writers, dataSize int) *storeWriters {
	return &storeWriters{s: s, body: body(dataSize), next: make([]uint64, writers)}
}

func (sw *storeWriters) run(ctx context.Context, writers int, d time.Duration) (result, error) {
	before := sw.s.Stats()
	var (
		total atomic.Int64
		wg    sync.WaitGroup
		errs  = make([]error, writers)
	)
	start := time.Now()
	deadline := start.Add(d)
	for w := range writers {
		stream := fmt.Sprintf("bench-w%d", w)
		wg.Go(func() {
			for time.Now().Before(deadline) {
				expected := eventstore.NoStream()
				if sw.next[w] > 0 {
					expected = eventstore.Exact(sw.next[w] - 1)
				}
				e := eventstore.EventData{ID: sw.ids.next(), Type: "Bench", Data: sw.body}
				if _, err := sw.s.Append(ctx, stream, expected, e); err != nil {
					errs[w] = err
					return
				}
				sw.next[w]++
				total.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return result{}, err
	}
	after := sw.s.Stats()
	return result{
		n:       total.Load(),
		elapsed: elapsed,
		appends: after.Appends - before.Appends,
		commits: after.Commits - before.Commits,
	}, nil
}

// engine is the bare SQLite baseline: the store's DSN (WAL,
// synchronous=FULL) and table, on a scratch database, written by one
// connection with prepared statements, and nothing else.
type engine struct {
	db                    *sql.DB
	conn                  *sql.Conn
	begin, insert, commit *sql.Stmt
	body                  []byte
	ids                   ids
	next                  map[int]int64 // per stream: the next revision
}

func openEngine(ctx context.Context, path string, dataSize int) (*engine, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	e := &engine{body: body(dataSize), next: map[int]int64{}}
	var err error
	if e.db, err = sql.Open("sqlite", embedded.WriterDSN(path)); err != nil {
		return nil, err
	}
	e.db.SetMaxOpenConns(1)
	if _, err = e.db.ExecContext(ctx, embedded.NewDatabase+";"+embedded.Schema); err == nil {
		e.conn, err = e.db.Conn(ctx)
	}
	prep := func(dst **sql.Stmt, query string) {
		if err == nil {
			*dst, err = e.conn.PrepareContext(ctx, query)
		}
	}
	prep(&e.begin, `BEGIN IMMEDIATE`)
	prep(&e.insert, `INSERT INTO events (stream_id, revision, event_id, type, data, created) VALUES (?, ?, ?, ?, ?, ?)`)
	prep(&e.commit, `COMMIT`)
	if err != nil {
		e.close()
		return nil, fmt.Errorf("open engine baseline: %w", err)
	}
	return e, nil
}

func (e *engine) close() {
	for _, st := range []*sql.Stmt{e.begin, e.insert, e.commit} {
		if st != nil {
			st.Close()
		}
	}
	if e.conn != nil {
		e.conn.Close()
	}
	e.db.Close()
}

// run commits transactions of rowsPerTx INSERTs, each row to another
// stream as the store's writers do, for d; the rate is rows per second.
func (e *engine) run(ctx context.Context, rowsPerTx int, d time.Duration) (result, error) {
	// A context without a Done channel, like the store's writer: the
	// driver then does not watch it at every statement.
	bg := context.WithoutCancel(ctx)
	rows := 0
	start := time.Now()
	for time.Since(start) < d {
		if err := ctx.Err(); err != nil {
			return result{}, err
		}
		if _, err := e.begin.ExecContext(bg); err != nil {
			return result{}, err
		}
		created := time.Now().UnixNano()
		for j := range rowsPerTx {
			id := e.ids.next()
			if _, err := e.insert.ExecContext(bg, j+1, e.next[j], id[:], "Bench", e.body, created); err != nil {
				return result{}, err
			}
			e.next[j]++
		}
		if _, err := e.commit.ExecContext(bg); err != nil {
			return result{}, err
		}
		rows += rowsPerTx
	}
	return result{n: int64(rows), elapsed: time.Since(start)}, nil
}

const readStreamName = "bench-read"

// fillReadStream writes the stream the read measurement pages through.
func fillReadStream(ctx context.Context, s *embedded.Store, n, dataSize int) error {
	var g ids
	b := body(dataSize)
	for written := 0; written < n; {
		batch := make([]eventstore.EventData, min(100, n-written))
		for i := range batch {
			batch[i] = eventstore.EventData{ID: g.next(), Type: "Bench", Data: b}
		}
		expected := eventstore.NoStream()
		if written > 0 {
			expected = eventstore.Exact(uint64(written - 1))
		}
		if _, err := s.Append(ctx, readStreamName, expected, batch...); err != nil {
			return err
		}
		written += len(batch)
	}
	return nil
}

// readStream pages through the read stream; the rate is events per second.
func readStream(ctx context.Context, s *embedded.Store, page int) (float64, error) {
	start := time.Now()
	n := 0
	for from := uint64(0); ; {
		events, err := s.ReadStream(ctx, readStreamName, from, page)
		if err != nil {
			return 0, err
		}
		if len(events) == 0 {
			break
		}
		n += len(events)
		from = events[len(events)-1].Revision + 1
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// catchUpAll reads every event through a subscription from the start until
// it is caught up; the rate is events per second.
func catchUpAll(ctx context.Context, s *embedded.Store) (float64, int, error) {
	start := time.Now()
	sub, err := s.Subscribe(ctx, eventstore.Filter{}, eventstore.FromStart())
	if err != nil {
		return 0, 0, err
	}
	defer sub.Close()
	n := 0
	for {
		item, err := sub.Recv(ctx)
		if err != nil {
			return 0, n, err
		}
		if item.CaughtUp {
			return float64(n) / time.Since(start).Seconds(), n, nil
		}
		n++
	}
}

func (sw *storeWriters) runner(writers int) runner {
	return func(ctx context.Context, d time.Duration) (result, error) { return sw.run(ctx, writers, d) }
}

func (e *engine) runner(rowsPerTx int) runner {
	return func(ctx context.Context, d time.Duration) (result, error) { return e.run(ctx, rowsPerTx, d) }
}
