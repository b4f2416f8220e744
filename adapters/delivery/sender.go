package delivery

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/seqext"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// Send appends event to the peer's outbox and returns its sequence number.
// The event is durable before Send returns; delivery happens afterwards.
func (e *Engine) Send(ctx context.Context, to domain.ServerID, event *syncv1.Event) (uint64, error) {
	return e.SendKeyed(ctx, to, event, "")
}

// SendKeyed is Send with an idempotency key (none if empty): a send
// repeated with the same key, peer and event within the window returns the
// first one's sequence number and stores nothing.
func (e *Engine) SendKeyed(ctx context.Context, to domain.ServerID, event *syncv1.Event, key string) (uint64, error) {
	if err := e.awaitStart(ctx); err != nil {
		return 0, err
	}
	if key != "" {
		return e.sendKeyed(ctx, to, event, key)
	}
	data, err := e.encodeSend(event, "", [32]byte{})
	if err != nil {
		return 0, err
	}
	id, err := e.registry.Register(ctx, to)
	if err != nil {
		return 0, err
	}
	// The peer's outbox writer appends it at the exact revision, with the
	// Sends that wait beside it; the revision is the sequence number.
	p := e.peer(id)
	seq, err := e.enqueueSend(ctx, p, &outboxSend{data: []eventstore.EventData{data}})
	if err != nil {
		return 0, fmt.Errorf("append to outbox of %s: %w", to, err)
	}
	// A peer this server only sends to is pulled now and then too, as
	// every peer is at startup: a Pull carries this server's account of
	// what it holds from the peer, which is how a peer learns that this
	// server's store went back and lost events it had delivered.
	e.keepPulling(p)
	return seq, nil
}

// encodeSend checks and encodes the outbox record of a send. An event is
// refused before anything is stored if no receiver would take it: it would
// hold up every later event for the peer.
func (e *Engine) encodeSend(event *syncv1.Event, key string, digest [32]byte) (eventstore.EventData, error) {
	if event.GetKind() == nil {
		return eventstore.EventData{}, fmt.Errorf("%w: the event has no kind set", domain.ErrInvalidArgument)
	}
	var data eventstore.EventData
	var err error
	if key == "" {
		data, err = e.codec.EncodeEnqueued(event)
	} else {
		data, err = e.codec.EncodeEnqueuedKeyed(event, key, digest)
	}
	if err != nil {
		return eventstore.EventData{}, err
	}
	if size := max(proto.Size(event), len(data.Data)); size > e.cfg.MaxEventBytes {
		return eventstore.EventData{}, &domain.EventTooLargeError{Size: size, Limit: e.cfg.MaxEventBytes}
	}
	return data, nil
}

// kickLocked starts p's push loop if p has something to push and none runs.
func (e *Engine) kickLocked(p *peer) {
	if p.pushing || !e.runsLocked(p) {
		return
	}
	if p.loaded {
		if _, ok := p.out.NextPush(); !ok {
			return
		}
	}
	p.pushing = true
	e.goBackground(func(ctx context.Context) { e.pushLoop(ctx, p) })
}

// pushLoop pushes p's undelivered events in order, one push in flight,
// until none is left or queue mode begins; then it exits, so idle peers
// hold no goroutine. A push carries as many undelivered events as the peer
// announced it takes (one, to an upstream receiver).
func (e *Engine) pushLoop(ctx context.Context, p *peer) {
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
			_ = e.sleep(ctx, time.Second)
			continue
		}
		if e.owners != nil && p.owned && p.out.Owner.Replica != e.owners.Name() {
			// Another replica recorded a later term: this one stops, and
			// claims the peer again only if the owners still give it here.
			p.owned = false
		}
		if !e.runsLocked(p) {
			p.fresh.clear()
			p.mu.Unlock()
			return
		}
		seq, ok := p.out.NextPush()
		if ok {
			p.fresh.dropBefore(seq)
		} else {
			p.fresh.clear()
		}
		p.mu.Unlock()
		if !ok {
			return
		}
		server, known := e.registry.ServerID(p.id)
		if !known {
			e.logger.Error("push loop for an unregistered peer", "peer", p.id)
			return
		}
		e.pushWithRetries(ctx, p, server, seq, &ahead)
	}
}

// nextPush reads the events of p's next push from seq: as many as p
// announced it takes and this server's caps allow, at least one.
func (e *Engine) nextPush(ctx context.Context, p *peer, seq uint64, ahead *outboxReader) ([]*syncv1.Event, error) {
	p.mu.Lock()
	head, batch := p.out.Head, p.batch
	ahead.take(p.id, seq, &p.fresh)
	p.mu.Unlock()
	budget := min(batch.BatchBytes, uint64(max(e.cfg.PushBatchBytes, 0)))
	maxEvents := 1
	if budget > 0 && batch.BatchEvents > 1 {
		maxEvents = int(min(uint32(max(e.cfg.PushBatchEvents, 1)), batch.BatchEvents))
	}
	events, err := ahead.read(ctx, e.store, p.id, seq, head, maxEvents)
	if err != nil {
		return nil, err
	}
	e.noteOldest(p, seq, events[0])
	// What the request holds besides the following events: the first
	// event, its sequence number, and room for any transport framing.
	const overhead = 64
	size := uint64(proto.Size(events[0])) + overhead
	for i := 1; i < len(events); i++ {
		size += uint64(seqext.FollowingSize(events[i]))
		if size > budget {
			return events[:i], nil
		}
	}
	return events, nil
}

// pushWithRetries makes one attempt plus the configured retries on seq,
// and records the outcome. A failed attempt makes the next carry one event
// until the peer announces again what it takes: the failure may have been
// the size.
func (e *Engine) pushWithRetries(ctx context.Context, p *peer, server domain.ServerID, seq uint64, ahead *outboxReader) {
	busyInRow := 0
	for attempts := uint32(1); ctx.Err() == nil; attempts++ {
		events, err := e.nextPush(ctx, p, seq, ahead)
		if err != nil {
			e.logger.Error("reading the outbox failed", "peer", p.id, "seq", seq, "err", err)
			_ = e.sleep(ctx, time.Second)
			return
		}
		claim, err := e.claimFor(ctx, p, ahead, seq, len(events))
		if errors.Is(err, errPushMoved) {
			return // the push loop decides again from where delivery stands now
		}
		if err != nil {
			e.logger.Error("reading the outbox failed", "peer", p.id, "seq", seq, "err", err)
			_ = e.sleep(ctx, time.Second)
			return
		}
		if err := e.fence(ctx, p); err != nil {
			if !errors.Is(err, errFenced) {
				e.logger.Warn("fencing a push failed", "peer", p.id, "seq", seq, "err", err)
				_ = e.sleep(ctx, 100*time.Millisecond)
			}
			return // the push loop rereads the state and decides again
		}
		res, err := e.pushOnce(ctx, p, server, seq, events, claim)
		if errors.Is(err, errHeldForRename) {
			return // the push loop decides again, under the ID the peer knows now
		}
		if unknownToPeer(err) {
			if renames := e.renamesOf(); renames != nil {
				renames.forgotten(p.id)
			}
		}
		if domain.PeerSaid(err, domain.ErrStaleTerm) && e.owners != nil {
			// Another replica pushed to the peer under a later term: this
			// one has lost the peer. Not a failed delivery: the push loop
			// rereads the delivery stream, where that term is recorded.
			e.logger.Warn("push refused as stale: another replica owns the peer now", "peer", server.String(), "seq", seq, "term", claim.Term)
			p.mu.Lock()
			p.loaded = false
			var done chan error
			self := e.owners.Name()
			if lerr := e.loadLocked(ctx, p); lerr == nil && p.out.Owner == (domain.OwnerTerm{Term: claim.Term, Replica: self}) {
				// The store still gives this replica that term: the peer
				// saw a later one the store no longer holds (it was
				// restored from a backup). A new term gets past it, one
				// step per refusal.
				e.logger.Warn("the peer saw a later owner term than the store holds (a restored store?): starting the next", "peer", server.String(), "term", claim.Term+1)
				done = e.recordLocked(p, true, domain.OwnerTermStarted{Term: claim.Term + 1, Replica: self, Previous: self})
			}
			p.mu.Unlock()
			_ = waitRecorded(ctx, done)
			_ = e.sleep(ctx, time.Second)
			return
		}
		if err == nil && res.Answer != nil && res.Answer.Refused {
			if e.reconcile(ctx, p, server, ahead, res, claim.Epoch) {
				return // the records say where delivery goes on
			}
			err = fmt.Errorf("the peer refused push %d: its account (%s) matches what this server claimed", seq, refString(res.Answer.Applied))
		}
		wait, busy := domain.PeerBusy(err)
		if busy && busyInRow < maxBusyInRow {
			// The peer is at its budget and said when to come back: not a
			// failure, so not a step toward queue mode.
			busyInRow++
			attempts--
			e.logger.Info("peer busy; waiting as it asked", "peer", server.String(), "seq", seq, "wait", busyWait(wait))
			if e.sleep(ctx, busyWait(wait)) != nil {
				return
			}
			continue
		}
		if !busy {
			busyInRow = 0
		}
		p.mu.Lock()
		if err == nil {
			p.batch = res
			p.given = &domain.EventRef{Seq: res.Through, ID: claimLastID(claim, res.Through, seq+uint64(len(events))-1)}
			records, derr := p.out.PushSucceeded(seq, res.Through, attempts, false)
			var done chan error
			if derr == nil {
				// Not waited for, and batched: the next pushes overlap its
				// sync. If it is lost in a crash, the events are pushed
				// again and the receiver drops them by sequence number. A
				// replica waits: its next fence reads where it ends.
				done = e.recordLocked(p, e.owners != nil, records...)
			}
			p.mu.Unlock()
			_ = waitRecorded(ctx, done)
			return
		}
		p.batch = domain.PushResult{}
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
		if e.sleep(ctx, e.cfg.PushBackoff.Delay(int(attempts), e.jitterOf("push", uint64(attempts), string(p.id), strconv.FormatUint(seq, 10)))) != nil {
			return
		}
	}
}

// A peer that answers "busy" (429, with RetryInfo or not) is waited for as
// it asks, up to maxBusyWait each time, and such answers do not count
// toward queue mode; but after maxBusyInRow of them in a row, further ones
// count as failed attempts, so a peer cannot hold a push loop for more than
// about five minutes before queue mode.
const (
	maxBusyInRow = 10
	maxBusyWait  = 30 * time.Second
)

// busyWait is the wait before retrying a busy peer: what it asked, capped,
// and a second when it did not say.
func busyWait(asked time.Duration) time.Duration {
	if asked <= 0 {
		return time.Second
	}
	return min(asked, maxBusyWait)
}

// claimFor is what a push of n events from seq claims to a receiver that
// checks continuity: the epoch, the last event the receiver got in it, and
// the outbox ID of the push's last event.
func (e *Engine) claimFor(ctx context.Context, p *peer, ahead *outboxReader, seq uint64, n int) (domain.PushClaim, error) {
	p.mu.Lock()
	if p.out.Delivered != seq {
		p.mu.Unlock()
		return domain.PushClaim{}, fmt.Errorf("%w: pushing %d, delivery stands at %d", errPushMoved, seq, p.out.Delivered)
	}
	epoch, term := p.out.Epoch, p.out.Owner.Term
	given, has := p.out.LastGiven()
	cached := p.given
	p.mu.Unlock()
	claim := domain.PushClaim{Epoch: epoch, Term: term}
	claim.LastID, _ = ahead.id(seq + uint64(n) - 1)
	if !has {
		return claim, nil
	}
	if cached != nil && cached.Seq == given && len(cached.ID) > 0 {
		claim.Prev = cached
		return claim, nil
	}
	id, err := e.outboxID(ctx, p.id, ahead, given)
	if err != nil {
		return claim, err
	}
	claim.Prev = &domain.EventRef{Seq: given, ID: id}
	p.mu.Lock()
	p.given = claim.Prev
	p.mu.Unlock()
	return claim, nil
}

// errPushMoved: delivery no longer stands at the event a push loop is
// retrying (a pull's account rewound it to events the peer lost, or a pull
// delivered it). The push is not made: its claim would say the peer holds
// the events before it as of now, and a peer that lost some would take it
// over the gap.
var errPushMoved = errors.New("delivery moved from the push under way")

// claimLastID is the outbox ID of through, the last event a push
// delivered, when it is the last one the push carried.
func claimLastID(claim domain.PushClaim, through, last uint64) []byte {
	if through == last {
		return claim.LastID
	}
	return nil
}

// outboxID reads the ID of the outbox record at seq.
func (e *Engine) outboxID(ctx context.Context, id streams.PeerID, ahead *outboxReader, seq uint64) ([]byte, error) {
	if ahead != nil {
		if got, ok := ahead.id(seq); ok && ahead.peer == id {
			return got, nil
		}
	}
	recs, err := e.store.ReadStream(ctx, streams.Outbox(id), seq, 1)
	if err != nil {
		return nil, fmt.Errorf("read outbox of %s at %d: %w", id, seq, err)
	}
	if len(recs) == 0 || recs[0].Revision != seq {
		return nil, fmt.Errorf("outbox of %s has no event %d: %w", id, seq, errMissingEvent)
	}
	return bytes.Clone(recs[0].ID[:]), nil
}

// reconcile acts on a receiver's refusal of a push made in epoch: it
// compares the receiver's account with the outbox and records where
// delivery goes on. It reports whether it recorded anything; an account
// of an epoch that has since ended (a Pull started a new one meanwhile)
// records nothing.
func (e *Engine) reconcile(ctx context.Context, p *peer, server domain.ServerID, ahead *outboxReader, res domain.PushResult, epoch uint64) bool {
	has := res.Answer.Applied
	same := true
	if e.owners != nil {
		// Other replicas take Sends too: the receiver may hold events this
		// replica has not read of the outbox yet, which is no contradiction.
		if n, err := e.outboxLen(ctx, p.id); err == nil && n > 0 {
			p.mu.Lock()
			p.out.Stored(n - 1)
			p.mu.Unlock()
		}
	}
	p.mu.Lock()
	head := p.out.Head
	p.mu.Unlock()
	if has != nil && has.Seq < head && len(has.ID) > 0 {
		id, err := e.outboxID(ctx, p.id, ahead, has.Seq)
		if err != nil {
			e.logger.Error("reading the outbox failed", "peer", p.id, "seq", has.Seq, "err", err)
			return false
		}
		same = bytes.Equal(id, has.ID)
	}
	var seq *uint64
	if has != nil {
		seq = &has.Seq
	}
	p.mu.Lock()
	if p.out.Epoch != epoch {
		p.mu.Unlock()
		return false
	}
	p.batch = res
	records := p.out.Reconcile(seq, same, e.newEpoch())
	before := p.out
	done := e.recordLocked(p, true, records...)
	p.given = nil
	if len(records) > 0 && has != nil && same {
		p.given = has
	}
	p.mu.Unlock()
	if len(records) == 0 {
		return false
	}
	if err := waitRecorded(ctx, done); err != nil {
		return true // rereading the streams follows
	}
	e.reportContinuity(server, before, records[0], "push")
	return true
}

// reportContinuity says loudly what a receiver's contradicting account
// led to.
func (e *Engine) reportContinuity(server domain.ServerID, before domain.Outbox, record domain.DeliveryEvent, via string) {
	switch r := record.(type) {
	case domain.EpochStarted:
		e.cfg.Observer.Continuity(server, "epoch_started")
		e.logger.Error("the peer holds events this server's outbox does not: this server's store went back (restored from a backup, or recreated); "+
			"events not known delivered are sent again under a new epoch, and nothing is counted delivered on the peer's account",
			"peer", server.String(), "via", via, "peer_last_seq", r.ReceiverSeq, "peer_has", r.ReceiverHas,
			"delivered", before.Delivered, "head", before.Head, "new_epoch", r.Epoch)
	case domain.ReceiverReported:
		if before.HasGiven && (!r.Has || r.Seq < before.Given) {
			e.cfg.Observer.Continuity(server, "receiver_behind")
			e.logger.Error("the peer lost events it had received (its store went back; or, for a peer running as replicas, a push to one crossed another's pull): they are sent again",
				"peer", server.String(), "via", via, "peer_has", r.Has, "peer_last_seq", r.Seq, "was_given", before.Given)
			return
		}
		e.cfg.Observer.Continuity(server, "receiver_ahead")
		e.logger.Info("the peer holds events whose delivery was not recorded (a lost reply): delivery goes on after them",
			"peer", server.String(), "via", via, "peer_last_seq", r.Seq)
	}
}

// pushOnce makes one attempt, holding one of the global push slots.
func (e *Engine) pushOnce(ctx context.Context, p *peer, server domain.ServerID, seq uint64, events []*syncv1.Event, claim domain.PushClaim) (domain.PushResult, error) {
	if err := e.beginPush(ctx, p); err != nil {
		return domain.PushResult{}, err
	}
	defer e.endPush(p)
	if renames := e.renamesOf(); renames != nil {
		renames.learnKey(p.id, server)
	}
	select {
	case e.slots <- struct{}{}:
	case <-ctx.Done():
		return domain.PushResult{}, ctx.Err()
	}
	defer func() { <-e.slots }()
	ctx, cancel := context.WithTimeout(ctx, e.cfg.AttemptTimeout)
	defer cancel()
	start := e.clock.Now()
	res, err := e.push(ctx, server, seq, events, claim)
	delivered := 0
	if err == nil && (res.Answer == nil || !res.Answer.Refused) {
		delivered = int(res.Through-seq) + 1
	}
	e.cfg.Observer.PushAttempted(server, e.clock.Now().Sub(start), delivered, err)
	return res, err
}

// scheduleProbeLocked arms the resume probe of a peer in queue mode.
func (e *Engine) scheduleProbeLocked(p *peer) {
	if !e.cfg.ResumeProbe || !p.out.NeedsProbe() || p.probeTimer != nil || !e.runsLocked(p) || e.isStopping() {
		return
	}
	p.probeRound++
	delay := e.cfg.ProbeBackoff.Delay(p.probeRound, e.jitterOf("probe", uint64(p.probeRound), string(p.id)))
	p.probeTimer = e.clock.AfterFunc(delay, func() { e.goBackground(func(ctx context.Context) { e.probe(ctx, p) }) })
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
func (e *Engine) probe(ctx context.Context, p *peer) {
	p.mu.Lock()
	p.probeTimer = nil
	if err := e.loadLocked(ctx, p); err != nil || !p.out.NeedsProbe() || p.serving || !e.runsLocked(p) {
		p.mu.Unlock()
		return
	}
	seq := p.out.Delivered
	ctx, cancel := context.WithCancel(ctx)
	p.probeCancel = cancel
	p.mu.Unlock()
	defer cancel()

	server, ok := e.registry.ServerID(p.id)
	if !ok {
		return
	}
	var r outboxReader
	events, err := r.read(ctx, e.store, p.id, seq, seq+1, 1)
	var res domain.PushResult
	var claim domain.PushClaim
	if err == nil {
		e.noteOldest(p, seq, events[0])
		claim, err = e.claimFor(ctx, p, &r, seq, 1)
	}
	if err == nil {
		err = e.fence(ctx, p)
	}
	if err == nil {
		res, err = e.pushOnce(ctx, p, server, seq, events, claim)
	}
	if err == nil && res.Answer != nil && res.Answer.Refused {
		if e.reconcile(ctx, p, server, &r, res, claim.Epoch) {
			p.mu.Lock()
			defer p.mu.Unlock()
			p.probeCancel = nil
			e.scheduleProbeLocked(p) // probe again where delivery now goes on
			return
		}
		err = fmt.Errorf("the peer refused probe %d", seq)
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	if ctx.Err() != nil {
		return // a Pull took over
	}
	p.probeCancel = nil
	if err != nil {
		if !errors.Is(err, errHeldForRename) {
			e.logger.Info("resume probe failed", "peer", server.String(), "seq", seq, "err", err)
		}
		e.scheduleProbeLocked(p)
		return
	}
	p.batch = res
	p.given = &domain.EventRef{Seq: seq, ID: claim.LastID}
	records, derr := p.out.PushSucceeded(seq, seq, 1, true)
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
	if err := e.awaitStart(ctx); err != nil {
		return err
	}
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

// noteOldest marks p stuck on ev, its oldest undelivered event at seq, if
// ev is over the per-event limit (it was sent before the limit, or under a
// larger one): pushes and Pull replies carrying it are likely refused, and
// only an operator's skip lets the events behind it go.
func (e *Engine) noteOldest(p *peer, seq uint64, ev *syncv1.Event) {
	size := proto.Size(ev)
	p.mu.Lock()
	defer p.mu.Unlock()
	if size <= e.cfg.MaxEventBytes {
		if p.stuck != nil && p.stuck.Seq <= seq {
			p.stuck = nil
		}
		return
	}
	if p.stuck == nil || p.stuck.Seq != seq {
		e.logger.Warn("delivery is stuck on an event over the per-event limit; postbox skip passes it", "peer", p.id, "seq", seq, "bytes", size)
	}
	p.stuck = &domain.StuckEvent{Seq: seq, Reason: fmt.Sprintf(
		"event %d is %d bytes, over the per-event limit of %d bytes: the peer is likely to refuse it; `postbox skip` passes it",
		seq, size, e.cfg.MaxEventBytes)}
}

// Stuck lists the peers whose delivery waits on an event they are likely
// to refuse, by server ID.
func (e *Engine) Stuck() map[domain.ServerID]domain.StuckEvent {
	e.mu.Lock()
	peers := make([]*peer, 0, len(e.peers))
	for _, p := range e.peers {
		peers = append(peers, p)
	}
	e.mu.Unlock()
	out := map[domain.ServerID]domain.StuckEvent{}
	for _, p := range peers {
		p.mu.Lock()
		stuck := p.stuck
		if stuck != nil && stuck.Seq < p.out.Delivered {
			stuck, p.stuck = nil, nil // delivered or skipped since
		}
		p.mu.Unlock()
		if stuck == nil {
			continue
		}
		if server, ok := e.registry.ServerID(p.id); ok {
			out[server] = *stuck
		}
	}
	return out
}

// Skip gives up on the oldest undelivered events of a peer through the
// one numbered through (an operator's call): recorded before it returns,
// never counted as delivered. A peer in queue mode gets a resume probe of
// what follows soon, as after entering queue mode.
func (e *Engine) Skip(ctx context.Context, server domain.ServerID, through uint64, reason string) (domain.EventsSkipped, error) {
	if err := e.awaitStart(ctx); err != nil {
		return domain.EventsSkipped{}, err
	}
	id, ok := e.registry.Lookup(server)
	if !ok {
		return domain.EventsSkipped{}, fmt.Errorf("%w: %s", domain.ErrUnknownPeer, server)
	}
	p := e.peer(id)
	p.mu.Lock()
	if err := e.loadLocked(ctx, p); err != nil {
		p.mu.Unlock()
		return domain.EventsSkipped{}, err
	}
	records, err := p.out.Skip(through, reason)
	if err != nil {
		p.mu.Unlock()
		return domain.EventsSkipped{}, err
	}
	done := e.recordLocked(p, true, records...)
	if p.out.Mode == domain.ModeQueue {
		e.cancelProbeLocked(p)
		e.scheduleProbeLocked(p)
	}
	e.kickLocked(p)
	p.mu.Unlock()
	if err := waitRecorded(ctx, done); err != nil {
		return domain.EventsSkipped{}, err
	}
	skipped := records[0].(domain.EventsSkipped)
	e.logger.Warn("events skipped by an operator: never delivered", "peer", server.String(),
		"from", skipped.FromSeq, "through", skipped.ThroughSeq, "reason", reason)
	return skipped, nil
}

// outboxReader reads an outbox ahead, so a push loop costs one read per
// batch rather than per event.
type outboxReader struct {
	peer   streams.PeerID
	from   uint64
	events []*syncv1.Event
	ids    []eventstore.EventID
}

// id returns the outbox ID of the record at seq, if the reader holds it.
func (r *outboxReader) id(seq uint64) ([]byte, bool) {
	if seq < r.from || seq >= r.from+uint64(len(r.ids)) {
		return nil, false
	}
	return bytes.Clone(r.ids[seq-r.from][:]), true
}

const readAhead = 256

// read returns up to n events of the outbox of id from seq, below head; at
// least the one at seq. The slice is valid until the next read.
func (r *outboxReader) read(ctx context.Context, s Store, id streams.PeerID, seq, head uint64, n int) ([]*syncv1.Event, error) {
	want := uint64(max(n, 1))
	if head > seq {
		want = min(want, head-seq)
	}
	end := r.from + uint64(len(r.events))
	if r.peer != id || seq < r.from || seq+want > end {
		recs, err := s.ReadStream(ctx, streams.Outbox(id), seq, max(readAhead, int(want)))
		if err != nil {
			return nil, err
		}
		if len(recs) == 0 || recs[0].Revision != seq {
			return nil, fmt.Errorf("outbox of %s has no event %d: %w", id, seq, errMissingEvent)
		}
		r.peer, r.from, r.events, r.ids = id, seq, r.events[:0], r.ids[:0]
		for _, rec := range recs {
			ev, err := streams.DecodeEnqueued(rec)
			if err != nil {
				return nil, err
			}
			r.events = append(r.events, ev)
			r.ids = append(r.ids, rec.ID)
		}
		end = r.from + uint64(len(r.events))
	}
	return r.events[seq-r.from : min(seq+want, end)-r.from], nil
}

var errMissingEvent = errors.New("missing outbox event")
