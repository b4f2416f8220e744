package delivery

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// multiAppender is a store that appends to several streams in one commit
// (the embedded store); without it each peer's events are one append.
type multiAppender interface {
	AppendStreams(ctx context.Context, parts []eventstore.StreamAppend) ([]eventstore.AppendResult, []error)
}

// batchPart is one peer's share of a SendBatch.
type batchPart struct {
	to   domain.ServerID
	idx  []int // of the batch's sends
	data []eventstore.EventData
	p    *peer
	seq  uint64 // of its first event, once stored
	err  error
}

// SendBatch appends many events for many peers and returns an outcome per
// send, in order. Each peer's events are one append to its outbox (all or
// none, in the batch's order). A batch for one peer goes in that peer's
// next append beside the Sends that wait for it; a batch for several takes
// their outbox writers (in the order of their IDs) and appends to all the
// outboxes at once: in one commit on the embedded store, one append per
// peer on EventStoreDB. A failure for one peer leaves the others' outcomes
// as they are.
func (e *Engine) SendBatch(ctx context.Context, sends []domain.BatchSend[*syncv1.Event]) []domain.SendOutcome {
	out := make([]domain.SendOutcome, len(sends))
	if err := e.awaitStart(ctx); err != nil {
		for i := range out {
			out[i].Err = err
		}
		return out
	}
	byPeer := map[domain.ServerID]*batchPart{}
	var parts []*batchPart
	for i, s := range sends {
		part, ok := byPeer[s.To]
		if !ok {
			part = &batchPart{to: s.To}
			byPeer[s.To] = part
			parts = append(parts, part)
		}
		part.idx = append(part.idx, i)
	}
	var ready []*batchPart
	for _, part := range parts {
		if e.prepareBatchPart(ctx, sends, part) {
			ready = append(ready, part)
		}
	}
	switch {
	case len(ready) == 1:
		part := ready[0]
		part.seq, part.err = e.enqueueSend(ctx, part.p, &outboxSend{data: part.data})
	case len(ready) > 1:
		e.appendBatch(ready)
	}
	for _, part := range parts {
		for n, i := range part.idx {
			if part.err != nil {
				out[i].Err = part.err
				continue
			}
			out[i].Seq = part.seq + uint64(n)
		}
	}
	return out
}

// prepareBatchPart encodes a peer's events and registers the peer; it
// reports whether the part is ready to append. A refused event refuses
// the peer's others: a peer's sends are stored all or none.
func (e *Engine) prepareBatchPart(ctx context.Context, sends []domain.BatchSend[*syncv1.Event], part *batchPart) bool {
	part.data = make([]eventstore.EventData, 0, len(part.idx))
	for _, i := range part.idx {
		var d eventstore.EventData
		err := fmt.Errorf("%w: idempotency keys are taken by Send, not yet by SendBatch", domain.ErrInvalidArgument)
		if sends[i].Key == "" {
			d, err = e.encodeSend(sends[i].Event, "", [32]byte{})
		}
		if err != nil {
			part.err = fmt.Errorf("%w (send %d of the batch; the batch's other sends to %s are not stored either)", err, i, part.to)
			return false
		}
		part.data = append(part.data, d)
	}
	id, err := e.registry.Register(ctx, part.to)
	if err != nil {
		part.err = err
		return false
	}
	part.p = e.peer(id)
	return true
}

// appendBatch appends the parts, each to its peer's outbox, holding their
// writers, and sets each part's outcome.
func (e *Engine) appendBatch(parts []*batchPart) {
	slices.SortFunc(parts, func(a, b *batchPart) int { return cmp.Compare(a.p.id, b.p.id) })
	for _, part := range parts {
		e.claimWriter(part.p)
	}
	// Once the writers are held the appends are made even if the caller
	// goes away, within a bound, as a writer's are.
	ctx, cancel := context.WithTimeout(context.Background(), outboxAppendLimit)
	defer cancel()
	var rest []*batchPart // not stored by the one commit
	if multi, ok := e.store.(multiAppender); ok {
		var appends []eventstore.StreamAppend
		var held []*batchPart
		for _, part := range parts {
			w := &part.p.sends
			if !w.known {
				head, err := e.outboxLen(ctx, part.p.id)
				if err != nil {
					rest = append(rest, part)
					continue
				}
				w.next, w.known = head, true
			}
			appends = append(appends, eventstore.StreamAppend{Stream: streams.Outbox(part.p.id), Expected: expectAfter(w.next), Events: part.data})
			held = append(held, part)
		}
		results, errs := multi.AppendStreams(ctx, appends)
		for i, part := range held {
			w := &part.p.sends
			if errs[i] != nil || results[i].NextExpectedRevision != w.next+uint64(len(part.data))-1 {
				rest = append(rest, part) // appended alone below, which tells what landed
				continue
			}
			part.seq = w.next
			w.next += uint64(len(part.data))
		}
	} else {
		rest = parts
	}
	var wg sync.WaitGroup
	for _, part := range rest {
		wg.Add(1)
		go func() {
			defer wg.Done()
			seqs, err := e.appendOutboxEvents(ctx, part.p, part.data)
			switch {
			case len(seqs) == len(part.data):
				part.seq = seqs[0]
			case err == nil:
				part.err = fmt.Errorf("append to outbox of %s: %d of %d events stored", part.to, len(seqs), len(part.data))
			default:
				part.err = fmt.Errorf("append to outbox of %s: %w", part.to, err)
			}
		}()
	}
	wg.Wait()
	for _, part := range parts {
		p := part.p
		p.mu.Lock()
		p.out.Head = max(p.out.Head, p.sends.next)
		e.kickLocked(p)
		p.mu.Unlock()
		e.releaseWriter(p)
	}
}
