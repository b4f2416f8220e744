// Package memory is an event store held in memory: for the simulation of a
// federation, where many servers run in one test process under virtual time
// (testing/synctest), and for tests that need a store without files. It
// passes the same conformance suite as the embedded store and the
// EventStoreDB adapter (package storetest).
//
// A Storage is what outlives a server process: every append is durable in it
// once Append returns (and already when the append is applied, so a crash
// between the two loses the reply, not the events). A Store is one process's
// handle on it: Close (or a crash, see Crashing) ends the handle, and
// Storage.Open starts the next. Storage.Copy takes a copy to restore later,
// as a backup would be.
//
// It waits only on channels and mutexes, never on files, sockets or real
// timers, so it runs inside a synctest bubble when made there.
package memory

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
)

// Storage is the durable state of a memory store. It is safe for concurrent
// use.
type Storage struct {
	mu      sync.Mutex
	log     []eventstore.RecordedEvent // global order; position = index + 1
	streams map[string]*stream
	// changed is closed, and replaced, on every append, to wake waiting
	// subscriptions.
	changed chan struct{}
	// now stamps Created; the clock of whoever opened the storage last.
	now func() time.Time
}

type stream struct {
	positions []uint64                      // global positions of its events, by revision
	revs      map[eventstore.EventID]uint64 // revision of each event ID, for retries with Any
	deleted   bool
	// before is the truncation point: reads and subscriptions skip the
	// revisions below it, which stay in the global order as EventStoreDB
	// keeps them in $all until a scavenge.
	before uint64
}

// NewStorage returns empty storage.
func NewStorage() *Storage {
	return &Storage{streams: map[string]*stream{}, changed: make(chan struct{})}
}

// Options tune a Store.
type Options struct {
	// Now stamps each event's Created time; time.Now if nil (which is the
	// bubble's fake clock inside testing/synctest).
	Now func() time.Time
}

// New returns a store over new, empty storage.
func New(opts Options) *Store { return NewStorage().Open(opts) }

// Open returns a new handle on the storage, as a restarted server opens its
// data again. Handles opened before keep working until closed.
func (st *Storage) Open(opts Options) *Store {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	st.mu.Lock()
	st.now = now
	st.mu.Unlock()
	return &Store{st: st, closedCh: make(chan struct{})}
}

// Copy returns a deep copy of the storage as it is now: a backup, to be
// opened later in place of the original (a restore rolls a server back).
func (st *Storage) Copy() *Storage {
	st.mu.Lock()
	defer st.mu.Unlock()
	c := &Storage{
		log:     make([]eventstore.RecordedEvent, len(st.log)),
		streams: make(map[string]*stream, len(st.streams)),
		changed: make(chan struct{}),
		now:     st.now,
	}
	for i, e := range st.log {
		e.Data = slices.Clone(e.Data)
		c.log[i] = e
	}
	for name, s := range st.streams {
		c.streams[name] = &stream{positions: slices.Clone(s.positions), revs: maps.Clone(s.revs), deleted: s.deleted, before: s.before}
	}
	return c
}

// Len returns how many events the storage holds across all streams.
func (st *Storage) Len() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.log)
}

// Store is one handle on a Storage; it implements eventstore.Store.
type Store struct {
	st       *Storage
	once     sync.Once
	closedCh chan struct{}
}

var _ eventstore.Store = (*Store)(nil)

// Storage returns the storage the store works on.
func (s *Store) Storage() *Storage { return s.st }

func (s *Store) isClosed() bool {
	select {
	case <-s.closedCh:
		return true
	default:
		return false
	}
}

// Close ends the handle; the storage keeps everything.
func (s *Store) Close() error {
	s.once.Do(func() { close(s.closedCh) })
	return nil
}

// Append implements eventstore.Store, with EventStoreDB's idempotence: a
// retry finds its own events where it meant to put them and succeeds
// without writing twice.
func (s *Store) Append(ctx context.Context, name string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	if err := s.check(ctx, "append to", name); err != nil {
		return eventstore.AppendResult{}, err
	}
	if len(events) == 0 {
		return eventstore.AppendResult{}, fmt.Errorf("append to %q: no events", name)
	}
	st := s.st
	st.mu.Lock()
	defer st.mu.Unlock()
	str := st.streams[name]
	if str != nil && str.deleted {
		return eventstore.AppendResult{}, fmt.Errorf("append to %q: %w", name, eventstore.ErrStreamDeleted)
	}
	if !matches(str, expected) {
		from, try := uint64(0), false
		if rev, ok := expected.Revision(); ok && str != nil && rev+1 < uint64(len(str.positions)) {
			from, try = rev+1, true
		} else if expected.IsNoStream() && str != nil {
			try = true
		}
		if try {
			if res, ok := st.sameEventsLocked(str, from, events); ok {
				return res, nil
			}
		}
		return eventstore.AppendResult{}, conflict(name, expected, str)
	}
	if expected.IsAny() && str != nil {
		// With Any, EventStoreDB recognises a retry by its first event's ID.
		if rev, ok := str.revs[events[0].ID]; ok {
			if res, ok := st.sameEventsLocked(str, rev, events); ok {
				return res, nil
			}
			return eventstore.AppendResult{}, conflict(name, expected, str)
		}
	}
	if str == nil {
		str = &stream{revs: map[eventstore.EventID]uint64{}}
		st.streams[name] = str
	}
	created := st.now().UTC()
	for _, e := range events {
		pos := uint64(len(st.log)) + 1
		st.log = append(st.log, eventstore.RecordedEvent{
			Stream:   name,
			Revision: uint64(len(str.positions)),
			Position: eventstore.Position{Commit: pos, Prepare: pos},
			ID:       e.ID,
			Type:     e.Type,
			Data:     slices.Clone(e.Data),
			Created:  created,
		})
		str.revs[e.ID] = uint64(len(str.positions))
		str.positions = append(str.positions, pos)
	}
	close(st.changed)
	st.changed = make(chan struct{})
	last := st.log[len(st.log)-1]
	return eventstore.AppendResult{NextExpectedRevision: last.Revision, Position: last.Position}, nil
}

// sameEventsLocked reports whether str holds events with the IDs of events
// from revision from on, and if so what their append returned.
func (st *Storage) sameEventsLocked(str *stream, from uint64, events []eventstore.EventData) (eventstore.AppendResult, bool) {
	if from+uint64(len(events)) > uint64(len(str.positions)) {
		return eventstore.AppendResult{}, false
	}
	for i, e := range events {
		if st.log[str.positions[from+uint64(i)]-1].ID != e.ID {
			return eventstore.AppendResult{}, false
		}
	}
	last := st.log[str.positions[from+uint64(len(events))-1]-1]
	return eventstore.AppendResult{NextExpectedRevision: last.Revision, Position: last.Position}, true
}

func matches(str *stream, e eventstore.ExpectedRevision) bool {
	switch {
	case e.IsAny():
		return true
	case e.IsNoStream():
		return str == nil
	default:
		rev, _ := e.Revision()
		return str != nil && uint64(len(str.positions)) == rev+1
	}
}

func conflict(name string, expected eventstore.ExpectedRevision, str *stream) error {
	err := &eventstore.WrongExpectedRevisionError{Stream: name, Expected: expected}
	if str != nil && len(str.positions) > 0 {
		err.Actual, err.StreamExists = uint64(len(str.positions))-1, true
	}
	return err
}

func (s *Store) check(ctx context.Context, verb, name string) error {
	if s.isClosed() {
		return fmt.Errorf("%s %q: %w", verb, name, eventstore.ErrClosed)
	}
	if name == "" {
		return fmt.Errorf("%s stream: empty stream name", verb)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s %q: %w", verb, name, err)
	}
	return nil
}

// ReadStream implements eventstore.Store.
func (s *Store) ReadStream(ctx context.Context, name string, from uint64, limit int) ([]eventstore.RecordedEvent, error) {
	str, err := s.readable(ctx, name)
	if err != nil {
		return nil, err
	}
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	out := []eventstore.RecordedEvent{}
	for rev := max(from, str.before); rev < uint64(len(str.positions)) && len(out) < limit; rev++ {
		out = append(out, s.st.eventLocked(str.positions[rev]))
	}
	return out, nil
}

// ReadStreamBackward implements eventstore.Store.
func (s *Store) ReadStreamBackward(ctx context.Context, name string, limit int) ([]eventstore.RecordedEvent, error) {
	str, err := s.readable(ctx, name)
	if err != nil {
		return nil, err
	}
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	out := []eventstore.RecordedEvent{}
	for i := len(str.positions) - 1; i >= int(str.before) && len(out) < limit; i-- {
		out = append(out, s.st.eventLocked(str.positions[i]))
	}
	return out, nil
}

func (s *Store) readable(ctx context.Context, name string) (*stream, error) {
	if err := s.check(ctx, "read", name); err != nil {
		return nil, err
	}
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	str := s.st.streams[name]
	switch {
	case str == nil || len(str.positions) == 0:
		return nil, fmt.Errorf("read %q: %w", name, eventstore.ErrStreamNotFound)
	case str.deleted:
		return nil, fmt.Errorf("read %q: %w", name, eventstore.ErrStreamDeleted)
	}
	return str, nil
}

// eventLocked returns a copy of the event at pos that the caller may keep.
func (st *Storage) eventLocked(pos uint64) eventstore.RecordedEvent {
	e := st.log[pos-1]
	e.Data = slices.Clone(e.Data)
	return e
}

// Truncate implements eventstore.Store.
func (s *Store) Truncate(ctx context.Context, name string, before uint64) error {
	str, err := s.readable(ctx, name)
	if err != nil {
		return fmt.Errorf("truncate: %w", err)
	}
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	if before > uint64(len(str.positions)) {
		return fmt.Errorf("truncate %q before %d, past its last revision %d: %w", name, before, len(str.positions)-1, eventstore.ErrTruncateBeyondEnd)
	}
	str.before = max(str.before, before)
	return nil
}

// TruncatedBefore implements eventstore.Store.
func (s *Store) TruncatedBefore(ctx context.Context, name string) (uint64, error) {
	str, err := s.readable(ctx, name)
	if err != nil {
		return 0, err
	}
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	return str.before, nil
}

// Delete implements eventstore.Store: the stream is tombstoned, its events
// stay in the global order (as in EventStoreDB until a scavenge).
func (s *Store) Delete(ctx context.Context, name string, expected eventstore.ExpectedRevision) error {
	if err := s.check(ctx, "delete", name); err != nil {
		return err
	}
	st := s.st
	st.mu.Lock()
	defer st.mu.Unlock()
	str := st.streams[name]
	switch {
	case str != nil && str.deleted:
		return fmt.Errorf("delete %q: %w", name, eventstore.ErrStreamDeleted)
	case !matches(str, expected):
		return conflict(name, expected, str)
	case str == nil:
		str = &stream{}
		st.streams[name] = str
	}
	str.deleted = true
	return nil
}

// Subscribe implements eventstore.Store.
func (s *Store) Subscribe(ctx context.Context, filter eventstore.Filter, from eventstore.SubscribeFrom) (eventstore.Subscription, error) {
	if s.isClosed() {
		return nil, fmt.Errorf("subscribe: %w", eventstore.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("subscribe: %w", err)
	}
	sub := &subscription{s: s, prefix: filter.StreamPrefix, done: make(chan struct{})}
	if !from.IsStart() && !from.IsEnd() {
		sub.seen = from.Position().Commit
	}
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	head := uint64(len(s.st.log))
	if from.IsEnd() {
		sub.seen = head
	}
	if sub.seen > head {
		return nil, fmt.Errorf("subscribe after %d, past the last event at %d: %w", sub.seen, head, eventstore.ErrNotAPosition)
	}
	sub.target = head
	return sub, nil
}

type subscription struct {
	s      *Store
	prefix string
	done   chan struct{}
	once   sync.Once

	mu       sync.Mutex // one Recv at a time
	seen     uint64     // every event at or before this position was considered
	target   uint64     // the head when subscribing: the end of the catch-up
	caughtUp bool
}

func (sub *subscription) Close() error {
	sub.once.Do(func() { close(sub.done) })
	return nil
}

func (sub *subscription) selects(name string) bool {
	return strings.HasPrefix(name, sub.prefix) && (strings.HasPrefix(sub.prefix, "$") || !strings.HasPrefix(name, "$"))
}

func (sub *subscription) Recv(ctx context.Context) (eventstore.Item, error) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	st := sub.s.st
	for {
		select {
		case <-sub.s.closedCh:
			return eventstore.Item{}, fmt.Errorf("subscription: %w", eventstore.ErrClosed)
		case <-sub.done:
			return eventstore.Item{}, fmt.Errorf("subscription closed: %w", eventstore.ErrClosed)
		default:
		}
		if err := ctx.Err(); err != nil {
			return eventstore.Item{}, fmt.Errorf("subscription: %w", context.Cause(ctx))
		}
		st.mu.Lock()
		upper := uint64(len(st.log))
		if !sub.caughtUp {
			upper = sub.target
		}
		for sub.seen < upper {
			sub.seen++
			if e := st.log[sub.seen-1]; sub.selects(e.Stream) && e.Revision >= st.streams[e.Stream].before {
				e = st.eventLocked(sub.seen)
				st.mu.Unlock()
				return eventstore.Item{Event: &e}, nil
			}
		}
		changed := st.changed
		st.mu.Unlock()
		if !sub.caughtUp {
			sub.caughtUp = true
			return eventstore.Item{CaughtUp: true}, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
		case <-sub.done:
		case <-sub.s.closedCh:
		}
	}
}
