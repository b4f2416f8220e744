package delivery

import (
	"context"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/harmony-postbox/postbox/domain"
)

func probeConfig() Config {
	cfg := testConfig()
	cfg.ResumeProbe = true
	cfg.ProbeBackoff = domain.Backoff{First: 10 * time.Second, Max: 40 * time.Second}
	return cfg
}

func (f *fakePeers) arrived() int {
	f.gate.mu.Lock()
	defer f.gate.mu.Unlock()
	return f.gate.arrived
}

// Given a peer in queue mode that has not pulled,
// when its probe delay passes,
// then its oldest event is pushed as a probe, again after each failure,
// and once the peer takes it, the rest follow by push.
func TestAQueuedPeerIsProbedUntilItAnswersThenPushedAgain(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t, probeConfig())
		w.peers.setDown(true)
		w.send(3)
		time.Sleep(time.Second) // the retries, milliseconds apart
		synctest.Wait()
		if s := w.state(); s.Mode != domain.ModeQueue {
			t.Fatalf("after the retries: %+v", s)
		}
		queued := w.peers.arrived()
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if n := w.peers.arrived(); n != queued {
			t.Fatalf("%d pushes before the probe delay", n-queued)
		}
		time.Sleep(20 * time.Second)
		synctest.Wait()
		probed := w.peers.arrived()
		if probed == queued {
			t.Fatal("no probe after the probe delay")
		}
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		if n := w.peers.arrived(); n == probed {
			t.Fatal("no probe again after a failed one")
		}
		w.peers.setDown(false)
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		if s := w.state(); s.Mode != domain.ModePush || s.Delivered != 3 {
			t.Fatalf("after the peer came back: %+v", s)
		}
		if got := w.peers.pushes(); !slices.Equal(got, []uint64{0, 1, 2}) {
			t.Fatalf("pushed %v", got)
		}
	})
}

// Given a peer in queue mode,
// when it pulls,
// then no probe goes to it: its queue waits for its pulls.
func TestAPeerThatPullsIsNotProbed(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t, probeConfig())
		w.peers.setDown(true)
		w.send(2)
		time.Sleep(time.Second)
		synctest.Wait()
		queued := w.peers.arrived()
		batch, err := w.engine.ServePull(context.Background(), domain.Caller{ServerID: peerB, Extended: true}, nil)
		if err != nil || len(batch.Events) != 2 {
			t.Fatalf("pull: %d events, %v", len(batch.Events), err)
		}
		w.peers.setDown(false)
		time.Sleep(5 * time.Minute)
		synctest.Wait()
		if n := w.peers.arrived(); n != queued {
			t.Fatalf("%d probes to a peer that pulls", n-queued)
		}
		if s := w.state(); s.Mode != domain.ModeQueue {
			t.Fatalf("state: %+v", s)
		}
	})
}
