package delivery

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// Owners says which peers this replica runs, when several replicas of one
// server share the store: each peer's outbound work (pushes, probes,
// startup and periodic pulls, rename notices) runs on its owner only. An
// engine without Owners is a single process and runs every peer.
type Owners interface {
	// Name is this replica's name, recorded in the owner terms it starts.
	Name() string
	// Owns reports whether this replica runs peer; it is cheap (no store
	// call), and may disagree with another replica's answer for a moment
	// while they learn of a change: owner terms and fences settle that.
	Owns(peer streams.PeerID) bool
	// Changed is closed at the next change of the owners.
	Changed() <-chan struct{}
}

// ownerPoll is how often a replica looks for what other replicas wrote
// that its own peers' work depends on: peers they registered and events
// they appended to the outboxes of the peers this replica runs.
const ownerPoll = 250 * time.Millisecond

// UseOwners makes the engine run only the peers owners gives this replica.
// Call it before Run.
func (e *Engine) UseOwners(owners Owners) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.owners = owners
}

// runsLocked reports whether this process runs p's outbound work now: a
// single process runs every peer, a replica those whose term it holds. The
// caller holds p.mu.
func (e *Engine) runsLocked(p *peer) bool {
	return e.owners == nil || p.owned
}

// errFenced: the peer's delivery stream moved on without this replica (its
// term ended, or another replica recorded something): no push goes out
// until the state is read again.
var errFenced = errors.New("the peer's delivery stream moved on: reread before pushing")

// fence is checked before every push in replica mode: this replica holds
// the peer's term, its records are durable, and the delivery stream ends
// where it wrote last (so no other replica claimed the peer or put it in
// queue mode since). It costs one store read per push. What a pause
// between the fence and the push lets out is at most that one push, which
// a Postbox receiver refuses by the term it carries.
func (e *Engine) fence(ctx context.Context, p *peer) error {
	if e.owners == nil {
		return nil
	}
	p.mu.Lock()
	owned := p.owned && p.loaded && p.out.Owner.Replica == e.owners.Name()
	pending := len(p.journal) > 0 || p.flushing
	next := p.deliveryNext
	p.mu.Unlock()
	if !owned {
		return errFenced
	}
	if pending {
		// Records still being written: the next push waits for them.
		_ = e.sleep(ctx, time.Millisecond)
		return errFenced
	}
	last, err := e.store.ReadStreamBackward(ctx, streams.Delivery(p.id), 1)
	var head uint64
	switch {
	case errors.Is(err, eventstore.ErrStreamNotFound):
	case err != nil:
		return fmt.Errorf("fence %s: %w", p.id, err)
	case len(last) == 1:
		head = last[0].Revision + 1
	}
	if head != next {
		p.mu.Lock()
		if p.deliveryNext == next {
			p.loaded = false
		}
		p.mu.Unlock()
		return errFenced
	}
	return nil
}

// watchOwners keeps the peers this replica runs in step with the owners:
// it claims and starts the peers it gains, stops those it loses, and
// learns of peers and outbox events other replicas wrote.
func (e *Engine) watchOwners(ctx context.Context) {
	for {
		changed := e.owners.Changed()
		e.registry.Refresh(ctx)
		e.rebalance(ctx)
		due, stop := e.after(ownerPoll)
		select {
		case <-ctx.Done():
			stop()
			return
		case <-changed:
		case <-due:
		}
		stop()
	}
}

// rebalance starts what this replica gained and stops what it lost, and
// wakes the push loops of its peers whose outboxes grew elsewhere.
func (e *Engine) rebalance(ctx context.Context) {
	var polled []*peer
	for _, entry := range e.registry.Peers() {
		p := e.peer(entry.ID)
		owns := e.owners.Owns(p.id)
		p.mu.Lock()
		switch {
		case owns && !p.owned && !p.acquiring:
			p.acquiring = true
			e.goBackground(func(ctx context.Context) { e.acquire(ctx, p) })
		case !owns && p.owned:
			e.releaseLocked(p)
			e.logger.Info("replica: peer moved to another replica", "peer", p.id)
		case owns && p.owned:
			polled = append(polled, p)
		}
		p.mu.Unlock()
	}
	for _, p := range polled {
		e.noticeRecordsElsewhere(ctx, p)
		last, err := e.store.ReadStreamBackward(ctx, streams.Outbox(p.id), 1)
		if err != nil || len(last) == 0 {
			continue
		}
		p.mu.Lock()
		if last[0].Revision >= p.out.Head {
			p.out.Stored(last[0].Revision)
			e.kickLocked(p)
		}
		p.mu.Unlock()
	}
}

// noticeRecordsElsewhere rereads p's state when another replica recorded
// something in its delivery stream: a Pull the peer made there (which
// ends this replica's resume probe, as a Pull here does), an operator's
// resume or skip there. Without it the owner would act on what it last
// read until its next fence: a probe would wait out its backoff, and events
// sent after the peer's queue emptied there would wait for that probe.
func (e *Engine) noticeRecordsElsewhere(ctx context.Context, p *peer) {
	p.mu.Lock()
	settled := p.loaded && len(p.journal) == 0 && !p.flushing
	next := p.deliveryNext
	p.mu.Unlock()
	if !settled {
		return
	}
	last, err := e.store.ReadStreamBackward(ctx, streams.Delivery(p.id), 1)
	if err != nil || len(last) == 0 || last[0].Revision+1 == next {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.loaded || p.deliveryNext != next || len(p.journal) > 0 || p.flushing {
		return // this replica wrote meanwhile, or rereads anyway
	}
	e.cancelProbeLocked(p)
	p.loaded = false
	if err := e.loadLocked(ctx, p); err != nil {
		e.logger.Warn("replica: rereading a peer's state failed", "peer", p.id, "err", err)
		return
	}
	if p.out.Owner.Replica != e.owners.Name() {
		// Another replica claimed the peer: this one stops, and claims it
		// back only if the owners still give it here (rebalance).
		e.releaseLocked(p)
		return
	}
	e.kickLocked(p)
	e.scheduleProbeLocked(p)
}

// acquire makes this replica the recorded owner of p (an OwnerTermStarted
// at the delivery stream's expected revision, unless it holds the term
// already), from p's state read afresh, then starts p's work.
func (e *Engine) acquire(ctx context.Context, p *peer) {
	self := e.owners.Name()
	backoff := domain.Backoff{First: 50 * time.Millisecond, Max: 2 * time.Second}
	for attempt := 1; ctx.Err() == nil; attempt++ {
		if !e.owners.Owns(p.id) {
			break
		}
		p.mu.Lock()
		p.loaded = false
		err := e.loadLocked(ctx, p)
		var done chan error
		if err == nil && p.out.Owner.Replica != self {
			done = e.recordLocked(p, true, domain.OwnerTermStarted{Term: p.out.Owner.Term + 1, Replica: self, Previous: p.out.Owner.Replica})
		}
		p.mu.Unlock()
		if err == nil {
			err = waitRecorded(ctx, done)
		}
		if err == nil {
			e.runPeer(p)
			return
		}
		e.logger.Warn("replica: claiming a peer failed; trying again", "peer", p.id, "attempt", attempt, "err", err)
		if e.sleep(ctx, backoff.Delay(attempt, e.jitter())) != nil {
			break
		}
	}
	p.mu.Lock()
	p.acquiring = false
	p.mu.Unlock()
}

// runPeer runs what a peer gained needs: its push loop or its probe, a
// pull now and then periodically, and a rename notice if one is due.
func (e *Engine) runPeer(p *peer) {
	p.mu.Lock()
	p.owned, p.acquiring = true, false
	term := p.out.Owner
	e.kickLocked(p)
	e.scheduleProbeLocked(p)
	p.mu.Unlock()
	e.logger.Info("replica: running peer", "peer", p.id, "term", term.Term)
	if server, ok := e.registry.ServerID(p.id); ok {
		e.goBackground(func(ctx context.Context) {
			if err := e.announcedPull(ctx, p, server); err != nil && ctx.Err() == nil {
				e.logger.Info("pull on taking a peer over failed", "peer", server.String(), "err", err)
			}
			e.schedulePull(p, e.cfg.PullInterval)
		})
	}
	e.mu.Lock()
	renames := e.renames
	e.mu.Unlock()
	if renames != nil {
		renames.Start()
	}
}

// releaseLocked stops p's work here: its push loop ends before its next
// push, and its probe and periodic pull are stopped. The caller holds p.mu.
func (e *Engine) releaseLocked(p *peer) {
	p.owned = false
	e.cancelProbeLocked(p)
	if p.pullTimer != nil {
		p.pullTimer.Stop()
		p.pullTimer = nil
	}
}

// runs reports whether this process runs peer's outbound work now.
func (e *Engine) runs(id streams.PeerID) bool {
	if e.owners == nil {
		return true
	}
	p := e.peer(id)
	p.mu.Lock()
	defer p.mu.Unlock()
	return e.runsLocked(p)
}

// pullWait is how often a push waiting for another replica's pull of its
// sender looks whether the pull is over.
const pullWait = 50 * time.Millisecond

// announcedPull is the pull of a peer this replica takes over, announced in
// the store (streams.Pulling) before it starts and when it ends, so that a
// push from the peer at another replica waits for it (awaitPullElsewhere),
// as the startup pull of a single process holds the peer's pushes. The
// announcement is best effort: if it cannot be written, the pull goes on.
func (e *Engine) announcedPull(ctx context.Context, p *peer, server domain.ServerID) error {
	self := e.owners.Name()
	announce := func(ctx context.Context, u streams.PullUnderWay) {
		data, err := e.codec.EncodePullUnderWay(u)
		if err == nil {
			_, err = e.store.Append(ctx, streams.Pulling(p.id), eventstore.Any(), data)
		}
		if err != nil && ctx.Err() == nil {
			e.logger.Warn("replica: cannot announce a pull to the other replicas; their pushes from the peer do not wait for it", "peer", p.id, "err", err)
		}
	}
	announce(ctx, streams.PullUnderWay{Replica: self, Until: e.clock.Now().Add(e.cfg.PullTimeout)})
	err := e.pullFrom(ctx, p, server)
	endCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	announce(endCtx, streams.PullUnderWay{Replica: self, Ended: true})
	return err
}

// awaitPullElsewhere holds a push from p's server while another replica
// pulls p (announcedPull), at most until that pull's timeout. Only pushes
// without sequence numbers wait (an upstream sender's): a Postbox sender's
// are kept in order by their numbers and its continuity claim.
func (e *Engine) awaitPullElsewhere(ctx context.Context, p *peer) error {
	for {
		recs, err := e.store.ReadStreamBackward(ctx, streams.Pulling(p.id), 1)
		if err != nil || len(recs) == 0 {
			return nil // nothing announced, or the store fails the push anyway
		}
		u, err := streams.DecodePullUnderWay(recs[0])
		if err != nil || u.Ended || u.Replica == e.owners.Name() || !e.clock.Now().Before(u.Until) {
			return nil // this replica's own pulls hold pushes in memory
		}
		if err := e.sleep(ctx, pullWait); err != nil {
			return fmt.Errorf("waiting for replica %s's pull of the sender: %w", u.Replica, err)
		}
	}
}
