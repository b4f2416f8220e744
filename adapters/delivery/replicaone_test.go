package delivery

import (
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// replicaWorld is a fault world whose engine is a replica (named r1) that
// owns what owners says; it starts owning every peer.
func replicaWorld(t *testing.T, cfg Config) (*world, *faults, *fakeOwners) {
	t.Helper()
	f := &faults{}
	owners := newFakeOwners("r1", true)
	w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: cfg, logs: &logBuffer{},
		wrap: func(s Store) Store { f.Store = s; return f }}
	w.beforeRun = func() { w.engine.UseOwners(owners) }
	w.open()
	return w, f, owners
}

func (w *world) owned() bool {
	p := w.engine.peer(mustLookup(w.t, w, peerB))
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.owned
}

// Given a replica whose claim of a peer (its owner term's record) fails,
// the failure is logged and the claim made again, and the peer's events
// then go out; while it owns the peer it does not let it go.
func TestAReplicasFailedClaimIsLoggedAndMadeAgain(t *testing.T) {
	t.Parallel()
	w, f, _ := replicaWorld(t, testConfig())
	f.fail("append", streams.DeliveryPrefix, 1)
	w.send(1)
	eventually(t, "delivered", func() bool { return w.state().Delivered == 1 })
	if !strings.Contains(w.logs.String(), "replica: claiming a peer failed; trying again") {
		t.Fatalf("log:\n%s", w.logs.String())
	}
	if s := w.state(); s.Owner != (domain.OwnerTerm{Term: 1, Replica: "r1"}) {
		t.Fatalf("owner %+v", s.Owner)
	}
	time.Sleep(3 * ownerPoll)
	if strings.Contains(w.logs.String(), "peer moved to another replica") {
		t.Fatalf("a peer the replica owns was let go:\n%s", w.logs.String())
	}
}

// Given a replica failing to claim a peer, when the owners move the peer
// elsewhere it stops trying and leaves the peer free; given back, it
// claims it.
func TestAReplicaStopsClaimingAPeerItNoLongerOwns(t *testing.T) {
	t.Parallel()
	w, f, owners := replicaWorld(t, testConfig())
	f.fail("append", streams.DeliveryPrefix, -1)
	w.send(1)
	eventually(t, "a failed claim", func() bool { return strings.Contains(w.logs.String(), "claiming a peer failed") })
	owners.set(false)
	time.Sleep(300 * time.Millisecond)
	p := w.engine.peer(mustLookup(t, w, peerB))
	eventually(t, "the claim given up", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return !p.acquiring
	})
	f.clear()
	owners.set(true)
	eventually(t, "delivered", func() bool { return w.state().Delivered == 1 })
}

// Given a replica that owns a peer, when the owners move it elsewhere, the
// replica stops its work (its periodic pull too), and logs it.
func TestAReplicaLetsAPeerGoWhenItMoves(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.PullInterval = time.Minute
	w, _, owners := replicaWorld(t, cfg)
	w.send(1)
	eventually(t, "delivered", func() bool { return w.state().Delivered == 1 && w.owned() })
	p := w.engine.peer(mustLookup(t, w, peerB))
	// The takeover's pull ends (its end announced), then arms the
	// periodic one.
	eventually(t, "the takeover pull over and the periodic pull armed", func() bool {
		recs, err := w.store.ReadStreamBackward(t.Context(), streams.Pulling(p.id), 1)
		if err != nil || len(recs) != 1 {
			return false
		}
		if u, err := streams.DecodePullUnderWay(recs[0]); err != nil || !u.Ended {
			return false
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.pullTimer != nil
	})
	time.Sleep(100 * time.Millisecond) // the takeover's goroutine arms it right after the end
	owners.set(false)
	eventually(t, "the peer let go", func() bool { return !w.owned() })
	p.mu.Lock()
	timer := p.pullTimer
	p.mu.Unlock()
	if timer != nil {
		t.Fatal("the periodic pull of a peer let go is still armed")
	}
	if !strings.Contains(w.logs.String(), "replica: peer moved to another replica") {
		t.Fatalf("log:\n%s", w.logs.String())
	}
}

// Given a replica taking over a peer in queue mode, it probes the peer,
// pulls it (announcing the pull to the other replicas, and its end), and
// goes on pulling it periodically; a failed takeover pull is logged.
func TestAReplicaTakingOverAPeerProbesAndPullsIt(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := probeConfig()
		cfg.PullInterval = time.Minute
		w, _, _ := replicaWorld(t, cfg)
		w.peers.setDown(true)
		pulls := &pullCounter{fn: func(int64, *uint64) (peerclient.PullResult, error) {
			return peerclient.PullResult{}, errors.New("connection refused")
		}}
		pulls.install(w)
		w.send(2)
		eventually(t, "queue mode", func() bool { return w.state().Mode == domain.ModeQueue })
		w.restart() // taken over again: the probe and pulls start from the takeover
		eventually(t, "owned", w.owned)
		w.peers.setDown(false)
		time.Sleep(150 * time.Second)
		synctest.Wait()
		if s := w.state(); s.Mode != domain.ModePush || s.Delivered != 2 {
			t.Fatalf("after the takeover: %+v", s)
		}
		if n := pulls.n.Load(); n < 3 {
			t.Fatalf("%d pulls in 150 s after the takeover, want the takeover's and periodic ones", n)
		}
		if !strings.Contains(w.logs.String(), "pull on taking a peer over failed") {
			t.Fatalf("log:\n%s", w.logs.String())
		}
		recs, err := w.store.ReadStreamBackward(t.Context(), streams.Pulling(mustLookup(t, w, peerB)), 1)
		if err != nil || len(recs) != 1 {
			t.Fatalf("pull announcements: %d, %v", len(recs), err)
		}
		if u, err := streams.DecodePullUnderWay(recs[0]); err != nil || !u.Ended {
			t.Fatalf("the last pull announcement %+v (%v) does not say it ended", u, err)
		}
	})
}

// Given pull announcements that cannot be written, the takeover pull goes
// on, and the operator is warned that pushes at other replicas do not wait
// for it.
func TestAPullAnnouncementThatCannotBeWrittenIsWarnedOf(t *testing.T) {
	t.Parallel()
	w, f, _ := replicaWorld(t, testConfig())
	f.fail("append", streams.PullingPrefix, -1)
	w.send(1)
	eventually(t, "the warning", func() bool {
		return strings.Contains(w.logs.String(), "replica: cannot announce a pull to the other replicas")
	})
}
