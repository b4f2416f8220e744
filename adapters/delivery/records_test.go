package delivery

import (
	"context"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/domain"
)

// heldBatchClock is the system's clock, except that the delay after which
// batched delivery records are written never ends.
type heldBatchClock struct{ systemClock }

type neverTimer struct{}

func (neverTimer) Stop() bool               { return true }
func (neverTimer) Reset(time.Duration) bool { return true }

func (c heldBatchClock) AfterFunc(d time.Duration, f func()) domain.Timer {
	if d == recordDelay {
		return neverTimer{}
	}
	return c.systemClock.AfterFunc(d, f)
}

// letOneThrough lets the push held at the gate go, and holds the next ones.
func (g *pushGate) letOneThrough() (release func()) {
	next := make(chan struct{})
	g.mu.Lock()
	held := g.hold
	g.hold = next
	g.mu.Unlock()
	close(held)
	return func() {
		g.mu.Lock()
		g.hold = nil
		g.mu.Unlock()
		close(next)
	}
}

func (w *world) recordedPushes() int {
	n := 0
	for _, r := range w.deliveryRecords() {
		if _, ok := r.(domain.EventPushed); ok {
			n++
		}
	}
	return n
}

// Given a push that succeeded while the next one is in flight,
// when the batch delay passes,
// then the first push's record is in the store, though the push loop is
// still busy.
func TestAPushIsRecordedWithinTheBatchDelayWhileTheNextIsInFlight(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	w.holdPushes()
	w.send(2)
	eventually(t, "the first push at the peer", func() bool { return w.peers.gate.arrivedIs(1) })
	release := w.peers.gate.letOneThrough()
	defer release()
	eventually(t, "the second push at the peer", func() bool { return w.peers.gate.arrivedIs(2) })
	eventually(t, "the first push recorded", func() bool { return w.recordedPushes() == 1 })
}

// Given a peer in queue mode and a batch delay that never ends,
// when the peer pulls,
// then the reply comes: the records a Pull waits for are written at once,
// not batched.
func TestARecordSomeoneWaitsForIsWrittenAtOnce(t *testing.T) {
	t.Parallel()
	w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: testConfig(), clock: heldBatchClock{}}
	w.open()
	w.peers.setDown(true)
	w.send(2)
	eventually(t, "queue mode", func() bool { return w.state().Mode == domain.ModeQueue })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	batch, err := w.engine.ServePull(ctx, domain.Caller{ServerID: peerB, Extended: true}, nil)
	if err != nil || len(batch.Events) != 2 {
		t.Fatalf("pull: %d events, %v", len(batch.Events), err)
	}
	ack := uint64(1)
	if _, err := w.engine.ServePull(ctx, domain.Caller{ServerID: peerB, Extended: true}, &ack); err != nil {
		t.Fatalf("acknowledging pull: %v", err)
	}
	if s := w.state(); s.Delivered != 2 || s.Mode != domain.ModePush {
		t.Fatalf("after: %+v", s)
	}
}
