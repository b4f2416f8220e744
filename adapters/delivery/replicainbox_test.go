package delivery

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// A replica's Pull acknowledges what the shared inbox holds, including
// what another replica applied since this one last read it: an
// acknowledgement from its own older view told the sender the receiver
// had lost events (found by the simulation, seed 3 with replicas).
func TestAReplicasPullAcknowledgesWhatAnotherReplicaApplied(t *testing.T) {
	t.Parallel()
	// Given two replicas of a receiver, each of which applied a push from
	// peer B: seq 0 at the first, then seq 1 at the second.
	rp := newReplicaPair(t)
	var mu sync.Mutex
	var acks []*uint64
	rp.peers.mu.Lock()
	rp.peers.pullFn = func(ack *uint64) (peerclient.PullResult, error) {
		mu.Lock()
		defer mu.Unlock()
		acks = append(acks, ack)
		return peerclient.PullResult{}, nil
	}
	rp.peers.mu.Unlock()
	ctx := context.Background()
	b := domain.Caller{ServerID: peerB, Extended: true}
	for i, seq := range []uint64{0, 1} {
		if err := rp.engine[i].AcceptPush(ctx, b, []*syncv1.Event{added(seq)}, &seq); err != nil {
			t.Fatalf("push of seq %d at replica %d: %v", seq, i, err)
		}
	}
	// When the first replica pulls B.
	if err := rp.engine[0].PullFrom(ctx, peerB); err != nil {
		t.Fatal(err)
	}
	// Then it acknowledges seq 1, which the other replica applied.
	mu.Lock()
	defer mu.Unlock()
	switch last := acks[len(acks)-1]; {
	case last == nil:
		t.Fatal("the pull acknowledged nothing, want seq 1")
	case *last != 1:
		t.Fatalf("the pull acknowledged seq %d, want seq 1", *last)
	}
}

// A replica takes a checked push that continues what another replica
// applied: it judges the claim on the shared inbox, not on its own older
// view of it (which refused the push and told the sender this server had
// lost events: the simulation, seed 16 with replicas).
func TestAReplicaTakesAPushContinuingWhatAnotherReplicaApplied(t *testing.T) {
	t.Parallel()
	// Given two replicas of a receiver, each of which applied a push from
	// peer B: seq 0 at the first, then seq 1 at the second.
	rp := newReplicaPair(t)
	ctx := context.Background()
	b := domain.Caller{ServerID: peerB, Extended: true}
	for i, seq := range []uint64{0, 1} {
		if err := rp.engine[i].AcceptPush(ctx, b, []*syncv1.Event{added(seq)}, &seq); err != nil {
			t.Fatalf("push of seq %d at replica %d: %v", seq, i, err)
		}
	}
	// When B pushes seq 2 to the first, saying it gave seq 1 last.
	seq := uint64(2)
	answer, err := rp.engine[0].AcceptClaimedPush(ctx, b, []*syncv1.Event{added(seq)}, &seq,
		&domain.PushClaim{Prev: &domain.EventRef{Seq: 1}})
	// Then the push is applied.
	if err != nil {
		t.Fatal(err)
	}
	if answer.Refused || answer.Applied == nil || answer.Applied.Seq != 2 {
		t.Fatalf("answer %+v (applied %v), want seq 2 applied", answer, answer.Applied)
	}
}

// A Pull served at a replica that does not run the peer serves the outbox
// as it is now: one that served the peer before, then kept its old view
// while the owner appended, answered every later Pull empty, and the
// events never arrived (found by the simulation, seed 290 with replicas).
func TestAPullAtAReplicaNotRunningThePeerServesWhatTheOwnerAppended(t *testing.T) {
	t.Parallel()
	// Given B in queue mode at the owner, r1, with two events; B pulls
	// them at the other replica, r2.
	rp := newReplicaPair(t)
	rp.peers.setDown(true)
	rp.send(t, 0, 0, 2)
	id := func() streams.PeerID { i, _ := rp.engine[0].registry.Lookup(peerB); return i }
	eventually(t, "queue mode recorded", func() bool {
		return slices.ContainsFunc(rp.records(t), func(r domain.DeliveryEvent) bool { _, ok := r.(domain.QueueModeEntered); return ok })
	})
	ctx := context.Background()
	b := domain.Caller{ServerID: peerB, Extended: true}
	rp.engine[1].registry.Refresh(ctx)
	batch, err := rp.engine[1].ServeAccountedPull(ctx, b, nil, &domain.PullAccount{})
	if err != nil || len(batch.Events) != 2 {
		t.Fatalf("B's first Pull at r2: %d events, %v; want 2", len(batch.Events), err)
	}
	// When the owner appends two more and B pulls at r2 again,
	// acknowledging the first two.
	rp.send(t, 0, 2, 2)
	ack := uint64(1)
	batch, err = rp.engine[1].ServeAccountedPull(ctx, b, &ack, &domain.PullAccount{Epoch: batch.Epoch, AckID: batch.LastID})
	// Then it gets them.
	if err != nil || len(batch.Events) != 2 || batch.FirstSeq != 2 {
		t.Fatalf("B's second Pull at r2 (outbox %s): %d events from %d, %v; want 2 from 2", id(), len(batch.Events), batch.FirstSeq, err)
	}
}
