package delivery

import (
	"context"
	"fmt"
	"sync"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// maxBatchPeers bounds the peers of one batch appended at once.
const maxBatchPeers = 64

// SendBatch appends many events for many peers and returns an outcome per
// send, in order. Each peer's events go in one append to its outbox (all
// or none, in the batch's order), beside the Sends that wait for the same
// outbox; the peers' appends run concurrently, so on the embedded store
// they share its group commit, and on EventStoreDB each is its own append.
// A failure for one peer leaves the others' outcomes as they are.
func (e *Engine) SendBatch(ctx context.Context, sends []domain.BatchSend[*syncv1.Event]) []domain.SendOutcome {
	out := make([]domain.SendOutcome, len(sends))
	if err := e.awaitStart(ctx); err != nil {
		for i := range out {
			out[i].Err = err
		}
		return out
	}
	var order []domain.ServerID
	byPeer := map[domain.ServerID][]int{}
	for i, s := range sends {
		if _, ok := byPeer[s.To]; !ok {
			order = append(order, s.To)
		}
		byPeer[s.To] = append(byPeer[s.To], i)
	}
	slots := make(chan struct{}, maxBatchPeers)
	var wg sync.WaitGroup
	for _, to := range order {
		slots <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-slots; wg.Done() }()
			e.sendPeerBatch(ctx, to, sends, byPeer[to], out)
		}()
	}
	wg.Wait()
	return out
}

// sendPeerBatch appends the sends at idx, all for to, in one append, and
// sets their outcomes.
func (e *Engine) sendPeerBatch(ctx context.Context, to domain.ServerID, sends []domain.BatchSend[*syncv1.Event], idx []int, out []domain.SendOutcome) {
	fail := func(bad int, err error) {
		for _, i := range idx {
			out[i].Err = err
			if i != bad && bad >= 0 {
				out[i].Err = fmt.Errorf("%w: not stored: send %d of the batch, for the same peer, was refused, and a peer's sends are stored all or none", domain.ErrInvalidArgument, bad)
			}
		}
	}
	data := make([]eventstore.EventData, 0, len(idx))
	for _, i := range idx {
		if sends[i].Key != "" {
			fail(i, fmt.Errorf("%w: idempotency keys are taken by Send, not yet by SendBatch", domain.ErrInvalidArgument))
			return
		}
		d, err := e.encodeSend(sends[i].Event, "", [32]byte{})
		if err != nil {
			fail(i, err)
			return
		}
		data = append(data, d)
	}
	id, err := e.registry.Register(ctx, to)
	if err != nil {
		fail(-1, err)
		return
	}
	first, err := e.enqueueSend(ctx, e.peer(id), &outboxSend{data: data})
	if err != nil {
		fail(-1, fmt.Errorf("append to outbox of %s: %w", to, err))
		return
	}
	for n, i := range idx {
		out[i].Seq = first + uint64(n)
	}
}
