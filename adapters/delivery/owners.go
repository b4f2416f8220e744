package delivery

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
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

// ownerPoll is how often a replica looks at which peers it runs (in
// memory), and, on a store without subscriptions, for what other replicas
// wrote (peers, renames, outbox events, delivery records).
const ownerPoll = 250 * time.Millisecond

// What other replicas append to the outboxes and delivery streams of the
// peers this replica runs, and to the peers stream, reaches it through
// three store subscriptions (the outbox- and delivery- prefixes and the
// peers stream, from the end), at once and at no cost while nothing is
// written; the peers stream is also reread every sweepEvery. A slow sweep rereads the ends of its peers'
// streams anyway, after each (re)subscription and then every sweepEvery,
// or sweepPace per peer if that is longer (at most about 100 reads a
// second however many peers), so that a missed notification cannot stall
// a peer for long.
const (
	sweepEvery = 10 * time.Second
	sweepPace  = 20 * time.Millisecond
	// recheckDelay: a delivery stream's news that arrived while this
	// replica's own records for the peer were being written is looked at
	// again after it, to tell its own records from another replica's.
	recheckDelay = 20 * time.Millisecond
)

// watchTuning overrides the watch's timing (tests); zero values keep the
// defaults.
type watchTuning struct {
	sweepEvery time.Duration
	// off: no news and no sweeps, for tests of what else rereads a peer.
	off bool
}

// subscriber is a store that can follow streams (every store Postbox
// runs on; without it, a replica sweeps at every ownerPoll instead).
type subscriber interface {
	Subscribe(ctx context.Context, filter eventstore.Filter, from eventstore.SubscribeFrom) (eventstore.Subscription, error)
}

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

// ownersRefresher is Owners that can read the other replicas' heartbeats
// at once (adapters/replicas does), unless a read is under way already.
type ownersRefresher interface {
	RefreshIfIdle(ctx context.Context) error
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
	w := &streamWatch{e: e, resweep: make(chan struct{}, 1), rechecks: map[*peer]uint64{}, recheckDue: make(chan struct{}, 1),
		peersNews: make(chan struct{}, 1)}
	sweepInterval := sweepEvery
	if e.watch.sweepEvery > 0 {
		sweepInterval = e.watch.sweepEvery
	}
	// The peers stream is read again when it moves (another replica
	// registered a peer, or recorded a rename), and anyway every
	// sweepInterval; without subscriptions, every ownerPoll.
	peersEvery := sweepInterval
	sub, ok := e.store.(subscriber)
	switch {
	case e.watch.off:
		peersEvery = ownerPoll
	case ok:
		for _, prefix := range []string{streams.OutboxPrefix, streams.DeliveryPrefix, streams.Peers} {
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				w.follow(ctx, sub, prefix)
			}()
		}
	default:
		sweepInterval, peersEvery = ownerPoll, ownerPoll
		w.sweepNow()
	}
	if !e.watch.off {
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			w.sweepLoop(ctx, sweepInterval)
		}()
	}
	// Ownership is looked at again every ownerPoll (in memory: the
	// owners' view and the registry); the peers stream is read again only
	// when it moved, or every peersEvery.
	refresh, lastRead := true, e.clock.Now()
	for {
		changed := e.owners.Changed()
		if refresh {
			e.registry.Refresh(ctx)
			refresh, lastRead = false, e.clock.Now()
		}
		if renames := e.renamesOf(); renames != nil {
			renames.followOwnID()
		}
		e.rebalance()
		due, stop := e.after(ownerPoll)
		select {
		case <-ctx.Done():
			stop()
			return
		case <-changed:
		case <-w.peersNews:
			refresh = true
		case <-due:
		}
		stop()
		if e.clock.Now().Sub(lastRead) >= peersEvery {
			refresh = true
		}
	}
}

// rebalance starts what this replica gained and stops what it lost.
func (e *Engine) rebalance() {
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
		}
		p.mu.Unlock()
	}
}

// ownedPeers returns the peers this replica runs now.
func (e *Engine) ownedPeers() []*peer {
	e.mu.Lock()
	all := make([]*peer, 0, len(e.peers))
	for _, p := range e.peers {
		all = append(all, p)
	}
	e.mu.Unlock()
	owned := all[:0]
	for _, p := range all {
		p.mu.Lock()
		if p.owned {
			owned = append(owned, p)
		}
		p.mu.Unlock()
	}
	return owned
}

// knownPeer returns the engine's state of id, if it has any.
func (e *Engine) knownPeer(id streams.PeerID) *peer {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.peers[id]
}

// streamWatch brings what other replicas append to the streams of this
// replica's peers to their owner: news from the subscriptions, and sweeps.
type streamWatch struct {
	e       *Engine
	resweep chan struct{} // a sweep is wanted now; capacity 1

	// peersNews: the peers stream moved, or its news may have been
	// missed; capacity 1.
	peersNews chan struct{}

	mu         sync.Mutex
	rechecks   map[*peer]uint64 // delivery stream ends to look at again
	recheckDue chan struct{}    // rechecks has entries; capacity 1
}

func (w *streamWatch) peersMoved() {
	select {
	case w.peersNews <- struct{}{}:
	default:
	}
}

func (w *streamWatch) sweepNow() {
	select {
	case w.resweep <- struct{}{}:
	default:
	}
}

// follow subscribes to the streams starting with prefix from their end and
// hands each appended event's stream and revision to notice, until ctx
// ends; it subscribes again after a failure, and asks for a sweep after
// each subscription starts (what was appended before it is not news).
func (w *streamWatch) follow(ctx context.Context, store subscriber, prefix string) {
	e := w.e
	backoff := domain.Backoff{First: 100 * time.Millisecond, Max: 5 * time.Second}
	for attempt := 1; ctx.Err() == nil; attempt++ {
		sub, err := store.Subscribe(ctx, eventstore.Filter{StreamPrefix: prefix}, eventstore.FromEnd())
		if err == nil {
			w.sweepNow()
			w.peersMoved()
			for {
				var it eventstore.Item
				it, err = sub.Recv(ctx)
				if err != nil {
					break
				}
				if it.Event != nil {
					attempt = 0
					w.notice(ctx, it.Event.Stream, it.Event.Revision)
				}
			}
			_ = sub.Close()
		}
		if ctx.Err() != nil {
			return
		}
		e.logger.Warn("replica: following other replicas' appends failed; sweeping meanwhile", "streams", prefix+"*", "err", err)
		w.sweepNow()
		w.peersMoved()
		if e.sleep(ctx, backoff.Delay(max(attempt, 1), e.jitterOf("follow", uint64(max(attempt, 1)), prefix))) != nil {
			return
		}
	}
}

// notice takes the news that stream reached revision rev.
func (w *streamWatch) notice(ctx context.Context, stream string, rev uint64) {
	e := w.e
	if stream == streams.Peers {
		w.peersMoved()
		return
	}
	if id, ok := strings.CutPrefix(stream, streams.OutboxPrefix); ok {
		if p := e.knownPeer(streams.PeerID(id)); p != nil {
			e.outboxGrew(p, rev)
		}
		return
	}
	if id, ok := strings.CutPrefix(stream, streams.DeliveryPrefix); ok {
		if p := e.knownPeer(streams.PeerID(id)); p != nil && e.deliveryMoved(ctx, p, rev+1) {
			w.recheck(p, rev+1)
		}
	}
}

// recheck keeps end to look at again after recheckDelay.
func (w *streamWatch) recheck(p *peer, end uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.rechecks[p] = max(w.rechecks[p], end)
	select {
	case w.recheckDue <- struct{}{}:
	default:
	}
}

// sweepLoop sweeps every interval (longer with many peers, see sweepPace)
// and when asked, and looks again at the delivery news kept for later.
// The next sweep's time is kept across those looks, so that steady news
// does not put the sweeps off.
func (w *streamWatch) sweepLoop(ctx context.Context, interval time.Duration) {
	e := w.e
	next := e.clock.Now().Add(interval)
	for {
		due, stop := e.after(max(next.Sub(e.clock.Now()), 0))
		var sweep bool
		select {
		case <-ctx.Done():
			stop()
			return
		case <-due:
			sweep = true
		case <-w.resweep:
			sweep = true
		case <-w.recheckDue:
		}
		stop()
		if !sweep {
			if e.sleep(ctx, recheckDelay) != nil {
				return
			}
			w.mu.Lock()
			rechecks := w.rechecks
			w.rechecks = map[*peer]uint64{}
			w.mu.Unlock()
			for p, end := range rechecks {
				if e.deliveryMoved(ctx, p, end) {
					w.recheck(p, end)
				}
			}
			continue
		}
		owned := e.ownedPeers()
		for _, p := range owned {
			if ctx.Err() != nil {
				return
			}
			e.sweepPeer(ctx, p)
		}
		next = e.clock.Now().Add(max(interval, time.Duration(len(owned))*sweepPace))
	}
}

// sweepPeer rereads the ends of p's outbox and delivery stream, in case
// their news was missed.
func (e *Engine) sweepPeer(ctx context.Context, p *peer) {
	e.noticeRecordsElsewhere(ctx, p)
	last, err := e.store.ReadStreamBackward(ctx, streams.Outbox(p.id), 1)
	if err != nil || len(last) == 0 {
		return
	}
	e.outboxGrew(p, last[0].Revision)
}

// outboxGrew wakes p's push loop if its outbox reached rev, appended by
// another replica (this one's own Sends raise the head themselves).
func (e *Engine) outboxGrew(p *peer, rev uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.owned && rev >= p.out.Head {
		p.out.Stored(rev)
		e.kickLocked(p)
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
	e.deliveryMoved(ctx, p, last[0].Revision+1)
}

// deliveryMoved takes the news that p's delivery stream holds end records:
// if that is more than this replica wrote (or is writing), another replica
// recorded something, and p's state is read again. It reports true when
// that must wait for this replica's own records being written; then the
// news must be looked at again after them.
func (e *Engine) deliveryMoved(ctx context.Context, p *peer, end uint64) (later bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	// Records up to deliveryNext+inFlight are this replica's; if its
	// append under way fails, the flush has the state reread anyway.
	if !p.owned || !p.loaded || end <= p.deliveryNext+p.inFlight {
		return false
	}
	if len(p.journal) > 0 || p.flushing {
		return true
	}
	e.cancelProbeLocked(p)
	p.loaded = false
	if err := e.loadLocked(ctx, p); err != nil {
		e.logger.Warn("replica: rereading a peer's state failed", "peer", p.id, "err", err)
		return false
	}
	if p.out.Owner.Replica != e.owners.Name() {
		// Another replica claimed the peer: this one stops, and claims it
		// back only if the owners still give it here (rebalance).
		e.releaseLocked(p)
		return false
	}
	e.kickLocked(p)
	e.scheduleProbeLocked(p)
	return false
}

// acquire makes this replica the recorded owner of p (an OwnerTermStarted
// at the delivery stream's expected revision, unless it holds the term
// already), from p's state read afresh, then starts p's work.
func (e *Engine) acquire(ctx context.Context, p *peer) {
	self := e.owners.Name()
	backoff := domain.Backoff{First: 50 * time.Millisecond, Max: 2 * time.Second}
	refresher, canRefresh := e.owners.(ownersRefresher)
	for attempt := 1; ctx.Err() == nil; attempt++ {
		if !e.owners.Owns(p.id) {
			break
		}
		p.mu.Lock()
		p.loaded = false
		err := e.loadLocked(ctx, p)
		if err == nil && canRefresh && p.out.Owner.Replica != self && p.out.Owner.Replica != "" {
			// Another replica holds the peer's term: this one may only
			// not have read its heartbeat yet (it started a moment ago),
			// and claiming now would start a tug of war that lasts until
			// it has. Read the heartbeats first, once.
			p.mu.Unlock()
			canRefresh = false
			if rerr := refresher.RefreshIfIdle(ctx); rerr != nil {
				e.logger.Warn("replica: reading heartbeats before claiming a peer failed", "peer", p.id, "err", rerr)
			}
			attempt--
			continue
		}
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
		if e.sleep(ctx, backoff.Delay(attempt, e.jitterOf("claim", uint64(attempt), string(p.id)))) != nil {
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

// pullPeer pulls p: as a replica, announced (announcedPull).
func (e *Engine) pullPeer(ctx context.Context, p *peer, server domain.ServerID) error {
	if e.owners == nil {
		return e.pullFrom(ctx, p, server)
	}
	return e.announcedPull(ctx, p, server)
}

// announcedPull is a replica's pull of a peer (on taking it over, periodic,
// or asked for by an operator), announced in the store (streams.Pulling)
// before it starts and when it ends, so that a push from the peer at
// another replica waits for it (awaitPullElsewhere), as a single process
// holds the peer's pushes during its pulls. Only the last announcement is
// read: each end truncates the stream before it, so a pull every minute
// keeps one record per peer. The announcement is best effort: if it cannot
// be written, the pull goes on.
func (e *Engine) announcedPull(ctx context.Context, p *peer, server domain.ServerID) error {
	self := e.owners.Name()
	announce := func(ctx context.Context, u streams.PullUnderWay) {
		data, err := e.codec.EncodePullUnderWay(u)
		var res eventstore.AppendResult
		if err == nil {
			res, err = e.store.Append(ctx, streams.Pulling(p.id), eventstore.Any(), data)
		}
		if err != nil && ctx.Err() == nil {
			e.logger.Warn("replica: cannot announce a pull to the other replicas; their pushes from the peer do not wait for it", "peer", p.id, "err", err)
		}
		if t, ok := e.store.(truncater); ok && err == nil && u.Ended && res.NextExpectedRevision > 0 {
			if err := t.Truncate(ctx, streams.Pulling(p.id), res.NextExpectedRevision); err != nil && ctx.Err() == nil {
				e.logger.Info("replica: dropping a peer's older pull announcements failed", "peer", p.id, "err", err)
			}
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

// followOwnID takes up a rename of this server that another replica
// recorded (postbox rename there): the new ID becomes this replica's too,
// as an audience of tokens and in what it says of itself (the IDs it signs
// with come from the registry already), and the peers this replica runs
// are told of it.
func (r *Renames) followOwnID() {
	ids := r.registry.OwnIDs()
	current := r.identity.Current()
	if len(ids) == 0 || ids[len(ids)-1].ID == current {
		return
	}
	at := slices.IndexFunc(ids, func(id domain.OwnID) bool { return id.ID == current })
	for _, next := range ids[at+1:] {
		r.identity.Rename(next.ID, next.Since)
	}
	r.logger.Info("this server was renamed at another replica", "old", current.String(), "new", r.identity.Current().String())
	r.Start()
}

// recordNotified records that peer accepted this server's ID id. A
// conflict with another replica's write to the peers stream (after which
// the registry has reread it) is tried again, rather than telling the peer
// again.
func (r *Renames) recordNotified(ctx context.Context, peer streams.PeerID, id domain.ServerID) error {
	var err error
	for range 3 {
		if err = r.registry.RecordNotified(ctx, peer, id); !errors.Is(err, eventstore.ErrWrongExpectedRevision) {
			break
		}
	}
	if err == nil {
		// The registry no longer signs as a corrected ID toward peer
		// (RecordNotified drops it), so where that one was goes too.
		r.mu.Lock()
		delete(r.signedAt, peer)
		r.mu.Unlock()
	}
	return err
}

// renameOwn records this server's rename to id, as registry.RenameOwn
// does, trying again after a conflict with another replica's write to the
// peers stream (the registry has reread it by then).
func (r *Renames) renameOwn(ctx context.Context, id domain.ServerID, at time.Time) (renamed bool, err error) {
	for range 3 {
		if renamed, err = r.registry.RenameOwn(ctx, id, at); !errors.Is(err, eventstore.ErrWrongExpectedRevision) {
			return renamed, err
		}
	}
	return renamed, err
}
