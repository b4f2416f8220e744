package delivery

import (
	"context"
	"errors"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
)

// truncater is what retention needs of the store besides Store: both
// stores have it (EventStoreDB's truncate-before).
type truncater interface {
	Truncate(ctx context.Context, stream string, before uint64) error
}

// sighting is a peer's delivered cursor as seen at a time: every event
// below it was delivered (acknowledged) at the latest then.
type sighting struct {
	at        time.Time
	delivered uint64
}

// retainLoop removes, every so often, the outbox events each peer has had
// for longer than cfg.RetainDelivered, the delivery records behind the
// peer's latest snapshot, and the peers stream's records behind the
// registry's (registry.Compact). It never removes an undelivered event: the
// outbox is cut only below a delivered cursor seen RetainDelivered ago.
// The last delivered event (which a push's claim names) and the last
// delivery record (which a snapshot is checked against) always stay.
func (e *Engine) retainLoop(ctx context.Context) {
	tr, ok := e.store.(truncater)
	if !ok {
		e.logger.Warn("this store cannot truncate streams: delivered events are kept")
		return
	}
	keep := e.cfg.RetainDelivered
	every := min(max(keep/4, 10*time.Millisecond), time.Minute)
	seen := map[streams.PeerID][]sighting{}
	for e.sleep(ctx, every) == nil {
		for _, peer := range e.registry.Peers() {
			e.retainPeer(ctx, tr, e.peer(peer.ID), seen)
		}
		// The peers stream too, behind a snapshot of the registry.
		if err := e.registry.Compact(ctx, tr); err != nil && ctx.Err() == nil {
			e.logger.Warn("compacting the peers stream failed; tried again later", "err", err)
		}
	}
}

func (e *Engine) retainPeer(ctx context.Context, tr truncater, p *peer, seen map[streams.PeerID][]sighting) {
	keep := e.cfg.RetainDelivered
	now := e.clock.Now()
	p.mu.Lock()
	if !p.loaded {
		p.mu.Unlock()
		return
	}
	delivered, given, hasGiven, head := p.out.Delivered, p.out.Given, p.out.HasGiven, p.out.Head
	snapshot, outboxCut, deliveryCut := p.snapshotWritten, p.outboxCut, p.deliveryCut
	p.mu.Unlock()

	// A few sightings per peer: a new one at most every keep/8, so the
	// outbox is cut at most about keep/8 late.
	list := seen[p.id]
	if n := len(list); n == 0 || (list[n-1].delivered != delivered && now.Sub(list[n-1].at) >= keep/8) {
		list = append(list, sighting{at: now, delivered: delivered})
	}
	before, base := uint64(0), -1
	for i, s := range list {
		if now.Sub(s.at) >= keep {
			before, base = s.delivered, i
		}
	}
	if base > 0 {
		list = list[base:]
	}
	seen[p.id] = list

	if hasGiven {
		before = min(before, given)
	}
	if head > 0 {
		before = min(before, head-1)
	}
	if before > outboxCut {
		if err := tr.Truncate(ctx, streams.Outbox(p.id), before); err != nil && !errors.Is(err, eventstore.ErrStreamNotFound) {
			e.logger.Warn("removing delivered events failed; tried again later", "peer", p.id, "err", err)
		} else {
			e.setCut(p, &p.outboxCut, before)
		}
	}
	if snapshot > 1 && snapshot-1 > deliveryCut {
		if err := tr.Truncate(ctx, streams.Delivery(p.id), snapshot-1); err != nil {
			e.logger.Warn("compacting delivery records failed; tried again later", "peer", p.id, "err", err)
		} else {
			e.setCut(p, &p.deliveryCut, snapshot-1)
		}
	}
}

func (e *Engine) setCut(p *peer, cut *uint64, to uint64) {
	p.mu.Lock()
	*cut = max(*cut, to)
	p.mu.Unlock()
}
