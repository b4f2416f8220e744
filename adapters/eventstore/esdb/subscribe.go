package esdb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
)

// tombstoneType is the type of the event a hard delete writes into the
// deleted stream; it is the store's marker, not an event Postbox wrote.
const tombstoneType = "$streamDeleted"

// headScan bounds the backwards read of $all that looks for the last event
// a subscription will deliver.
const (
	headPage  = 64
	headPages = 16
)

// Subscribe follows the streams filter selects, from after from: the
// history, one CaughtUp item, then live events. It resubscribes after a
// drop, from the last event delivered, until ctx ends or the subscription or
// store is closed.
func (s *Store) Subscribe(ctx context.Context, filter eventstore.Filter, from eventstore.SubscribeFrom) (eventstore.Subscription, error) {
	untrack, err := s.track()
	if err != nil {
		return nil, fmt.Errorf("esdb: subscribe: %w", err)
	}
	sub := &subscription{
		store:  s,
		filter: filter,
		items:  make(chan eventstore.Item),
		ended:  make(chan struct{}),
	}
	ctx, sub.cancel = s.bind(ctx)
	sub.fromEnd = from.IsEnd()
	if !from.IsStart() && !from.IsEnd() && from.Position() != (eventstore.Position{}) {
		p := from.Position()
		sub.last = &p
	}
	first, err := sub.start(ctx)
	if err != nil {
		sub.cancel()
		untrack()
		return nil, fmt.Errorf("esdb: subscribe: %w", err)
	}
	go func() {
		defer untrack()
		defer sub.cancel()
		sub.run(ctx, first)
	}()
	return sub, nil
}

// start reads the head, then subscribes. The head is read first so that
// every event at or before it is history and every later one live.
func (sub *subscription) start(ctx context.Context) (*esdb.Subscription, error) {
	s := sub.store
	ref, err := s.acquire()
	if err != nil {
		return nil, err
	}
	defer s.release(ref)
	if sub.fromEnd {
		// After the last event of $all, whatever its stream: a position
		// of an event, which every server version starts after exactly.
		// Nothing matching the filter comes before it, so this is caught up.
		evs, err := s.readAllBackward(ctx, ref, esdb.End{}, 1)
		if err != nil {
			return nil, s.mapError(ctx, ref, err)
		}
		if len(evs) == 1 {
			p := eventstore.Position{Commit: evs[0].Position.Commit, Prepare: evs[0].Position.Prepare}
			sub.last = &p
		}
		sub.head = sub.last
		cs, err := sub.open(ctx, ref)
		if err != nil {
			return nil, s.mapError(ctx, ref, err)
		}
		return cs, nil
	}
	if sub.last != nil {
		if err := s.checkStart(ctx, ref, *sub.last); err != nil {
			return nil, err
		}
	}
	head, err := s.findHead(ctx, ref, sub.filter)
	if err != nil {
		return nil, s.mapError(ctx, ref, err)
	}
	sub.head = head
	cs, err := sub.open(ctx, ref)
	if err != nil {
		return nil, s.mapError(ctx, ref, err)
	}
	return cs, nil
}

// errNotAPosition refuses a start position that is no event's.
var errNotAPosition = eventstore.ErrNotAPosition

// checkStart makes sure a subscription starts from a record's own
// position. From any other position, servers up to 23.10 skip the first
// event after it (they read one record at or after the position and start
// after that), and servers from 24.2 refuse it; from a record's own
// position, both deliver exactly what follows it.
func (s *Store) checkStart(ctx context.Context, ref *clientRef, p eventstore.Position) error {
	var first []*esdb.RecordedEvent
	err := guard(func() error {
		rs, err := ref.client.ReadAll(leaderOnly(ctx), esdb.ReadAllOptions{
			Direction: esdb.Forwards,
			From:      esdb.Position{Commit: p.Commit, Prepare: p.Prepare},
			Deadline:  callDeadline(ctx),
		}, 1)
		if err != nil {
			return err
		}
		defer rs.Close()
		ev, err := rs.Recv()
		if err != nil {
			return err
		}
		if e := ev.OriginalEvent(); e != nil {
			first = append(first, e)
		}
		return nil
	})
	if err != nil && !errors.Is(err, io.EOF) {
		if strings.Contains(err.Error(), "invalid position") {
			return fmt.Errorf("start after %d/%d: %w", p.Commit, p.Prepare, errNotAPosition)
		}
		return s.mapError(ctx, ref, err)
	}
	if len(first) == 0 || first[0].Position.Commit != p.Commit || first[0].Position.Prepare != p.Prepare {
		return fmt.Errorf("start after %d/%d: %w", p.Commit, p.Prepare, errNotAPosition)
	}
	return nil
}

// matches mirrors the server-side filter the subscription asks for.
func matches(filter eventstore.Filter, stream string) bool {
	if filter.StreamPrefix != "" {
		return strings.HasPrefix(stream, filter.StreamPrefix)
	}
	return !strings.HasPrefix(stream, "$")
}

func clientFilter(filter eventstore.Filter) *esdb.SubscriptionFilter {
	if filter.StreamPrefix != "" {
		return &esdb.SubscriptionFilter{Type: esdb.StreamFilterType, Prefixes: []string{filter.StreamPrefix}}
	}
	// Every stream whose name does not start with "$". (The client's
	// ExcludeSystemEventsFilter looks at event types instead.)
	return &esdb.SubscriptionFilter{Type: esdb.StreamFilterType, Regex: "^[^$]"}
}

// findHead returns the position of the last event in $all the filter
// selects, or nil if there is none. Servers before 23.10 send no caught-up
// signal, and a filtered subscription reports no progress over events it
// skips, so the head must be an event it will deliver. The scan is bounded:
// past it, the head of $all stands in, and the server's caught-up signal or
// checkpoints report passing it.
func (s *Store) findHead(ctx context.Context, ref *clientRef, filter eventstore.Filter) (*eventstore.Position, error) {
	var from esdb.AllPosition = esdb.End{}
	var top *eventstore.Position
	for range headPages {
		evs, err := s.readAllBackward(ctx, ref, from, headPage)
		if err != nil {
			return nil, err
		}
		for _, e := range evs {
			p := eventstore.Position{Commit: e.Position.Commit, Prepare: e.Position.Prepare}
			if top == nil {
				top = &p
			}
			if matches(filter, e.StreamID) {
				return &p, nil
			}
		}
		if len(evs) < headPage {
			return nil, nil
		}
		last := evs[len(evs)-1].Position
		from = esdb.Position{Commit: last.Commit, Prepare: last.Prepare}
	}
	return top, nil
}

type subscription struct {
	store  *Store
	filter eventstore.Filter
	head   *eventstore.Position
	cancel context.CancelFunc
	// fromEnd: start after the last event stored when subscribing.
	fromEnd bool

	// Owned by run.
	last     *eventstore.Position
	caughtUp bool
	tbs      truncationPoints

	items chan eventstore.Item
	ended chan struct{}
	// err is why run ended; set before ended is closed.
	err     error
	closing atomic.Bool
}

// Recv returns the next item.
func (sub *subscription) Recv(ctx context.Context) (eventstore.Item, error) {
	select {
	case it := <-sub.items:
		return it, nil
	case <-sub.ended:
		return eventstore.Item{}, sub.err
	case <-ctx.Done():
		return eventstore.Item{}, ctx.Err()
	}
}

// Close ends the subscription and waits for it to stop.
func (sub *subscription) Close() error {
	sub.closing.Store(true)
	sub.cancel()
	<-sub.ended
	return nil
}

// open subscribes to $all from the last delivered position.
func (sub *subscription) open(ctx context.Context, ref *clientRef) (*esdb.Subscription, error) {
	// The client's default start is the END; always give one.
	var start esdb.AllPosition = esdb.Start{}
	if sub.last != nil {
		start = esdb.Position{Commit: sub.last.Commit, Prepare: sub.last.Prepare}
	}
	var cs *esdb.Subscription
	err := guard(func() (err error) {
		cs, err = ref.client.SubscribeToAll(ctx, esdb.SubscribeToAllOptions{
			From:               start,
			Filter:             clientFilter(sub.filter),
			MaxSearchWindow:    32,
			CheckpointInterval: 1,
		})
		return err
	})
	return cs, err
}

// reopen subscribes again on the current client.
func (sub *subscription) reopen(ctx context.Context) (*esdb.Subscription, error) {
	s := sub.store
	// Look the truncation points up afresh: they may have risen meanwhile.
	sub.tbs = nil
	ref, err := s.acquire()
	if err != nil {
		return nil, err
	}
	defer s.release(ref)
	cs, err := sub.open(ctx, ref)
	if err != nil {
		return nil, s.mapError(ctx, ref, err)
	}
	return cs, nil
}

// run delivers items until ctx ends, resubscribing after drops.
func (sub *subscription) run(ctx context.Context, cs *esdb.Subscription) {
	var wait backoff
	err := func() error {
		if sub.head == nil || (sub.last != nil && !sub.last.Less(*sub.head)) {
			if err := sub.deliverCaughtUp(ctx); err != nil {
				return err
			}
		}
		for {
			delivered, err := sub.drain(ctx, cs)
			_ = guard(cs.Close)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if permanent(err) {
				return err
			}
			if delivered {
				wait.reset()
			}
			sub.store.logger.Warn("subscription dropped; resubscribing", "err", err, "after", sub.lastString())
			for {
				if err := wait.wait(ctx); err != nil {
					return err
				}
				cs, err = sub.reopen(ctx)
				if err == nil {
					break
				}
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if permanent(err) {
					return err
				}
				sub.store.logger.Warn("resubscribing failed; retrying", "err", err)
			}
		}
	}()
	sub.finish(ctx, err)
}

func (sub *subscription) lastString() string {
	if sub.last == nil {
		return "start"
	}
	return fmt.Sprintf("%d/%d", sub.last.Commit, sub.last.Prepare)
}

// finish records why the subscription ended, in the port's terms.
func (sub *subscription) finish(ctx context.Context, err error) {
	switch {
	case sub.store.isClosed():
		sub.err = fmt.Errorf("esdb: subscription: %w", eventstore.ErrClosed)
	case ctx.Err() != nil:
		// Closed by Close, or the Subscribe context ended.
		if sub.closing.Load() {
			sub.err = fmt.Errorf("esdb: subscription closed: %w", eventstore.ErrClosed)
		} else {
			sub.err = fmt.Errorf("esdb: subscription: %w", context.Cause(ctx))
		}
	default:
		sub.err = fmt.Errorf("esdb: subscription: %w", err)
	}
	close(sub.ended)
}

// drain delivers what one client subscription yields until it drops. It
// reports whether it delivered anything.
func (sub *subscription) drain(ctx context.Context, cs *esdb.Subscription) (delivered bool, err error) {
	for {
		var ev *esdb.SubscriptionEvent
		if err := guard(func() error { ev = cs.Recv(); return nil }); err != nil {
			return delivered, err
		}
		switch {
		case ev == nil:
			return delivered, errors.New("empty subscription event")
		case ev.SubscriptionDropped != nil:
			return delivered, ev.SubscriptionDropped.Error
		case ev.EventAppeared != nil:
			e := ev.EventAppeared.OriginalEvent()
			if e == nil {
				continue
			}
			rec := fromClientEvent(e)
			if sub.last != nil && !sub.last.Less(rec.Position) {
				// Already delivered: a resubscription overlapped.
				continue
			}
			if e.EventType != tombstoneType {
				hidden, err := sub.hidden(ctx, &rec)
				if err != nil {
					return delivered, err
				}
				if !hidden {
					if err := sub.deliver(ctx, eventstore.Item{Event: &rec}); err != nil {
						return delivered, err
					}
					delivered = true
				}
			}
			sub.last = &rec.Position
			if !sub.caughtUp && !rec.Position.Less(*sub.head) {
				if err := sub.deliverCaughtUp(ctx); err != nil {
					return delivered, err
				}
			}
		case ev.CheckPointReached != nil:
			p := eventstore.Position{Commit: ev.CheckPointReached.Commit, Prepare: ev.CheckPointReached.Prepare}
			if !sub.caughtUp && !p.Less(*sub.head) {
				if err := sub.deliverCaughtUp(ctx); err != nil {
					return delivered, err
				}
			}
		case ev.CaughtUp != nil:
			// Servers from 23.10 say so themselves; it may repeat after a
			// resubscription and is delivered once.
			if err := sub.deliverCaughtUp(ctx); err != nil {
				return delivered, err
			}
		}
	}
}

func (sub *subscription) deliverCaughtUp(ctx context.Context) error {
	if sub.caughtUp {
		return nil
	}
	if err := sub.deliver(ctx, eventstore.Item{CaughtUp: true}); err != nil {
		return err
	}
	sub.caughtUp = true
	return nil
}

func (sub *subscription) deliver(ctx context.Context, it eventstore.Item) error {
	select {
	case sub.items <- it:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// permanent reports errors that resubscribing cannot cure.
func permanent(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, eventstore.ErrClosed) {
		return true
	}
	var ce *esdb.Error
	if errors.As(err, &ce) {
		switch ce.Code() {
		case esdb.ErrorCodeAccessDenied, esdb.ErrorCodeUnauthenticated, esdb.ErrorCodeUnsupportedFeature:
			return true
		}
	}
	switch status.Code(err) {
	case codes.PermissionDenied, codes.Unauthenticated, codes.InvalidArgument, codes.Unimplemented:
		return true
	}
	return false
}
