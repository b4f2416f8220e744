package delivery

import (
	"context"
	"time"

	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// A peer draining its queue by Pull asks for the next reply only after it
// has appended the last one, so the two servers would take turns: the
// store read of each reply and the peer's append of the one before it
// never overlap. A read ahead is the next reply, read while the peer
// appends; its Pull takes it if it asks from where it begins.

// maxPullsAhead bounds the replies held in memory at once (each up to
// PullReplyMaxBytes), whatever the number of peers.
const maxPullsAhead = 8

// pullAheadTTL is how long a read ahead waits for its Pull before its
// memory is given back.
const pullAheadTTL = 30 * time.Second

type pullAhead struct {
	from   uint64        // the outbox revision it begins at
	done   chan struct{} // closed once events, ids and err are set
	events []*syncv1.Event
	lastID []byte
	err    error
	expiry domain.Timer
}

// readAheadLocked starts reading p's next reply, from from, when more
// events wait there, memory allows, and none is being read. p.mu is held.
func (e *Engine) readAheadLocked(p *peer, from uint64) {
	if p.ahead != nil || from >= p.out.Head {
		return
	}
	select {
	case e.aheadSlots <- struct{}{}:
	default:
		return
	}
	a := &pullAhead{from: from, done: make(chan struct{})}
	p.ahead = a
	n := p.out.Head - from
	e.goBackground(func(ctx context.Context) {
		a.events, a.lastID, a.err = e.readBatch(ctx, p.id, from, n)
		close(a.done)
	})
	a.expiry = e.clock.AfterFunc(pullAheadTTL, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.ahead == a {
			e.dropAheadLocked(p)
		}
	})
}

// dropAheadLocked forgets p's read ahead, if any. p.mu is held.
func (e *Engine) dropAheadLocked(p *peer) {
	if p.ahead == nil {
		return
	}
	p.ahead.expiry.Stop()
	p.ahead = nil
	<-e.aheadSlots
}

// takeAheadLocked returns p's read ahead if it begins at from, and forgets
// it either way. p.mu is held.
func (e *Engine) takeAheadLocked(p *peer, from uint64) *pullAhead {
	a := p.ahead
	e.dropAheadLocked(p)
	if a == nil || a.from != from {
		return nil
	}
	return a
}

// readReply reads the reply of up to n events from from: the read ahead a,
// when it succeeded and fits, or the store.
func (e *Engine) readReply(ctx context.Context, p *peer, a *pullAhead, from, n uint64) ([]*syncv1.Event, []byte, error) {
	if a != nil {
		select {
		case <-a.done:
			if a.err == nil && len(a.events) > 0 && uint64(len(a.events)) <= n {
				return a.events, a.lastID, nil
			}
		case <-e.stopped:
			// Run ends: the read ahead may never have started.
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
	return e.readBatch(ctx, p.id, from, n)
}
