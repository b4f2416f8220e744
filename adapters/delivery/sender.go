package delivery

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// Send appends event to the peer's outbox and returns its sequence number.
// The event is durable before Send returns; delivery happens afterwards.
func (e *Engine) Send(ctx context.Context, to domain.ServerID, event *syncv1.Event) (uint64, error) {
	if event.GetKind() == nil {
		return 0, fmt.Errorf("%w: the event has no kind set", domain.ErrInvalidArgument)
	}
	id, err := e.registry.Register(ctx, to)
	if err != nil {
		return 0, err
	}
	data, err := e.codec.EncodeEnqueued(event)
	if err != nil {
		return 0, err
	}
	// Any: concurrent sends to one peer are ordered by the store, and the
	// revision it gives is the sequence number.
	res, err := e.store.Append(ctx, streams.Outbox(id), eventstore.Any(), data)
	if err != nil {
		return 0, fmt.Errorf("append to outbox of %s: %w", to, err)
	}
	seq := res.NextExpectedRevision
	p := e.peer(id)
	p.mu.Lock()
	p.out.Head = max(p.out.Head, seq+1)
	e.kickLocked(p)
	p.mu.Unlock()
	return seq, nil
}

// kickLocked starts p's push loop if p has something to push and none runs.
func (e *Engine) kickLocked(p *peer) {
	if p.pushing {
		return
	}
	if p.loaded {
		if _, ok := p.out.NextPush(); !ok {
			return
		}
	}
	p.pushing = true
	e.goBackground(func() { e.pushLoop(p) })
}

// pushLoop pushes p's undelivered events in order, one in flight, until
// none is left or queue mode begins; then it exits, so idle peers hold no
// goroutine.
func (e *Engine) pushLoop(p *peer) {
	ctx := e.ctx
	var ahead outboxReader
	defer func() {
		p.mu.Lock()
		p.pushing = false
		e.flushLocked(p) // idle now: no reason to hold records back
		// An enqueue may have raced the exit.
		if ctx.Err() == nil {
			e.kickLocked(p)
		}
		p.mu.Unlock()
	}()
	for ctx.Err() == nil {
		p.mu.Lock()
		if err := e.loadLocked(ctx, p); err != nil {
			p.mu.Unlock()
			e.logger.Error("loading peer state failed", "peer", p.id, "err", err)
			_ = sleep(ctx, time.Second)
			continue
		}
		seq, ok := p.out.NextPush()
		p.mu.Unlock()
		if !ok {
			return
		}
		server, known := e.registry.ServerID(p.id)
		if !known {
			e.logger.Error("push loop for an unregistered peer", "peer", p.id)
			return
		}
		event, err := ahead.read(ctx, e.store, p.id, seq)
		if err != nil {
			e.logger.Error("reading the outbox failed", "peer", p.id, "seq", seq, "err", err)
			_ = sleep(ctx, time.Second)
			continue
		}
		e.pushWithRetries(ctx, p, server, seq, event)
	}
}

// pushWithRetries makes one attempt plus the configured retries on seq,
// and records the outcome.
func (e *Engine) pushWithRetries(ctx context.Context, p *peer, server domain.ServerID, seq uint64, event *syncv1.Event) {
	for attempts := uint32(1); ctx.Err() == nil; attempts++ {
		err := e.pushOnce(ctx, server, event, seq)
		p.mu.Lock()
		if err == nil {
			records, derr := p.out.PushSucceeded(seq, attempts, false)
			if derr == nil {
				// Not waited for, and batched: the next pushes overlap its
				// sync. If it is lost in a crash, the event is pushed again
				// and the receiver drops it by its sequence number.
				e.recordLocked(p, false, records...)
			}
			p.mu.Unlock()
			return
		}
		records, derr := p.out.PushFailed(seq, attempts, e.cfg.PushRetries, err.Error())
		if derr != nil || len(records) > 0 {
			done := e.recordLocked(p, true, records...)
			if len(records) > 0 {
				e.logger.Warn("peer unreachable: queue mode", "peer", server.String(), "seq", seq, "attempts", attempts, "err", err)
				e.scheduleProbeLocked(p)
			}
			p.mu.Unlock()
			_ = waitRecorded(ctx, done)
			return
		}
		p.mu.Unlock()
		e.logger.Info("push failed; retrying", "peer", server.String(), "seq", seq, "attempt", attempts, "err", err)
		if sleep(ctx, e.cfg.PushBackoff.Delay(int(attempts), e.jitter())) != nil {
			return
		}
	}
}

// pushOnce makes one attempt, holding one of the global push slots.
func (e *Engine) pushOnce(ctx context.Context, server domain.ServerID, event *syncv1.Event, seq uint64) error {
	select {
	case e.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-e.slots }()
	ctx, cancel := context.WithTimeout(ctx, e.cfg.AttemptTimeout)
	defer cancel()
	start := time.Now()
	err := e.client.Push(ctx, server, event, seq)
	e.cfg.Observer.PushAttempted(server, time.Since(start), err)
	return err
}

// scheduleProbeLocked arms the resume probe of a peer in queue mode.
func (e *Engine) scheduleProbeLocked(p *peer) {
	if !e.cfg.ResumeProbe || !p.out.NeedsProbe() || p.probeTimer != nil || e.ctx.Err() != nil {
		return
	}
	p.probeRound++
	delay := e.cfg.ProbeBackoff.Delay(p.probeRound, e.jitter())
	p.probeTimer = time.AfterFunc(delay, func() { e.goBackground(func() { e.probe(p) }) })
}

// cancelProbeLocked stops a pending or running probe: the peer pulls.
func (e *Engine) cancelProbeLocked(p *peer) {
	if p.probeTimer != nil {
		p.probeTimer.Stop()
		p.probeTimer = nil
	}
	if p.probeCancel != nil {
		p.probeCancel()
		p.probeCancel = nil
	}
	p.probeRound = 0
}

// probe pushes the oldest undelivered event of a peer in queue mode that
// has not pulled; success returns the peer to push mode.
func (e *Engine) probe(p *peer) {
	p.mu.Lock()
	p.probeTimer = nil
	if err := e.loadLocked(e.ctx, p); err != nil || !p.out.NeedsProbe() || p.serving {
		p.mu.Unlock()
		return
	}
	seq := p.out.Delivered
	ctx, cancel := context.WithCancel(e.ctx)
	p.probeCancel = cancel
	p.mu.Unlock()
	defer cancel()

	server, ok := e.registry.ServerID(p.id)
	if !ok {
		return
	}
	var r outboxReader
	event, err := r.read(ctx, e.store, p.id, seq)
	if err == nil {
		err = e.pushOnce(ctx, server, event, seq)
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	if ctx.Err() != nil {
		return // a Pull took over
	}
	p.probeCancel = nil
	if err != nil {
		e.logger.Info("resume probe failed", "peer", server.String(), "seq", seq, "err", err)
		e.scheduleProbeLocked(p)
		return
	}
	records, derr := p.out.PushSucceeded(seq, 1, true)
	if derr != nil || p.serving {
		return
	}
	e.logger.Info("resume probe succeeded: push mode", "peer", server.String(), "seq", seq)
	p.probeRound = 0
	e.recordLocked(p, false, records...)
	e.kickLocked(p)
}

// Resume returns a peer in queue mode to push mode (an operator's call).
func (e *Engine) Resume(ctx context.Context, server domain.ServerID) error {
	id, ok := e.registry.Lookup(server)
	if !ok {
		return fmt.Errorf("%w: %s", domain.ErrUnknownPeer, server)
	}
	p := e.peer(id)
	p.mu.Lock()
	if err := e.loadLocked(ctx, p); err != nil {
		p.mu.Unlock()
		return err
	}
	e.cancelProbeLocked(p)
	done := e.recordLocked(p, true, p.out.Resume()...)
	e.kickLocked(p)
	p.mu.Unlock()
	return waitRecorded(ctx, done)
}

// outboxReader reads an outbox ahead, so a push loop costs one read per
// batch rather than per event.
type outboxReader struct {
	peer   streams.PeerID
	from   uint64
	events []*syncv1.Event
}

const readAhead = 256

func (r *outboxReader) read(ctx context.Context, s Store, id streams.PeerID, seq uint64) (*syncv1.Event, error) {
	if r.peer == id && seq >= r.from && seq < r.from+uint64(len(r.events)) {
		return r.events[seq-r.from], nil
	}
	recs, err := s.ReadStream(ctx, streams.Outbox(id), seq, readAhead)
	if err != nil {
		return nil, err
	}
	if len(recs) == 0 || recs[0].Revision != seq {
		return nil, fmt.Errorf("outbox of %s has no event %d: %w", id, seq, errMissingEvent)
	}
	r.peer, r.from, r.events = id, seq, r.events[:0]
	for _, rec := range recs {
		ev, err := streams.DecodeEnqueued(rec)
		if err != nil {
			return nil, err
		}
		r.events = append(r.events, ev)
	}
	return r.events[0], nil
}

var errMissingEvent = errors.New("missing outbox event")
