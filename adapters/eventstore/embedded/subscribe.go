package embedded

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
)

const (
	// pageSize is how many events a subscription reads per query.
	pageSize = 512
	// liveBuffer is how many committed batches the writer may queue for a
	// subscription. A subscription further behind loses them and pages from
	// the database instead, so a slow reader never holds up the writer nor
	// piles up memory.
	liveBuffer = 16
)

// liveBatch is what one commit hands to subscriptions: every event with a
// position in (from, to], or, if !complete, only the news that there are some.
type liveBatch struct {
	from, to uint64
	complete bool
	events   []eventstore.RecordedEvent
}

type subscription struct {
	s      *Store
	prefix string
	system bool // include "$" streams: only when the prefix asks for them
	live   chan *liveBatch
	done   chan struct{}
	once   sync.Once

	mu       sync.Mutex // one Recv at a time
	seen     uint64     // every event at or before this position has been considered
	target   uint64     // the head when subscribing: the end of the catch-up
	caughtUp bool
	buf      []eventstore.RecordedEvent
	next     int
}

// Subscribe follows the streams filter selects, after from: stored events
// first, then one CaughtUp item, then live ones. Subscriptions of a store
// opened read-only poll for what another process appends. Live events share
// their Data with other subscriptions: callers must not modify it.
func (s *Store) Subscribe(ctx context.Context, filter eventstore.Filter, from eventstore.SubscribeFrom) (eventstore.Subscription, error) {
	if s.closed.Load() {
		return nil, fmt.Errorf("subscribe: %w", eventstore.ErrClosed)
	}
	sub := &subscription{
		s:      s,
		prefix: filter.StreamPrefix,
		system: strings.HasPrefix(filter.StreamPrefix, "$"),
		done:   make(chan struct{}),
	}
	if !from.IsStart() && !from.IsEnd() {
		sub.seen = from.Position().Commit
	}
	if s.readOnly {
		head, err := s.readHead(ctx)
		if err != nil {
			return nil, fmt.Errorf("subscribe: %w", err)
		}
		s.advanceHead(head)
		if from.IsEnd() {
			sub.seen = head
		}
		if sub.seen > head {
			return nil, fmt.Errorf("subscribe after %d, past the last event at %d: %w", sub.seen, head, eventstore.ErrNotAPosition)
		}
		sub.target = head
		return sub, nil
	}
	// A start past the head is no position of this store (another
	// database's, say): waiting there would skip what comes until then.
	if head := s.head.Load(); sub.seen > head {
		return nil, fmt.Errorf("subscribe after %d, past the last event at %d: %w", sub.seen, head, eventstore.ErrNotAPosition)
	}
	// Register before reading the head: whatever commits after this point
	// reaches the subscription through live, or at least moves the head
	// past what it has seen.
	sub.live = make(chan *liveBatch, liveBuffer)
	s.subsMu.Lock()
	s.subs[sub] = struct{}{}
	s.nsubs.Add(1)
	s.subsMu.Unlock()
	sub.target = s.head.Load()
	if from.IsEnd() {
		sub.seen = sub.target
	}
	return sub, nil
}

func (s *Store) hasSubscribers() bool { return s.nsubs.Load() > 0 }

// publish hands a committed batch to every subscription without waiting:
// when a subscription's buffer is full the batch is dropped for it, and it
// notices the gap and reads the database.
func (s *Store) publish(b *batch) {
	if !s.hasSubscribers() {
		return
	}
	lb := &liveBatch{from: b.from, to: b.last, complete: b.live}
	if b.live {
		lb.events = b.events
		b.events = nil // handed over; the next batch starts a new slice
	}
	s.subsMu.Lock()
	defer s.subsMu.Unlock()
	for sub := range s.subs {
		select {
		case sub.live <- lb:
		default:
		}
	}
}

// advanceHead raises the known head; read-only stores learn it by polling.
func (s *Store) advanceHead(head uint64) {
	for {
		old := s.head.Load()
		if head <= old || s.head.CompareAndSwap(old, head) {
			return
		}
	}
}

func (sub *subscription) Close() error {
	sub.once.Do(func() {
		close(sub.done)
		if sub.live != nil {
			sub.s.subsMu.Lock()
			delete(sub.s.subs, sub)
			sub.s.nsubs.Add(-1)
			sub.s.subsMu.Unlock()
		}
	})
	return nil
}

func (sub *subscription) Recv(ctx context.Context) (eventstore.Item, error) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	s := sub.s
	for {
		if err := sub.stopped(ctx); err != nil {
			return eventstore.Item{}, err
		}
		if sub.next < len(sub.buf) {
			e := sub.buf[sub.next]
			sub.next++
			return eventstore.Item{Event: &e}, nil
		}
		clear(sub.buf)
		sub.buf, sub.next = sub.buf[:0], 0

		if !sub.caughtUp {
			if sub.seen < sub.target {
				if err := sub.page(ctx, sub.target); err != nil {
					return eventstore.Item{}, err
				}
				continue
			}
			sub.caughtUp = true
			return eventstore.Item{CaughtUp: true}, nil
		}

		if head := s.head.Load(); sub.seen < head {
			// Behind: take the next live batch if it joins on, else read.
			select {
			case lb := <-sub.live:
				if sub.take(lb) {
					continue
				}
			default:
			}
			if err := sub.page(ctx, head); err != nil {
				return eventstore.Item{}, err
			}
			continue
		}

		if err := sub.wait(ctx); err != nil {
			return eventstore.Item{}, err
		}
	}
}

// stopped reports why Recv must return, if it must.
func (sub *subscription) stopped(ctx context.Context) error {
	if sub.s.closed.Load() {
		return fmt.Errorf("subscription: %w", eventstore.ErrClosed)
	}
	select {
	case <-sub.done:
		return fmt.Errorf("subscription closed: %w", eventstore.ErrClosed)
	default:
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("subscription: %w", context.Cause(ctx))
	}
	return nil
}

// wait blocks until something may have been appended after seen.
func (sub *subscription) wait(ctx context.Context) error {
	s := sub.s
	if s.readOnly {
		t := time.NewTimer(s.poll)
		defer t.Stop()
		select {
		case <-t.C:
			head, err := s.readHead(ctx)
			if err != nil {
				return fmt.Errorf("subscription: %w", err)
			}
			s.advanceHead(head)
			return nil
		case <-ctx.Done():
		case <-sub.done:
		case <-s.closedCh:
		}
		return sub.stopped(ctx)
	}
	select {
	case lb := <-sub.live:
		if !sub.take(lb) {
			// The batch does not join on to what was seen (an earlier one
			// was dropped): read up to its end instead.
			return sub.page(ctx, lb.to)
		}
		return nil
	case <-ctx.Done():
	case <-sub.done:
	case <-s.closedCh:
	}
	return sub.stopped(ctx)
}

// take buffers the events of lb that come after seen, if lb joins on to
// seen; it reports false when the events between must come from the database.
func (sub *subscription) take(lb *liveBatch) bool {
	if lb.to <= sub.seen {
		return true
	}
	if !lb.complete || lb.from > sub.seen {
		return false
	}
	for i := range lb.events {
		e := &lb.events[i]
		if e.Position.Commit > sub.seen && sub.selects(e.Stream) {
			sub.buf = append(sub.buf, *e)
		}
	}
	sub.seen = lb.to
	return true
}

func (sub *subscription) selects(stream string) bool {
	return strings.HasPrefix(stream, sub.prefix) && (sub.system || !strings.HasPrefix(stream, "$"))
}

// page reads the next selected events in (seen, upper] from the database.
func (sub *subscription) page(ctx context.Context, upper uint64) error {
	s := sub.s
	rows, err := s.rd.all.QueryContext(ctx, int64(sub.seen), int64(upper), sub.prefix, sub.system, pageSize)
	if err != nil {
		return fmt.Errorf("subscription: %w", s.closedErr(err))
	}
	defer rows.Close()
	n := 0
	var last uint64
	for rows.Next() {
		var (
			e       eventstore.RecordedEvent
			pos     int64
			rev     int64
			eid     []byte
			created int64
		)
		if err := rows.Scan(&pos, &e.Stream, &rev, &eid, &e.Type, &e.Data, &created); err != nil {
			sub.buf = sub.buf[:0]
			return fmt.Errorf("subscription: %w", s.closedErr(err))
		}
		e.Revision = uint64(rev)
		e.Position = eventstore.Position{Commit: uint64(pos), Prepare: uint64(pos)}
		copy(e.ID[:], eid)
		e.Created = time.Unix(0, created).UTC()
		sub.buf = append(sub.buf, e)
		last = uint64(pos)
		n++
	}
	if err := rows.Err(); err != nil {
		sub.buf = sub.buf[:0]
		return fmt.Errorf("subscription: %w", s.closedErr(err))
	}
	if n == pageSize {
		sub.seen = last
	} else {
		// Fewer than a page: nothing else selected up to upper.
		sub.seen = upper
	}
	return nil
}
