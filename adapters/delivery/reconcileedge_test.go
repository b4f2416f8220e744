package delivery

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// refusingPeer answers checked pushes with the refusals it is given, in
// turn (refuseAlways: the last one for ever), then takes every push.
type refusingPeer struct {
	mu           sync.Mutex
	refusals     []*domain.EventRef // what each refusal says the receiver holds
	refuseAlways bool
	pushes       int
}

func (r *refusingPeer) PushClaimed(_ context.Context, _ domain.ServerID, seq uint64, events []*syncv1.Event, _ domain.PushClaim) (domain.PushResult, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pushes++
	if len(r.refusals) > 0 {
		applied := r.refusals[0]
		if !r.refuseAlways || len(r.refusals) > 1 {
			r.refusals = r.refusals[1:]
		}
		return domain.PushResult{Answer: &domain.PushAnswer{Refused: true, Applied: applied}}, nil
	}
	last := seq + uint64(len(events)) - 1
	return domain.PushResult{Through: last, Answer: &domain.PushAnswer{Applied: &domain.EventRef{Seq: last}}}, nil
}

func (r *refusingPeer) Push(ctx context.Context, peer domain.ServerID, seq uint64, events []*syncv1.Event) (domain.PushResult, error) {
	return r.PushClaimed(ctx, peer, seq, events, domain.PushClaim{})
}

func (r *refusingPeer) PullAccounted(context.Context, domain.ServerID, *uint64, domain.PullAccount) (PullBatch, error) {
	return PullBatch{}, nil
}

func (r *refusingPeer) Pull(context.Context, domain.ServerID, *uint64) (PullBatch, error) {
	return PullBatch{}, nil
}

// refusedWorld is a fault world pushing to peer, reporting continuity
// findings to the returned observer.
func refusedWorld(t *testing.T, peer *refusingPeer) (*world, *faults, *callObserver) {
	t.Helper()
	obs := &callObserver{}
	cfg := testConfig()
	cfg.Observer = obs
	f := &faults{}
	w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, client: peer, cfg: cfg, logs: &logBuffer{},
		wrap: func(s Store) Store { f.Store = s; return f }}
	w.open()
	return w, f, obs
}

// Given a receiver whose refusal names an event it holds without its ID
// (it does not know it), the sender takes its account as it is: delivery
// goes on after that event, no new epoch, and no failed push is logged.
func TestARefusalNamingAnEventWithoutItsIDIsFollowed(t *testing.T) {
	t.Parallel()
	peer := &refusingPeer{refusals: []*domain.EventRef{{Seq: 0}}}
	w, _, obs := refusedWorld(t, peer)
	w.send(3)
	eventually(t, "delivered", func() bool { return w.state().Delivered == 3 })
	if got := obs.seen("continuity"); !slices.Equal(got, []string{"continuity " + peerB.String() + " receiver_ahead"}) {
		t.Fatalf("reported %v", got)
	}
	if s := w.state(); len(s.PastEpochs) != 0 {
		t.Fatalf("a new epoch: %+v", s)
	}
	if strings.Contains(w.logs.String(), "push failed; retrying") {
		t.Fatalf("a reconciled refusal was logged as a failed push:\n%s", w.logs.String())
	}
}

// Given a receiver whose refusal names an event at the outbox's head (one
// more than it holds: this server's store went back), a new epoch starts.
func TestARefusalNamingTheHeadStartsANewEpoch(t *testing.T) {
	t.Parallel()
	peer := &refusingPeer{refusals: []*domain.EventRef{{Seq: 1, ID: []byte("lost here")}}}
	w, _, obs := refusedWorld(t, peer)
	w.send(1)
	eventually(t, "delivered", func() bool { return w.state().Delivered == 1 })
	if got := obs.seen("continuity"); !slices.Equal(got, []string{"continuity " + peerB.String() + " epoch_started"}) {
		t.Fatalf("reported %v", got)
	}
}

// Given a receiver that keeps refusing a push while its account says it
// holds exactly what the sender claims (nothing to reconcile), each
// refusal is a failed attempt: the peer reaches queue mode.
func TestRefusalsThatMatchTheClaimAreFailures(t *testing.T) {
	t.Parallel()
	peer := &refusingPeer{refusals: []*domain.EventRef{nil}, refuseAlways: true}
	w, _, _ := refusedWorld(t, peer)
	w.send(1)
	eventually(t, "queue mode", func() bool { return w.state().Mode == domain.ModeQueue })
	if !strings.Contains(w.logs.String(), "its account (nothing) matches what this server claimed") {
		t.Fatalf("log:\n%s", w.logs.String())
	}
}

// Given a refusal whose named event cannot be read from the outbox (to
// compare IDs), the failure is logged and the push is made again.
func TestARefusalThatCannotBeCheckedIsLoggedAndPushedAgain(t *testing.T) {
	t.Parallel()
	peer := &refusingPeer{}
	w, f, _ := refusedWorld(t, peer)
	w.send(1)
	eventually(t, "the first delivered", func() bool { return w.state().Delivered == 1 })
	peer.mu.Lock()
	peer.refusals = []*domain.EventRef{{Seq: 0, ID: []byte("some id")}}
	peer.mu.Unlock()
	// The push of event 1 takes it from what the outbox writer just
	// appended; the check of event 0 reads the outbox.
	f.failAfter("read", streams.OutboxPrefix, 0, 1)
	w.send(1)
	eventually(t, "delivered", func() bool { return w.state().Delivered == 2 })
	if !strings.Contains(w.logs.String(), "reading the outbox failed") {
		t.Fatalf("log:\n%s", w.logs.String())
	}
}
