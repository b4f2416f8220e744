package delivery

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/hrpc"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

func pubKey(seed byte) ed25519.PublicKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, 32)).Public().(ed25519.PublicKey)
}

// fakeKeys serves keys per server ID, as their servers would.
type fakeKeys struct {
	mu     sync.Mutex
	served map[domain.ServerID]ed25519.PublicKey
}

func (k *fakeKeys) Key(_ context.Context, id domain.ServerID) (ed25519.PublicKey, error) {
	return k.Fetch(context.Background(), id)
}

func (k *fakeKeys) Fetch(_ context.Context, id domain.ServerID) (ed25519.PublicKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	key, ok := k.served[id]
	if !ok {
		return nil, errors.New("connection refused")
	}
	return key, nil
}

func (k *fakeKeys) Remember(id domain.ServerID, key ed25519.PublicKey) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.served[id] = key
}

// fakeNotifier accepts NotifyNewId after failing a given number of times.
type fakeNotifier struct {
	mu       sync.Mutex
	failures int
	calls    []domain.ServerID // the new IDs announced
}

func (n *fakeNotifier) NotifyNewID(_ context.Context, _, newID domain.ServerID) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.calls = append(n.calls, newID)
	if n.failures > 0 {
		n.failures--
		return errors.New("connection refused")
	}
	return nil
}

func (n *fakeNotifier) count() int { n.mu.Lock(); defer n.mu.Unlock(); return len(n.calls) }

func attachRenames(w *world, keys *fakeKeys, notifier *fakeNotifier, self domain.ServerID) *Renames {
	return NewRenames(w.engine, w.engine.registry, keys, notifier, domain.NewIdentity(self, domain.DefaultAudienceGrace),
		systemClock{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

var (
	peerB2 = domain.MustParseServerID("b2.example:2289")
	peerC  = domain.MustParseServerID("c.example:2289")
)

func TestAPeerRenameCarriesItsStreamsOver(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	keys := &fakeKeys{served: map[domain.ServerID]ed25519.PublicKey{peerB: pubKey(1), peerB2: pubKey(1), peerC: pubKey(3)}}
	attachRenames(w, keys, &fakeNotifier{}, domain.MustParseServerID("a.example:2289"))
	ctx := context.Background()
	w.peers.setDown(true)
	w.send(3)
	eventually(t, "queue mode", func() bool { return w.state().Mode == domain.ModeQueue })
	if _, err := w.engine.Send(ctx, peerC, added(9)); err != nil {
		t.Fatal(err)
	}
	oldCaller := domain.Caller{ServerID: peerB, Extended: true}

	t.Run("refusals change nothing", func(t *testing.T) {
		cases := []struct {
			name   string
			caller domain.ServerID
			newID  domain.ServerID
			want   error
		}{
			{"unknown old ID", domain.MustParseServerID("x.example:1"), peerB2, domain.ErrUnknownPeer},
			{"new ID taken by another peer", peerB, peerC, domain.ErrIDTaken},
			{"new ID serving no key", peerB, domain.MustParseServerID("b3.example:2289"), domain.ErrKeyUnavailable},
		}
		keys.Remember(domain.MustParseServerID("b4.example:2289"), pubKey(4))
		cases = append(cases, struct {
			name   string
			caller domain.ServerID
			newID  domain.ServerID
			want   error
		}{"new ID with a mismatching key", peerB, domain.MustParseServerID("b4.example:2289"), domain.ErrKeyMismatch})
		for _, tc := range cases {
			err := w.engine.AcceptRename(ctx, domain.Caller{ServerID: tc.caller, Extended: true}, tc.newID)
			if !errors.Is(err, tc.want) {
				t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
			}
		}
		if id, _ := w.engine.registry.ServerID(mustLookup(t, w, peerB)); id != peerB {
			t.Fatalf("a refused rename changed the peer to %s", id)
		}
	})

	if err := w.engine.AcceptRename(ctx, oldCaller, peerB2); err != nil {
		t.Fatal(err)
	}
	if err := w.engine.AcceptRename(ctx, oldCaller, peerB2); err != nil {
		t.Fatalf("the same rename announced again: %v", err)
	}
	if _, err := w.engine.ServePull(ctx, oldCaller, nil); !errors.Is(err, domain.ErrPeerRenamed) {
		t.Fatalf("pull under the old ID: %v", err)
	}
	if err := w.engine.AcceptPush(ctx, oldCaller, []*syncv1.Event{added(1)}, nil); !errors.Is(err, domain.ErrPeerRenamed) {
		t.Fatalf("push under the old ID: %v", err)
	}
	// The queue continues under the new ID: the backlog is pulled whole.
	batch, err := w.engine.ServePull(ctx, domain.Caller{ServerID: peerB2, Extended: true}, nil)
	if err != nil || len(batch.Events) != 3 || batch.FirstSeq != 0 {
		t.Fatalf("pull under the new ID: %d events from %d, %v", len(batch.Events), batch.FirstSeq, err)
	}
	// A send to either ID lands in the same outbox.
	seq, err := w.engine.Send(ctx, peerB2, added(3))
	if err != nil || seq != 3 {
		t.Fatalf("send to the new ID: seq %d, %v", seq, err)
	}
	// After a restart the registry still knows both IDs.
	w.restart()
	if peer, current, ok := w.engine.registry.Resolve(peerB); !ok || current != peerB2 || peer == "" {
		t.Fatalf("after restart: %v %v %v", peer, current, ok)
	}
}

func mustLookup(t *testing.T, w *world, id domain.ServerID) streams.PeerID {
	t.Helper()
	p, ok := w.engine.registry.Lookup(id)
	if !ok {
		t.Fatalf("%s is not a peer", id)
	}
	return p
}

func TestOurRenameIsAnnouncedUntilEachPeerAccepts(t *testing.T) {
	t.Parallel()
	synctest.Test(t, testOurRenameIsAnnouncedUntilEachPeerAccepts)
}

// testOurRenameIsAnnouncedUntilEachPeerAccepts runs in a synctest bubble: the notices' backoff (seconds) passes on the bubble's clock.
func testOurRenameIsAnnouncedUntilEachPeerAccepts(t *testing.T) {
	w := newWorld(t, testConfig())
	ctx := context.Background()
	oldID, newID := domain.MustParseServerID("a.example:2289"), domain.MustParseServerID("a2.example:2289")
	if err := w.engine.registry.RecordOwnID(ctx, oldID, time.Now()); err != nil {
		t.Fatal(err)
	}
	w.send(1) // B is a peer, registered while this server was oldID
	notifier := &fakeNotifier{failures: 2}
	renames := attachRenames(w, &fakeKeys{served: map[domain.ServerID]ed25519.PublicKey{}}, notifier, oldID)
	if err := renames.Rename(ctx, newID); err != nil {
		t.Fatal(err)
	}
	if got := w.engine.registry.IDFor(peerB); got != oldID && notifier.count() < 3 {
		t.Fatalf("toward B before it accepted: %s, want the old ID", got)
	}
	eventually(t, "B to accept", func() bool { return w.engine.registry.IDFor(peerB) == newID })
	if n := notifier.count(); n != 3 {
		t.Fatalf("%d notices, want 3 (two failures, then accepted)", n)
	}
	own, _ := w.engine.registry.OwnID()
	if own != newID {
		t.Fatalf("own ID %s", own)
	}
	var types []string
	readAll(ctx, w.store, streams.Peers, func(r eventstore.RecordedEvent) error {
		types = append(types, r.Type)
		return nil
	})
	want := []string{streams.TypeOwnServerIDChanged, streams.TypePeerSeen, streams.TypeOwnServerIDChanged, streams.TypePeerNotifiedOfNewID}
	if len(types) != len(want) {
		t.Fatalf("peers stream %v, want %v", types, want)
	}
	for i := range want {
		if types[i] != want[i] {
			t.Fatalf("peers stream %v, want %v", types, want)
		}
	}
}

func TestAnnouncementsSurviveARestart(t *testing.T) {
	t.Parallel()
	synctest.Test(t, testAnnouncementsSurviveARestart)
}

// testAnnouncementsSurviveARestart runs in a synctest bubble: the notices' backoff passes on the bubble's clock.
func testAnnouncementsSurviveARestart(t *testing.T) {
	w := newWorld(t, testConfig())
	ctx := context.Background()
	oldID, newID := domain.MustParseServerID("a.example:2289"), domain.MustParseServerID("a2.example:2289")
	w.engine.registry.RecordOwnID(ctx, oldID, time.Now())
	w.send(1)
	// The server is renamed while the peer is down for good...
	down := &fakeNotifier{failures: 1 << 30}
	if err := attachRenames(w, &fakeKeys{}, down, oldID).Rename(ctx, newID); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a first notice", func() bool { return down.count() > 0 })
	// ...and after a restart, with renames attached before Run as the
	// assembly does, the notice goes out again and is accepted.
	up := &fakeNotifier{}
	w.beforeRun = func() { attachRenames(w, &fakeKeys{}, up, newID) }
	w.restart()
	eventually(t, "B to accept after the restart", func() bool { return w.engine.registry.IDFor(peerB) == newID })
}

// scriptedNotifier answers NotifyNewId with the given errors in turn, then
// accepts.
type scriptedNotifier struct {
	mu      sync.Mutex
	answers []error
	calls   int
	// called, if set, is told of each call before it is answered.
	called func(call int)
}

func (n *scriptedNotifier) NotifyNewID(context.Context, domain.ServerID, domain.ServerID) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.calls++
	if n.called != nil {
		n.called(n.calls)
	}
	if len(n.answers) == 0 {
		return nil
	}
	err := n.answers[0]
	n.answers = n.answers[1:]
	return err
}

func (n *scriptedNotifier) count() int { n.mu.Lock(); defer n.mu.Unlock(); return n.calls }

// Given a peer registered while this server was oldID, when this server
// renames and the peer answers postbox.unknown-peer (it has no record of
// oldID), then that is not an acceptance: nothing is recorded, this server
// keeps signing as oldID toward it and asks again, until it accepts.
func TestUnknownPeerAnswerIsNotAnAcceptance(t *testing.T) {
	t.Parallel()
	synctest.Test(t, testUnknownPeerAnswerIsNotAnAcceptance)
}

// testUnknownPeerAnswerIsNotAnAcceptance runs in a synctest bubble: the notices' backoff passes on the bubble's clock.
func testUnknownPeerAnswerIsNotAnAcceptance(t *testing.T) {
	w := newWorld(t, testConfig())
	ctx := context.Background()
	oldID, newID := domain.MustParseServerID("a.example:2289"), domain.MustParseServerID("a2.example:2289")
	if err := w.engine.registry.RecordOwnID(ctx, oldID, time.Now()); err != nil {
		t.Fatal(err)
	}
	w.send(1)
	unknown := fromPeer(&hrpc.RemoteError{Procedure: "/protocol.sync.v1.PostboxService/NotifyNewId", HTTPStatus: 400,
		Identifier: "postbox.unknown-peer", HumanMessage: "unknown peer: a.example:2289"})
	notifier := &scriptedNotifier{answers: []error{unknown, unknown}}
	var notified func() int
	notifier.called = func(call int) {
		// Each call follows the last answer: an unknown-peer answer
		// recorded nothing, and this server still signs as oldID.
		if n, signing := notified(), w.engine.registry.IDFor(peerB); call > 1 && (n != 0 || signing != oldID) {
			t.Errorf("after %d unknown-peer answers: %d PeerNotifiedOfNewId recorded, signing as %s toward B; want none, and the old ID %s",
				call-1, n, signing, oldID)
		}
	}
	renames := NewRenames(w.engine, w.engine.registry, &fakeKeys{}, notifier, domain.NewIdentity(oldID, domain.DefaultAudienceGrace),
		systemClock{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	renames.backoff = domain.Backoff{First: 50 * time.Millisecond, Max: 50 * time.Millisecond}
	if err := renames.Rename(ctx, newID); err != nil {
		t.Fatal(err)
	}
	notified = func() int {
		n := 0
		readAll(ctx, w.store, streams.Peers, func(r eventstore.RecordedEvent) error {
			if r.Type == streams.TypePeerNotifiedOfNewID {
				n++
			}
			return nil
		})
		return n
	}
	eventually(t, "B to accept", func() bool { return w.engine.registry.IDFor(peerB) == newID })
	if n, calls := notified(), notifier.count(); n != 1 || calls != 3 {
		t.Fatalf("%d notices, %d recorded as accepted; want 3 and 1", calls, n)
	}
}

// A peer met before this server's ID was first recorded (a data directory
// older than that record) knows the ID the server had then: after a rename
// it is signed to with that ID and told the new one, like every other peer.
func TestOurRenameReachesAPeerMetBeforeOurIDWasRecorded(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	ctx := context.Background()
	oldID, newID := domain.MustParseServerID("a.example:2289"), domain.MustParseServerID("a2.example:2289")
	w.send(1) // B registered while no ID of this server was recorded
	if err := w.engine.registry.RecordOwnID(ctx, oldID, time.Now()); err != nil {
		t.Fatal(err)
	}
	if got := w.engine.registry.IDFor(peerB); got != oldID {
		t.Fatalf("toward B before the rename: %s, want %s", got, oldID)
	}
	notifier := &fakeNotifier{failures: 1 << 30}
	if err := attachRenames(w, &fakeKeys{}, notifier, oldID).Rename(ctx, newID); err != nil {
		t.Fatal(err)
	}
	if got := w.engine.registry.IDFor(peerB); got != oldID {
		t.Fatalf("toward B after the rename, before it accepted: %s, want the old %s", got, oldID)
	}
	eventually(t, "B to be told the new ID", func() bool { return notifier.count() > 0 })
}
