package delivery

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// An operator's resume: refused for an unknown peer, after a stop, and
// when the peer's state cannot be read.
func TestAResumeThatCannotBeMadeIsRefused(t *testing.T) {
	t.Parallel()
	w, f := faultWorld(t, testConfig())
	if err := w.engine.Resume(t.Context(), peerB); !errors.Is(err, domain.ErrUnknownPeer) {
		t.Fatalf("resume of an unknown peer: %v", err)
	}
	pushSeqs(t, w, seqOf(0)) // the sender, known but its delivery state not read
	f.fail("readBackward", streams.OutboxPrefix, 1)
	if err := w.engine.Resume(t.Context(), sender); !errors.Is(err, errInjected) {
		t.Fatalf("resume whose state cannot be read: %v", err)
	}
	w.stop()
	if err := w.engine.Resume(context.Background(), sender); !errors.Is(err, domain.ErrUnavailable) {
		t.Fatalf("resume after the stop: %v", err)
	}
}

// Given a peer in queue mode, an operator's resume is recorded before it
// returns (delivery records otherwise wait to be batched), and the events
// are pushed.
func TestAResumeIsRecordedAndPushes(t *testing.T) {
	t.Parallel()
	w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: testConfig(), clock: heldBatchClock{}}
	w.open()
	w.peers.setDown(true)
	w.send(2)
	eventually(t, "queue mode", func() bool { return w.state().Mode == domain.ModeQueue })
	w.peers.setDown(false)
	if err := w.engine.Resume(t.Context(), peerB); err != nil {
		t.Fatal(err)
	}
	resumed := false
	for _, r := range w.deliveryRecords() {
		_, ok := r.(domain.PushResumed)
		resumed = resumed || ok
	}
	if !resumed {
		t.Fatalf("the resume is not recorded: %v", w.deliveryRecords())
	}
	eventually(t, "both delivered", func() bool { return w.state().Delivered == 2 })
}

// Given a peer in queue mode that does not pull, its resume probe fails
// (logged, and tried again later) while the peer is down, and once it
// answers the peer is back in push mode (logged) and gets the rest.
func TestAResumeProbeIsLoggedAndTriedAgainUntilItWorks(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: probeConfig(), logs: &logBuffer{}}
		w.open()
		w.peers.setDown(true)
		w.send(3)
		eventually(t, "queue mode", func() bool { return w.state().Mode == domain.ModeQueue })
		queued := w.peers.arrived()
		time.Sleep(45 * time.Second) // probes after about 10 s and 20 s more
		synctest.Wait()
		if n := w.peers.arrived() - queued; n < 2 {
			t.Fatalf("%d probes in 45 s", n)
		}
		if !strings.Contains(w.logs.String(), "resume probe failed") {
			t.Fatalf("log:\n%s", w.logs.String())
		}
		w.peers.setDown(false)
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		if s := w.state(); s.Mode != domain.ModePush || s.Delivered != 3 {
			t.Fatalf("state: %+v", s)
		}
		if !strings.Contains(w.logs.String(), "resume probe succeeded: push mode") {
			t.Fatalf("log:\n%s", w.logs.String())
		}
	})
}
