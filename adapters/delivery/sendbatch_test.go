package delivery

import (
	"errors"
	"testing"

	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// Given a batch of events for three peers, one of whose events is refused,
// when it is sent, then each other peer's events are stored in one append
// in the batch's order, every send gets its own outcome, and none of the
// refused peer's events is stored.
func TestSendBatchStoresEachPeersEventsInOneAppendWithAnOutcomeEach(t *testing.T) {
	t.Parallel()
	w, spy := newSpiedWorld(t)
	w.send(2) // B's outbox already holds 0 and 1
	spy.setHook(nil)
	peerD := domain.MustParseServerID("d.example:2289")
	batch := []domain.BatchSend[*syncv1.Event]{
		{To: peerB, Event: added(10)},
		{To: peerC, Event: added(20)},
		{To: peerD, Event: added(30)},
		{To: peerB, Event: added(11)},
		{To: peerD, Event: &syncv1.Event{}}, // no kind: refused
		{To: peerC, Event: added(21)},
		{To: peerB, Event: added(12)},
	}
	out := w.engine.SendBatch(t.Context(), batch)
	want := map[int]uint64{0: 2, 3: 3, 6: 4, 1: 0, 5: 1}
	for i, o := range out {
		if seq, ok := want[i]; ok {
			if o.Err != nil || o.Seq != seq {
				t.Errorf("send %d: seq %d, %v; want %d", i, o.Seq, o.Err, seq)
			}
		} else if !errors.Is(o.Err, domain.ErrInvalidArgument) {
			t.Errorf("send %d (for the refused peer): %v, want an invalid argument", i, o.Err)
		}
	}
	if n := len(spy.appends()); n != 2 {
		t.Errorf("%d outbox appends, want 2 (one for B, one for C)", n)
	}
	if users, _ := w.outboxUsers(); len(users) != 5 || users[2] != 10 || users[3] != 11 || users[4] != 12 {
		t.Errorf("B's outbox users %v, want [0 1 10 11 12]", users)
	}
	if _, ok := w.engine.registry.Lookup(peerD); ok {
		t.Errorf("the refused peer was registered")
	}
	eventually(t, "B's five events delivered", func() bool { return w.state().Delivered == 5 })
}
