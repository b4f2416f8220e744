package embedded

import (
	"context"
	"fmt"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
)

// Append queues the events for the writer and waits for the commit: when it
// returns without error the events are on disk. If ctx ends first the
// append may still be committed; retrying it with the same event IDs is
// safe.
func (s *Store) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	if len(events) == 0 {
		// An empty append would have no revision to report for a new
		// stream; nothing in Postbox needs one.
		return eventstore.AppendResult{}, fmt.Errorf("append to %q: no events", stream)
	}
	r := &request{ctx: ctx, stream: stream, expected: expected, events: events}
	if err := s.submit(ctx, r); err != nil {
		return eventstore.AppendResult{}, err
	}
	return r.res, nil
}

// Delete tombstones stream: its events stay in the global order (as in
// EventStoreDB until a scavenge) but the stream can be neither read nor
// appended to again.
func (s *Store) Delete(ctx context.Context, stream string, expected eventstore.ExpectedRevision) error {
	return s.submit(ctx, &request{ctx: ctx, del: true, stream: stream, expected: expected})
}

func (s *Store) submit(ctx context.Context, r *request) error {
	if s.readOnly {
		return fmt.Errorf("%s %q: %w", r.verb(), r.stream, ErrReadOnly)
	}
	if r.stream == "" {
		return fmt.Errorf("%s stream: empty stream name", r.verb())
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s %q: %w", r.verb(), r.stream, err)
	}
	r.done = make(chan struct{})
	s.queueMu.Lock()
	if s.closing {
		s.queueMu.Unlock()
		return fmt.Errorf("%s %q: %w", r.verb(), r.stream, eventstore.ErrClosed)
	}
	s.queue = append(s.queue, r)
	s.queueCond.Signal()
	s.queueMu.Unlock()

	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return fmt.Errorf("%s %q: %w (it may still be committed: retry with the same event IDs)", r.verb(), r.stream, context.Cause(ctx))
	}
}
