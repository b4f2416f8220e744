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

// AppendStreams appends to several streams in one transaction: the
// requests enter the writer's queue together, and the writer never splits
// them across commits (unless a statement fails, when it retries every
// request of the batch on its own). Each part is answered as its own
// Append would be.
func (s *Store) AppendStreams(ctx context.Context, parts []eventstore.StreamAppend) ([]eventstore.AppendResult, []error) {
	res := make([]eventstore.AppendResult, len(parts))
	errs := make([]error, len(parts))
	reqs := make([]*request, 0, len(parts))
	at := make([]int, 0, len(parts))
	for i, p := range parts {
		r := &request{ctx: ctx, stream: p.Stream, expected: p.Expected, events: p.Events, done: make(chan struct{})}
		switch {
		case len(p.Events) == 0:
			errs[i] = fmt.Errorf("append to %q: no events", p.Stream)
		case s.readOnly:
			errs[i] = fmt.Errorf("append to %q: %w", p.Stream, ErrReadOnly)
		case p.Stream == "":
			errs[i] = fmt.Errorf("append to stream: empty stream name")
		case ctx.Err() != nil:
			errs[i] = fmt.Errorf("append to %q: %w", p.Stream, ctx.Err())
		default:
			reqs = append(reqs, r)
			at = append(at, i)
		}
	}
	for i, r := range reqs {
		r.groupRest = len(reqs) - 1 - i
	}
	s.queueMu.Lock()
	if s.closing {
		s.queueMu.Unlock()
		for _, i := range at {
			errs[i] = fmt.Errorf("append to %q: %w", parts[i].Stream, eventstore.ErrClosed)
		}
		return res, errs
	}
	s.queue = append(s.queue, reqs...)
	s.queueCond.Signal()
	s.queueMu.Unlock()
	for n, r := range reqs {
		i := at[n]
		select {
		case <-r.done:
			res[i], errs[i] = r.res, r.err
		case <-ctx.Done():
			errs[i] = fmt.Errorf("append to %q: %w (it may still be committed: retry with the same event IDs)", r.stream, context.Cause(ctx))
		}
	}
	return res, errs
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
