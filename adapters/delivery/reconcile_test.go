package delivery

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// claimLink carries one engine's checked pushes (with their continuity
// claims) straight into another's AcceptClaimedPush, answering as the
// federation service does; down makes it refuse.
type claimLink struct {
	mu   sync.Mutex
	to   *Engine
	from domain.ServerID
	down bool
}

var errLinkDown = errors.New("connection refused")

func (l *claimLink) target() (*Engine, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.to, l.down
}

func (l *claimLink) PushClaimed(ctx context.Context, _ domain.ServerID, seq uint64, events []*syncv1.Event, claim domain.PushClaim) (domain.PushResult, error) {
	to, down := l.target()
	if down {
		return domain.PushResult{}, errLinkDown
	}
	answer, err := to.AcceptClaimedPush(ctx, domain.Caller{ServerID: l.from, Extended: true}, events, &seq, &claim)
	if err != nil {
		return domain.PushResult{}, err
	}
	res := domain.PushResult{Answer: &answer, BatchBytes: 1 << 20, BatchEvents: 10000}
	if !answer.Refused {
		res.Through = seq + uint64(len(events)) - 1
	}
	return res, nil
}

func (l *claimLink) Push(ctx context.Context, peer domain.ServerID, seq uint64, events []*syncv1.Event) (domain.PushResult, error) {
	return l.PushClaimed(ctx, peer, seq, events, domain.PushClaim{})
}

func (l *claimLink) PullAccounted(context.Context, domain.ServerID, *uint64, domain.PullAccount) (PullBatch, error) {
	return PullBatch{}, nil
}

func (l *claimLink) Pull(context.Context, domain.ServerID, *uint64) (PullBatch, error) {
	return PullBatch{}, nil
}

var serverA = domain.MustParseServerID("a.example:2289")

// continuityPair is a sender A pushing to a receiver B (peerB to A) over a
// claimLink, A reporting continuity findings to the returned observer.
func continuityPair(t *testing.T) (a, b *world, link *claimLink, obs *callObserver) {
	t.Helper()
	b = newWorld(t, testConfig())
	link = &claimLink{to: b.engine, from: serverA}
	obs = &callObserver{}
	cfg := testConfig()
	cfg.Observer = obs
	a = &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, client: link, cfg: cfg, logs: &logBuffer{}}
	a.open()
	return a, b, link, obs
}

// inboxFromA returns the users of the events B holds from A.
func inboxFromA(t *testing.T, b *world) []uint64 {
	t.Helper()
	id, ok := b.engine.registry.Lookup(serverA)
	if !ok {
		return nil
	}
	var out []uint64
	for _, rec := range receivedIn(t, b.store, streams.Inbox(id)) {
		out = append(out, rec.Event.GetUserAddedToGuild().GetUserId())
	}
	return out
}

// pushAsA applies events users at first into B as A's, claiming epoch and
// naming the last one lastID.
func pushAsA(t *testing.T, b *world, epoch, first uint64, lastID []byte, users ...uint64) {
	t.Helper()
	answer, err := b.engine.AcceptClaimedPush(t.Context(), domain.Caller{ServerID: serverA, Extended: true}, events(users...), &first,
		&domain.PushClaim{Epoch: epoch, LastID: lastID})
	if err != nil || answer.Refused {
		t.Fatalf("push into B: %+v, %v", answer, err)
	}
}

// Given a receiver that holds events whose delivery the sender did not
// record (a lost reply), when the sender's push is refused with that
// account, delivery goes on after them: each event is held once, and the
// finding is reported.
func TestAReceiverAheadOfTheSenderIsFollowed(t *testing.T) {
	t.Parallel()
	a, b, link, obs := continuityPair(t)
	link.mu.Lock()
	link.down = true
	link.mu.Unlock()
	for u := range uint64(3) {
		if _, err := a.engine.Send(t.Context(), peerB, added(u)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "queue mode", func() bool { return a.state().Mode == domain.ModeQueue })
	ids, err := a.outboxIDs()
	if err != nil {
		t.Fatal(err)
	}
	pushAsA(t, b, a.state().Epoch, 0, ids[1], 0, 1)
	link.mu.Lock()
	link.down = false
	link.mu.Unlock()
	if err := a.engine.Resume(t.Context(), peerB); err != nil {
		t.Fatal(err)
	}
	eventually(t, "every event delivered", func() bool { return a.state().Delivered == 3 })
	if got := inboxFromA(t, b); !slices.Equal(got, []uint64{0, 1, 2}) {
		t.Fatalf("B holds %v, want [0 1 2]", got)
	}
	if got := obs.seen("continuity"); !slices.Equal(got, []string{"continuity " + peerB.String() + " receiver_ahead"}) {
		t.Fatalf("reported %v", got)
	}
	if s := a.state(); len(s.PastEpochs) != 0 {
		t.Fatalf("A's state %+v: no new epoch wanted", s)
	}
}

// Given a receiver holding, as the sender's first event, another event
// than the sender's outbox has there (the sender's store went back and
// took new events), when the sender's push is refused, a new epoch starts
// and everything is sent again in it; the finding is logged as an error.
func TestAReceiverHoldingOtherEventsStartsANewEpoch(t *testing.T) {
	t.Parallel()
	a, b, link, obs := continuityPair(t)
	link.mu.Lock()
	link.down = true
	link.mu.Unlock()
	for u := range uint64(2) {
		if _, err := a.engine.Send(t.Context(), peerB, added(u)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "queue mode", func() bool { return a.state().Mode == domain.ModeQueue })
	epoch := a.state().Epoch
	pushAsA(t, b, epoch, 0, []byte("another event"), 50)
	link.mu.Lock()
	link.down = false
	link.mu.Unlock()
	if err := a.engine.Resume(t.Context(), peerB); err != nil {
		t.Fatal(err)
	}
	eventually(t, "every event delivered", func() bool { s := a.state(); return s.Delivered == 2 && s.Epoch != epoch })
	if got := inboxFromA(t, b); !slices.Equal(got, []uint64{50, 0, 1}) {
		t.Fatalf("B holds %v, want [50 0 1]", got)
	}
	if got := obs.seen("continuity"); !slices.Equal(got, []string{"continuity " + peerB.String() + " epoch_started"}) {
		t.Fatalf("reported %v", got)
	}
	if !strings.Contains(a.logs.String(), "this server's store went back") {
		t.Fatalf("log:\n%s", a.logs.String())
	}
}

// Given a receiver that lost what it had received (its store went back),
// when the sender's next push is refused, the events it lost are sent
// again, and the finding is logged as an error.
func TestAReceiverThatLostEventsGetsThemAgain(t *testing.T) {
	t.Parallel()
	a, _, link, obs := continuityPair(t)
	// One event given: the receiver that then holds nothing is behind.
	if _, err := a.engine.Send(t.Context(), peerB, added(0)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "delivered", func() bool { return a.state().Delivered == 1 })
	fresh := newWorld(t, testConfig()) // B, its store lost
	link.mu.Lock()
	link.to = fresh.engine
	link.mu.Unlock()
	if _, err := a.engine.Send(t.Context(), peerB, added(1)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "every event delivered again", func() bool { return len(inboxFromA(t, fresh)) == 2 })
	if got := inboxFromA(t, fresh); !slices.Equal(got, []uint64{0, 1}) {
		t.Fatalf("B holds %v, want [0 1]", got)
	}
	if got := obs.seen("continuity"); !slices.Equal(got, []string{"continuity " + peerB.String() + " receiver_behind"}) {
		t.Fatalf("reported %v", got)
	}
	if !strings.Contains(a.logs.String(), "the peer lost events it had received") {
		t.Fatalf("log:\n%s", a.logs.String())
	}
}
