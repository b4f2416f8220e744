package delivery

import (
	"bytes"
	"context"
	"fmt"
	"runtime"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// ServePull answers a Pull from caller: only caller's own queue, never
// another's. It never waits for a push (PROTOCOL.md §4: two servers pulling
// each other at startup would deadlock otherwise). A caller that is not a
// peer gets an empty reply and is not registered.
func (e *Engine) ServePull(ctx context.Context, caller domain.Caller, ack *uint64) (PullBatch, error) {
	return e.ServeAccountedPull(ctx, caller, ack, nil)
}

// ServeAccountedPull is ServePull for a caller that gave an account of
// what it applied (nil: none): one that contradicts the outbox is recorded
// first, so the reply carries what the caller really lacks. A Postbox
// caller (it signs the token extension) is also told what this server
// holds of its own events, so it learns when this server lost some even
// if it has nothing new to push (checkHeld).
func (e *Engine) ServeAccountedPull(ctx context.Context, caller domain.Caller, ack *uint64, account *domain.PullAccount) (PullBatch, error) {
	batch, err := e.serveAccountedPull(ctx, caller, ack, account)
	if err != nil || !caller.Extended {
		return batch, err
	}
	batch.Held, err = e.heldFrom(ctx, caller.ServerID)
	return batch, err
}

// heldFrom is what this server holds of server's events: nothing at all
// for a server that is not a peer. In replica mode the inbox is read
// again, as another replica may have applied some.
func (e *Engine) heldFrom(ctx context.Context, server domain.ServerID) (*domain.Held, error) {
	id, ok := e.registry.Lookup(server)
	if !ok {
		return &domain.Held{}, nil
	}
	p := e.peer(id)
	p.recvMu.Lock()
	defer p.recvMu.Unlock()
	if err := e.freshInboxLocked(ctx, p); err != nil {
		return nil, err
	}
	held := &domain.Held{Epoch: p.in.Epoch}
	if p.in.HasSeq {
		held.Last = &domain.EventRef{Seq: p.in.LastSeq, ID: bytes.Clone(p.in.LastID)}
	}
	return held, nil
}

func (e *Engine) serveAccountedPull(ctx context.Context, caller domain.Caller, ack *uint64, account *domain.PullAccount) (PullBatch, error) {
	if err := e.awaitStart(ctx); err != nil {
		return PullBatch{}, err
	}
	peerID, found, err := domain.CheckCaller(e.registry, caller.ServerID)
	if err == nil && !found {
		if renames := e.renamesOf(); renames != nil {
			renames.learnKeylessPeers(ctx)
		}
		err = e.registry.StrangerCheck(caller.ServerID)
	}
	if err != nil || !found {
		return PullBatch{}, err
	}
	id := streams.PeerID(peerID)
	p := e.peer(id)
	p.mu.Lock()
	if e.owners != nil && !p.owned && !p.serving && len(p.journal) == 0 && !p.flushing {
		// Another replica runs the peer: the outbox and the delivery
		// records moved on without this one, which must serve what they
		// hold now, not what it read when it last looked.
		p.loaded = false
	}
	if err := e.loadLocked(ctx, p); err != nil {
		p.mu.Unlock()
		return PullBatch{}, err
	}
	if p.serving {
		// One Pull at a time per peer; a second concurrent one answers
		// empty rather than wait, and the peer pulls again.
		p.mu.Unlock()
		return PullBatch{}, nil
	}
	var checkedDone chan error
	if account != nil {
		checked, err := e.checkAccountLocked(ctx, p, ack, *account)
		if err != nil {
			p.mu.Unlock()
			return PullBatch{}, err
		}
		if len(checked) > 0 {
			// The records say where delivery goes on; the acknowledgement
			// counts no further.
			before := p.out
			checkedDone = e.recordLocked(p, true, checked...)
			ack, p.given = nil, nil
			defer e.reportContinuity(caller.ServerID, before, checked[0], "pull")
		}
		if account.Epoch != p.out.Epoch {
			// The caller acknowledges an event of an earlier epoch: it has
			// nothing of this one, so its acknowledgement counts nothing
			// here (taken at its number, it would count this epoch's
			// event there delivered, though the caller never got it).
			ack = nil
		}
	}
	plan, err := p.out.PlanPull(ack)
	if err != nil {
		p.mu.Unlock()
		return PullBatch{}, err
	}
	if p.out.Mode == domain.ModeQueue {
		e.cancelProbeLocked(p)
	}
	done := e.recordLocked(p, true, plan.Record...)
	if plan.Available == 0 {
		e.kickLocked(p) // back in push mode, with events that came in meanwhile
		p.mu.Unlock()
		if err := waitRecorded(ctx, checkedDone); err != nil {
			return PullBatch{}, err
		}
		return PullBatch{}, waitRecorded(ctx, done)
	}
	p.serving = true
	ahead := e.takeAheadLocked(p, plan.From)
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.serving = false
		p.mu.Unlock()
	}()
	if err := waitRecorded(ctx, checkedDone); err != nil {
		return PullBatch{}, err
	}
	if err := waitRecorded(ctx, done); err != nil {
		return PullBatch{}, err
	}

	events, lastID, err := e.readReply(ctx, p, ahead, plan.From, plan.Available)
	if err != nil || len(events) == 0 {
		return PullBatch{}, err
	}
	e.noteOldest(p, plan.From, events[0])
	// A Postbox peer (it signs the token extension) acknowledges in its next
	// Pull, even on its first, so its events count as delivered only then
	// and a lost reply is sent again. An upstream peer never does: its
	// events count as delivered once the reply is written, as upstream does.
	p.mu.Lock()
	done = e.recordLocked(p, true, domain.ServedPull(plan.From, uint64(len(events)), caller.Extended))
	epoch := p.out.Epoch
	// The next reply is read from now, while this one's record commits and
	// the peer stores this one: the read is what a drain waits for most.
	e.readAheadLocked(p, plan.From+uint64(len(events)))
	p.mu.Unlock()
	if err := waitRecorded(ctx, done); err != nil {
		return PullBatch{}, err
	}
	e.cfg.Observer.PullServed(caller.ServerID, len(events))
	return PullBatch{Events: events, FirstSeq: plan.From, HasSeq: true, Epoch: epoch, LastID: lastID}, nil
}

// checkAccountLocked compares a continuity-checking caller's account with
// the outbox and decides what to record when they disagree. p.mu is held.
func (e *Engine) checkAccountLocked(ctx context.Context, p *peer, ack *uint64, account domain.PullAccount) ([]domain.DeliveryEvent, error) {
	switch {
	case account.Epoch != p.out.Epoch && !p.out.KnowsEpoch(account.Epoch):
		// The caller holds events of an epoch this outbox never had.
		return p.out.Diverged(ack, e.newEpoch()), nil
	case account.Epoch != p.out.Epoch:
		// The caller has nothing of the current epoch yet.
		return p.out.CheckAck(nil, true, e.newEpoch()), nil
	}
	same := true
	if ack != nil && *ack < p.out.Head && len(account.AckID) > 0 {
		id, err := e.outboxID(ctx, p.id, nil, *ack)
		if err != nil {
			return nil, err
		}
		same = bytes.Equal(id, account.AckID)
	}
	return p.out.CheckAck(ack, same, e.newEpoch()), nil
}

// readBatch reads up to n outbox events from from, within the reply caps,
// and the outbox ID of the last one.
func (e *Engine) readBatch(ctx context.Context, id streams.PeerID, from, n uint64) ([]*syncv1.Event, []byte, error) {
	n = min(n, uint64(e.cfg.PullReplyMaxEvents))
	out := make([]*syncv1.Event, 0, min(n, 1024))
	var lastID eventstore.EventID
	size := 0
	for uint64(len(out)) < n {
		if len(out) > 0 {
			// A read ahead runs beside the peer's append and this server's
			// own commits: between pages it lets a goroutine that waits for
			// a CPU (a commit back from its sync) run, rather than wait for
			// the scheduler to preempt the read.
			runtime.Gosched()
		}
		recs, err := e.store.ReadStream(ctx, streams.Outbox(id), from+uint64(len(out)), int(min(n-uint64(len(out)), 1024)))
		if err != nil {
			return nil, nil, fmt.Errorf("read outbox of %s: %w", id, err)
		}
		if len(recs) == 0 {
			break
		}
		for _, r := range recs {
			ev, eventSize, err := streams.DecodeEnqueuedSized(r)
			if err != nil {
				return nil, nil, err
			}
			// Each event costs its bytes plus a tag and a length prefix.
			cost := eventSize + 6
			if len(out) > 0 && size+cost > e.cfg.PullReplyMaxBytes {
				return out, bytes.Clone(lastID[:]), nil
			}
			size += cost
			out, lastID = append(out, ev), r.ID
		}
	}
	return out, bytes.Clone(lastID[:]), nil
}
