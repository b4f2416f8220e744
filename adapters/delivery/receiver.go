package delivery

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/rpcerrors"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// AcceptPush applies pushed events (the first at seq, the rest following
// it) and returns once they are durable in the sender's inbox stream, all
// in one append. While this server's own Pull from the sender is under
// way, it waits for that Pull first, as the spec asks.
func (e *Engine) AcceptPush(ctx context.Context, caller domain.Caller, events []*syncv1.Event, seq *uint64) error {
	_, err := e.AcceptClaimedPush(ctx, caller, events, seq, nil)
	return err
}

// AcceptClaimedPush is AcceptPush for a sender that made a continuity
// claim (nil: none): a push that does not continue what this server holds
// from the sender is refused whole, and the answer says what it holds.
func (e *Engine) AcceptClaimedPush(ctx context.Context, caller domain.Caller, events []*syncv1.Event, seq *uint64, claim *domain.PushClaim) (domain.PushAnswer, error) {
	if err := e.awaitStart(ctx); err != nil {
		return domain.PushAnswer{}, err
	}
	_, known, err := domain.CheckCaller(e.registry, caller.ServerID)
	if err != nil {
		return domain.PushAnswer{}, err
	}
	if renames := e.renamesOf(); renames != nil && !known &&
		renames.learnKeylessPeers(ctx) && renames.holdStranger(caller.ServerID) {
		// The caller may be a peer whose key this server never got, under
		// a new ID: it is asked to come back rather than registered as a
		// second peer now.
		return domain.PushAnswer{}, &rpcerrors.Busy{Budget: "first contacts while the key of a peer without one cannot be fetched",
			RetryAfter: strangerKeyInterval}
	}
	id, err := e.registry.RegisterCaller(ctx, caller)
	if err != nil {
		return domain.PushAnswer{}, err
	}
	if renames := e.renamesOf(); renames != nil {
		renames.TellIfDue(id)
	}
	p := e.peer(id)
	p.mu.Lock()
	gate := p.pullGate
	p.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return domain.PushAnswer{}, fmt.Errorf("waiting for this server's pull from %s: %w", caller.ServerID, ctx.Err())
		}
	}
	if e.owners != nil && seq == nil {
		if err := e.awaitPullElsewhere(ctx, p); err != nil {
			return domain.PushAnswer{}, err
		}
	}
	var from incoming
	if claim != nil && seq != nil {
		from = incoming{epoch: claim.Epoch, lastID: claim.LastID, checked: true, prev: claim.Prev, term: claim.Term}
	}
	answer, err := e.receive(ctx, p, eventsv1.EventReceived_VIA_PUSH, events, seq, from)
	if err != nil {
		return domain.PushAnswer{}, err
	}
	e.postponePull(p)
	return answer, nil
}

// incoming is what a sender said about the events it sends: the epoch
// their sequence numbers count in, the outbox ID of the last one, and for
// a checked push the last event it believes this server applied.
type incoming struct {
	epoch   uint64
	lastID  []byte
	checked bool
	prev    *domain.EventRef
	// term: the owner term a checked push came under (domain.Inbox.Stale).
	term uint64
}

// receive appends the events this server has not applied yet to the
// sender's inbox, in order, with their sequence numbers (first, first+1...;
// nil when the sender sent none).
func (e *Engine) receive(ctx context.Context, p *peer, via eventsv1.EventReceived_Via, events []*syncv1.Event, first *uint64, from incoming) (domain.PushAnswer, error) {
	for conflicts := 0; ; conflicts++ {
		answer, err := e.receiveOnce(ctx, p, via, events, first, from)
		if err == nil || via != eventsv1.EventReceived_VIA_PULL || conflicts >= maxInboxConflicts ||
			!errors.Is(err, eventstore.ErrWrongExpectedRevision) {
			return answer, err
		}
		// Another replica appended to the inbox meanwhile (a push from the
		// peer reached it). Pulled events are taken after it: an upstream
		// sender deleted them once its reply was written, so a failed pull
		// would lose them.
	}
}

// maxInboxConflicts bounds how often pulled events are appended again
// after another writer's append.
const maxInboxConflicts = 16

// receiveOnce is one attempt of receive.
func (e *Engine) receiveOnce(ctx context.Context, p *peer, via eventsv1.EventReceived_Via, events []*syncv1.Event, first *uint64, from incoming) (domain.PushAnswer, error) {
	p.recvMu.Lock()
	defer p.recvMu.Unlock()
	if err := e.freshInboxLocked(ctx, p); err != nil {
		return domain.PushAnswer{}, err
	}
	in := p.in
	if first != nil {
		// A sender's new epoch starts its sequence numbers again.
		in = in.InEpoch(from.epoch)
		// Only a sender whose events this server holds can have started
		// anew: its first contact is in an epoch too.
		if in.Epoch != p.in.Epoch && p.in.HasSeq {
			e.logger.Warn("the sender started a new epoch: its store was restored or recreated; its events are taken anew",
				"peer", p.id, "epoch", in.Epoch, "was", p.in.Epoch)
		}
	}
	if from.checked && in.Stale(from.term) {
		// Before continuity: a replica that lost the peer is told so, and
		// stops, rather than reconcile with what its successor delivered.
		e.logger.Info("push refused: the sender's replica pushed under an earlier owner term than one seen",
			"peer", p.id, "term", from.term, "seen", in.Term, "seq", *first)
		return domain.PushAnswer{}, fmt.Errorf("%w: push %d under term %d, term %d seen", domain.ErrStaleTerm, *first, from.term, in.Term)
	}
	if from.checked {
		in.SeeTerm(from.term)
	}
	if from.checked && !in.Continues(from.prev) && !in.Repeats(*first, len(events), from.lastID) {
		held := in.Last()
		e.logger.Warn("push refused: it does not continue what this server holds from the sender",
			"peer", p.id, "claimed", refString(from.prev), "held", refString(held))
		return domain.PushAnswer{Refused: true, Applied: held}, nil
	}
	var recs []streams.Received
	for i, ev := range events {
		var seq *uint64
		if first != nil {
			s := *first + uint64(i)
			seq = &s
		}
		if !in.Accepts(seq) {
			continue // already applied: a retried push or a re-sent reply
		}
		var id []byte
		if i == len(events)-1 {
			id = from.lastID
		}
		rec := streams.Received{Event: ev, Via: via, SenderSeq: seq, SenderEventID: id, SenderTerm: in.Term}
		if seq != nil {
			rec.SenderEpoch = in.Epoch
		}
		recs = append(recs, rec)
		in.Received(seq, id)
	}
	data, err := e.codec.EncodeReceivedRuns(recs)
	if err != nil {
		return domain.PushAnswer{}, err
	}
	if len(data) == 0 {
		if in.Epoch == p.in.Epoch {
			// A new term that carried nothing new (the new owner repeating
			// its predecessor's last push) is held in memory until the
			// next record stores it.
			p.in.SeeTerm(in.Term)
		}
		return domain.PushAnswer{Applied: in.Last()}, nil
	}
	appendCtx, untilStored := ctx, first == nil && via == eventsv1.EventReceived_VIA_PULL
	if untilStored {
		// An upstream sender deleted these events once its reply was
		// written: only this server holds them now, so they are kept
		// trying until stored, past the pull's own deadline, until the
		// engine stops.
		var cancel context.CancelFunc
		appendCtx, cancel = e.untilStopped(ctx)
		defer cancel()
	}
	stored := len(data)
	err = e.appendInbox(appendCtx, p, data, untilStored)
	if err != nil {
		stored, err = e.storeTooLargeAsMarkers(ctx, p, data, err)
	}
	if err != nil {
		if errors.Is(err, eventstore.ErrWrongExpectedRevision) {
			p.inLoaded = false // another writer shares the store: reread
		}
		return domain.PushAnswer{}, fmt.Errorf("append to %s: %w", streams.Inbox(p.id), err)
	}
	// The inbox counts records, and a run of events is one.
	in.Count = p.in.Count + uint64(stored)
	p.in = in
	if server, ok := e.registry.ServerID(p.id); ok {
		viaName := "push"
		if via == eventsv1.EventReceived_VIA_PULL {
			viaName = "pull"
		}
		e.cfg.Observer.Received(server, viaName, len(recs))
	}
	return domain.PushAnswer{Applied: in.Last()}, nil
}

// appendInbox appends data to p's inbox; if untilStored, failures that
// leave nothing stored are tried again with backoff (the store retries an
// unclear or partly stored append itself) until the append succeeds or ctx
// ends. A conflict, or an event too large for the store, is never retried.
func (e *Engine) appendInbox(ctx context.Context, p *peer, data []eventstore.EventData, untilStored bool) error {
	backoff := domain.Backoff{First: 100 * time.Millisecond, Max: 5 * time.Second}
	for attempt := 1; ; attempt++ {
		_, err := e.store.Append(ctx, streams.Inbox(p.id), expectAfter(p.in.Count), data...)
		if err == nil || !untilStored || ctx.Err() != nil ||
			errors.Is(err, eventstore.ErrWrongExpectedRevision) || errors.Is(err, eventstore.ErrEventTooLarge) {
			return err
		}
		e.logger.Error("storing events pulled from an upstream peer failed; they exist nowhere else, so this is tried again",
			"peer", p.id, "events", len(data), "attempt", attempt, "err", err)
		if e.sleep(ctx, backoff.Delay(attempt, e.jitterOf("inbox", uint64(attempt), string(p.id)))) != nil {
			return err
		}
	}
}

func refString(r *domain.EventRef) string {
	if r == nil {
		return "nothing"
	}
	return fmt.Sprintf("%d (%x)", r.Seq, r.ID)
}

// loadInboxLocked rebuilds the receiver state of p from its inbox stream:
// its length and the last sender sequence number applied; from the latest
// trusted inbox snapshot (retention of received events writes one before
// it removes any) and the newest records.
func (e *Engine) loadInboxLocked(ctx context.Context, p *peer) error {
	if p.inLoaded {
		return nil
	}
	stream := streams.Inbox(p.id)
	const window = 64
	recs, err := e.store.ReadStreamBackward(ctx, stream, window)
	switch {
	case errors.Is(err, eventstore.ErrStreamNotFound):
		recs = nil
	case err != nil:
		return fmt.Errorf("read %s: %w", stream, err)
	}
	in, from := e.trustedInboxSnapshot(ctx, p, recs)
	apply := func(r eventstore.RecordedEvent) error {
		recs, err := streams.DecodeReceivedRecord(r)
		if err != nil {
			return err
		}
		for _, rec := range recs {
			in.Apply(r.Revision, rec.Domain())
		}
		return nil
	}
	// Sequence numbers only grow within an epoch, so the newest records
	// are enough for domain.Inbox's fold when one of them carries one;
	// otherwise every record after the snapshot (or from the first, with
	// none) is read.
	if n := len(recs); n > 0 && recs[n-1].Revision > from && !anySenderSeq(recs) {
		if _, err := readFrom(ctx, e.store, stream, from, apply); err != nil {
			return err
		}
		recs = nil
	}
	for i := len(recs) - 1; i >= 0; i-- { // oldest first
		if recs[i].Revision < from {
			continue
		}
		if err := apply(recs[i]); err != nil {
			return err
		}
	}
	p.in, p.inLoaded = in, true
	return nil
}

func anySenderSeq(recs []eventstore.RecordedEvent) bool {
	for _, r := range recs {
		run, err := streams.DecodeReceivedRecord(r)
		if err == nil && slices.ContainsFunc(run, func(r streams.Received) bool { return r.SenderSeq != nil }) {
			return true
		}
	}
	return false
}

// trustedInboxSnapshot returns p's latest inbox snapshot and the revision
// it covers, or a zero fold and 0 when there is none it can trust: that
// one is ignored with a warning. newest are the stream's last records,
// newest first.
func (e *Engine) trustedInboxSnapshot(ctx context.Context, p *peer, newest []eventstore.RecordedEvent) (domain.Inbox, uint64) {
	snaps, err := e.store.ReadStreamBackward(ctx, streams.InboxSnapshot(p.id), 1)
	if errors.Is(err, eventstore.ErrStreamNotFound) || (err == nil && len(snaps) == 0) {
		return domain.Inbox{}, 0
	}
	ignore := func(err error) (domain.Inbox, uint64) {
		e.logger.Warn("inbox snapshot ignored; folding the inbox records instead", "peer", p.id, "err", err)
		return domain.Inbox{}, 0
	}
	if err != nil {
		return ignore(err)
	}
	snap, err := streams.DecodeInboxSnapshot(snaps[0])
	if err != nil {
		return ignore(err)
	}
	db, err := e.databaseID(ctx)
	if err != nil {
		return ignore(err)
	}
	var length uint64
	if len(newest) > 0 {
		length = newest[0].Revision + 1
	}
	if err := snap.Check(db, streams.Inbox(p.id), length, len(newest) > 0); err != nil {
		return ignore(err)
	}
	return snap.Inbox(), snap.Revision
}

// freshInboxLocked is loadInboxLocked for a decision on what p's inbox
// holds: a replica reads it again each time, since other replicas apply to
// the shared inbox too, and its own view may be behind (an account from
// it would tell the sender this server lost events, and a push refused or
// acknowledged on it would be answered wrongly).
func (e *Engine) freshInboxLocked(ctx context.Context, p *peer) error {
	if e.owners == nil {
		return e.loadInboxLocked(ctx, p)
	}
	held, wasLoaded := p.in, p.inLoaded
	p.inLoaded = false
	if err := e.loadInboxLocked(ctx, p); err != nil {
		return err
	}
	// A higher owner term seen in a push that brought no new event is held
	// in memory only: the store's records do not know it.
	if wasLoaded && held.Epoch == p.in.Epoch {
		p.in.Term = max(p.in.Term, held.Term)
	}
	return nil
}

// PullFrom pulls everything peer server has queued for this server, again
// and again until a reply is empty, acknowledging what was applied. Pushes
// from that server wait until it is done.
func (e *Engine) PullFrom(ctx context.Context, server domain.ServerID) error {
	if err := e.awaitStart(ctx); err != nil {
		return err
	}
	id, ok := e.registry.Lookup(server)
	if !ok {
		return fmt.Errorf("%w: %s", domain.ErrUnknownPeer, server)
	}
	// server may be a former ID of the peer: call it by its current one.
	current, _ := e.registry.ServerID(id)
	if err := e.pullPeer(ctx, e.peer(id), current); err != nil {
		// The operator is told the peer could not be pulled, not that this
		// server failed.
		return fmt.Errorf("%w: %w", domain.ErrUnavailable, err)
	}
	return nil
}

func (e *Engine) pullFrom(ctx context.Context, p *peer, server domain.ServerID) error {
	p.mu.Lock()
	if gate := p.pullGate; gate != nil && !p.gateOwnedByStartup {
		p.mu.Unlock()
		// A pull is already under way; wait for it rather than run two.
		select {
		case <-gate:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	gate := p.pullGate
	if gate == nil {
		gate = make(chan struct{})
		p.pullGate = gate
	}
	p.gateOwnedByStartup = false
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.pullGate = nil
		p.mu.Unlock()
		close(gate)
	}()

	ctx, cancel := context.WithTimeout(ctx, e.cfg.PullTimeout)
	defer cancel()
	if renames := e.renamesOf(); renames != nil {
		renames.awaitNotice(ctx, p.id)
	}
	err := e.pullRounds(ctx, p, server)
	e.cfg.Observer.PullMade(server, err)
	return err
}

// pullRounds pulls until a reply is empty.
func (e *Engine) pullRounds(ctx context.Context, p *peer, server domain.ServerID) error {
	const maxRounds = 1000
	retries := 0
	for round := 0; round < maxRounds; round++ {
		p.recvMu.Lock()
		err := e.freshInboxLocked(ctx, p)
		var ack *uint64
		if seq, ok := p.in.Ack(); ok {
			ack = &seq
		}
		account := domain.PullAccount{Epoch: p.in.Epoch, AckID: p.in.LastID}
		p.recvMu.Unlock()
		if err != nil {
			return err
		}
		before := e.givenBefore(p)
		res, err := e.pull(ctx, server, ack, account)
		if err != nil && refusedAsPredatingStart(err) && retries < 3 {
			// The peer restarted within the second this token was signed
			// in, and refuses tokens stamped before its start (PROTOCOL.md
			// §3); a token signed a moment later is accepted.
			retries++
			if e.sleep(ctx, time.Second) != nil {
				return ctx.Err()
			}
			round--
			continue
		}
		if err != nil {
			if renames := e.renamesOf(); renames != nil && unknownToPeer(err) {
				renames.forgotten(p.id)
			}
			return fmt.Errorf("pull from %s: %w", server, err)
		}
		if err := e.checkHeld(ctx, p, server, before, res.Held); err != nil {
			return err
		}
		if len(res.Events) == 0 {
			return nil
		}
		var first *uint64
		if res.HasSeq {
			first = &res.FirstSeq
		}
		if _, err := e.receive(ctx, p, eventsv1.EventReceived_VIA_PULL, res.Events, first, incoming{epoch: res.Epoch, lastID: res.LastID}); err != nil {
			return err
		}
	}
	return nil
}

// refusedAsPredatingStart reports whether a peer refused a token because it
// was stamped before the peer started.
func refusedAsPredatingStart(err error) bool {
	return domain.PeerSaid(err, domain.ErrTokenReplayed)
}

// schedulePull (re)arms the periodic pull of p: after d, with no goroutine
// held in between.
func (e *Engine) schedulePull(p *peer, d time.Duration) {
	if d <= 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pullTimer != nil {
		p.pullTimer.Reset(d)
		return
	}
	p.pullTimer = e.clock.AfterFunc(d, func() {
		e.goBackground(func(ctx context.Context) {
			server, ok := e.registry.ServerID(p.id)
			if !ok || !e.runs(p.id) {
				return
			}
			err := e.pullPeer(ctx, p, server)
			if err != nil && ctx.Err() == nil {
				e.logger.Info("periodic pull failed", "peer", server.String(), "err", err)
			}
			e.pullAgain(p, err)
		})
	})
}

// pullRetry spaces the pulls of a peer after failed ones, up to the pull
// interval.
var pullRetry = domain.Backoff{First: 2 * time.Second, Max: time.Hour}

// pullAgain arms p's next pull after one that ended with err: the pull
// interval after a success, sooner after failures (with backoff, at most
// the interval), so a peer whose queue waits for this pull (its resume
// probe stops once it is pulled) does not wait a whole interval because the
// peer, or this server's store, failed a moment.
func (e *Engine) pullAgain(p *peer, err error) {
	p.mu.Lock()
	if err == nil {
		p.pullFailures = 0
	} else {
		p.pullFailures++
	}
	failures := p.pullFailures
	p.mu.Unlock()
	d := e.cfg.PullInterval
	if failures > 0 {
		d = min(d, pullRetry.Delay(failures, e.jitterOf("pull", uint64(failures), string(p.id))))
	}
	e.schedulePull(p, d)
}

// postponePull puts p's periodic pull a whole interval off, after a push
// from it: the pull is a safety net a pushing peer does not need. Not
// while pulls are failing: their retry stays due, so the next pull is the
// same whichever came first, the push or the failure (a simulation seed
// replays either way).
func (e *Engine) postponePull(p *peer) {
	p.mu.Lock()
	failing := p.pullFailures > 0
	p.mu.Unlock()
	if !failing {
		e.schedulePull(p, e.cfg.PullInterval)
	}
}

// keepPulling arms p's periodic pull unless it is armed already.
func (e *Engine) keepPulling(p *peer) {
	p.mu.Lock()
	armed := p.pullTimer != nil
	p.mu.Unlock()
	if !armed {
		e.schedulePull(p, e.cfg.PullInterval)
	}
}

// restore rebuilds every peer's state from the streams and restarts what
// was under way: push loops for peers with undelivered events, probes for
// peers in queue mode. It also closes a gate for every peer, so their
// pushes wait until the startup pulls have pulled them.
func (e *Engine) restore(ctx context.Context) error {
	before, start := e.recordsRead.Load(), e.clock.Now()
	peers := e.registry.Peers()
	defer func() {
		// What a start costs: bounded per peer by the snapshots.
		// The peers stream's records, which the registry read, count too.
		e.logger.Info("delivery state rebuilt", "peers", len(peers), "records", e.recordsRead.Load()-before+e.registry.RecordsRead(),
			"registry_records", e.registry.RecordsRead(),
			"took", e.clock.Now().Sub(start).Round(time.Millisecond))
	}()
	e.preload(ctx, peers)
	for _, peer := range peers {
		p := e.peer(peer.ID)
		p.mu.Lock()
		if err := e.loadLocked(ctx, p); err != nil {
			p.mu.Unlock()
			return err
		}
		if p.pullGate == nil {
			p.pullGate = make(chan struct{})
			p.gateOwnedByStartup = true
		}
		e.kickLocked(p)
		e.scheduleProbeLocked(p)
		p.mu.Unlock()
	}
	return nil
}

// restoreWorkers is how many peers a start loads at once: each load is a
// few short reads, so the store's read connections overlap their waits.
const restoreWorkers = 4

// preload loads the peers' states a few at a time, for restore: one that
// fails stays unloaded, and restore's own load reports it.
func (e *Engine) preload(ctx context.Context, peers []domain.PeerEntry) {
	work := make(chan domain.PeerID)
	var wg sync.WaitGroup
	for range min(restoreWorkers, len(peers)) {
		wg.Go(func() {
			for id := range work {
				p := e.peer(id)
				p.mu.Lock()
				_ = e.loadLocked(ctx, p)
				p.mu.Unlock()
			}
		})
	}
	for _, peer := range peers {
		work <- peer.ID
	}
	close(work)
	wg.Wait()
}

// startupPulls pulls every peer federated with before, each bounded in
// time, concurrently, and returns when all are done. Failures are logged:
// a peer that is down is pulled again later.
func (e *Engine) startupPulls(ctx context.Context) {
	var wg sync.WaitGroup
	for _, peer := range e.registry.Peers() {
		p := e.peer(peer.ID)
		if e.owners != nil {
			// A replica pulls a peer when it takes it over (Owners); the
			// startup gate is this process's, so it opens here.
			p.mu.Lock()
			if gate := p.pullGate; gate != nil && p.gateOwnedByStartup {
				p.pullGate, p.gateOwnedByStartup = nil, false
				close(gate)
			}
			p.mu.Unlock()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := e.pullFrom(ctx, p, peer.ServerID)
			if err != nil {
				e.logger.Warn("startup pull failed", "peer", peer.ServerID.String(), "err", err)
			}
			e.pullAgain(p, err)
		}()
	}
	wg.Wait()
}

// AcceptRename answers NotifyNewId through the rename handling.
func (e *Engine) AcceptRename(ctx context.Context, caller domain.Caller, newID domain.ServerID) error {
	if err := e.awaitStart(ctx); err != nil {
		return err
	}
	e.mu.Lock()
	r := e.renames
	e.mu.Unlock()
	if r == nil {
		return fmt.Errorf("%w: renames are not handled by this engine", domain.ErrNotImplemented)
	}
	return r.AcceptRename(ctx, caller, newID)
}

// givenMark is what this server counted as given to a peer (in its current
// epoch) before it asked the peer something.
type givenMark struct {
	loaded bool
	epoch  uint64
	has    bool
	seq    uint64
}

// givenBefore notes what p was given so far, before a Pull to it: the
// peer had applied all of it before it read the request.
func (e *Engine) givenBefore(p *peer) givenMark {
	p.mu.Lock()
	defer p.mu.Unlock()
	return givenMark{loaded: p.loaded, epoch: p.out.Epoch, has: p.out.HasGiven, seq: p.out.Given}
}

// checkHeld compares what a peer says in a Pull reply it holds of this
// server's events with what this server had given it before the Pull (so
// a push or acknowledgement that crossed the Pull cannot look like a
// loss). A peer that holds less lost events (its store went back, perhaps
// to before it ever met this server, when it does not pull this server
// itself and nothing else would tell): that is recorded as for a push's
// answer, and the events go again. Anything else in the account (more
// than given, another history) is left to the next push's continuity
// check.
func (e *Engine) checkHeld(ctx context.Context, p *peer, server domain.ServerID, before givenMark, held *domain.Held) error {
	if held == nil || !before.loaded || !before.has {
		return nil
	}
	if held.Epoch == before.epoch && held.Last != nil && held.Last.Seq >= before.seq {
		return nil
	}
	var has *uint64
	if held.Epoch == before.epoch && held.Last != nil {
		has = &held.Last.Seq
	}
	p.mu.Lock()
	if !p.loaded || p.out.Epoch != before.epoch || !e.runsLocked(p) {
		p.mu.Unlock()
		return nil
	}
	records := p.out.CheckAck(has, true, e.newEpoch())
	if len(records) != 1 {
		p.mu.Unlock()
		return nil
	}
	if _, behind := records[0].(domain.ReceiverReported); !behind {
		p.mu.Unlock()
		return nil
	}
	out := p.out
	done := e.recordLocked(p, true, records...)
	p.given = nil
	e.kickLocked(p)
	p.mu.Unlock()
	if err := waitRecorded(ctx, done); err != nil {
		return err
	}
	e.reportContinuity(server, out, records[0], "pull reply")
	return nil
}
