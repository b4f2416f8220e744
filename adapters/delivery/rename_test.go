package delivery

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/hrpc"
	"github.com/harmony-postbox/postbox/adapters/rpcerrors"
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

// renamedWorld is a world whose server was oldID when it delivered one
// event to B, and whose rename handling tells peers through notifier,
// retrying every 50 ms.
func renamedWorld(t *testing.T, cfg Config, notifier Notifier) (w *world, renames *Renames, oldID, newID domain.ServerID) {
	t.Helper()
	w = newWorld(t, cfg)
	oldID, newID = domain.MustParseServerID("a.example:2289"), domain.MustParseServerID("a2.example:2289")
	if err := w.engine.registry.RecordOwnID(context.Background(), oldID, time.Now()); err != nil {
		t.Fatal(err)
	}
	w.send(1)
	eventually(t, "the first event delivered", func() bool { return w.state().Delivered == 1 })
	renames = NewRenames(w.engine, w.engine.registry, &fakeKeys{}, notifier, domain.NewIdentity(oldID, domain.DefaultAudienceGrace),
		systemClock{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	renames.backoff = domain.Backoff{First: 50 * time.Millisecond, Max: 50 * time.Millisecond}
	return w, renames, oldID, newID
}

// notifiedRecords counts the PeerNotifiedOfNewId records of w's peers stream.
func notifiedRecords(w *world) int {
	n := 0
	readAll(context.Background(), w.store, streams.Peers, func(r eventstore.RecordedEvent) error {
		if r.Type == streams.TypePeerNotifiedOfNewID {
			n++
		}
		return nil
	})
	return n
}

var unknownPeerAnswer = fromPeer(&hrpc.RemoteError{Procedure: "/protocol.sync.v1.PostboxService/NotifyNewId", HTTPStatus: 400,
	Identifier: "postbox.unknown-peer", HumanMessage: "unknown peer: a.example:2289"})

// Given B, registered while this server was oldID, which answers our
// rename notice with postbox.unknown-peer (it never took a push signed
// with oldID), when this server renames and has a new event for B, then
// nothing is pushed to B until no push signed with oldID can reach it any
// more (twice the auth window after the last one ended); B is asked
// again, and, still not knowing oldID, is recorded as knowing this server
// by its new ID, which the held push is signed with. Had the push gone
// out under oldID, B would register oldID as a peer beside the new ID its
// users may have addressed this server by.
func TestAPeerThatNeverKnewOurOldIDMeetsUsByTheNewOne(t *testing.T) {
	t.Parallel()
	synctest.Test(t, testAPeerThatNeverKnewOurOldIDMeetsUsByTheNewOne)
}

// testAPeerThatNeverKnewOurOldIDMeetsUsByTheNewOne runs in a synctest bubble: the wait passes on the bubble's clock.
func testAPeerThatNeverKnewOurOldIDMeetsUsByTheNewOne(t *testing.T) {
	cfg := testConfig()
	cfg.AuthWindow = 2 * time.Second
	notifier := &scriptedNotifier{answers: []error{unknownPeerAnswer, unknownPeerAnswer, errors.New("no third notice expected")}}
	w, renames, oldID, newID := renamedWorld(t, cfg, notifier)
	delivered := time.Now() // the push of event 0 ended before this
	var calls []time.Time
	var pushedAtCall []int
	notifier.called = func(int) {
		calls = append(calls, time.Now())
		pushedAtCall = append(pushedAtCall, len(w.peers.pushes()))
	}
	if err := renames.Rename(context.Background(), newID); err != nil {
		t.Fatal(err)
	}
	if _, err := w.engine.Send(context.Background(), peerB, added(1)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the held event delivered", func() bool { return w.state().Delivered == 2 })
	if got := w.engine.registry.IDFor(peerB); got != newID {
		t.Fatalf("toward B after the switch: signing as %s, want the new ID %s (old %s)", got, newID, oldID)
	}
	if n := notifiedRecords(w); n != 1 || notifier.count() != 2 {
		t.Fatalf("%d notices, %d PeerNotifiedOfNewId recorded; want 2 and 1", notifier.count(), n)
	}
	if wait := calls[1].Sub(delivered); wait < 2*cfg.AuthWindow-50*time.Millisecond {
		t.Fatalf("asked again %s after the last push under the old ID ended; want twice the auth window, %s", wait, 2*cfg.AuthWindow)
	}
	if pushedAtCall[1] != 1 {
		t.Fatalf("%d pushes before the switch; want only the one before the rename", pushedAtCall[1])
	}
}

// Given B, which our rename notices cannot reach, then reach when it
// cannot fetch our key (neither says what B knows of us), when this server renames and has a new event for
// B, then it is not pushed under the old ID meanwhile: it goes once B
// accepts the new ID, signed with it.
func TestPushesWaitForTheRenameNoticesAnswer(t *testing.T) {
	t.Parallel()
	synctest.Test(t, testPushesWaitForTheRenameNoticesAnswer)
}

// testPushesWaitForTheRenameNoticesAnswer runs in a synctest bubble: the notices' backoff passes on the bubble's clock.
func testPushesWaitForTheRenameNoticesAnswer(t *testing.T) {
	refused := errors.New("connection refused")
	keyUnavailable := fromPeer(&hrpc.RemoteError{Procedure: "/protocol.sync.v1.PostboxService/NotifyNewId", HTTPStatus: 502,
		Identifier: "postbox.key-unavailable", HumanMessage: "caller's public key could not be fetched"})
	notifier := &scriptedNotifier{answers: []error{refused, keyUnavailable}}
	w, renames, _, newID := renamedWorld(t, testConfig(), notifier)
	var pushedAtCall []int
	notifier.called = func(int) { pushedAtCall = append(pushedAtCall, len(w.peers.pushes())) }
	if err := renames.Rename(context.Background(), newID); err != nil {
		t.Fatal(err)
	}
	if _, err := w.engine.Send(context.Background(), peerB, added(1)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the held event delivered", func() bool { return w.state().Delivered == 2 })
	if notifier.count() != 3 || pushedAtCall[2] != 1 {
		t.Fatalf("%d notices, pushes before each %v; want 3, and no push before the third (the acceptance)", notifier.count(), pushedAtCall)
	}
	if got := w.engine.registry.IDFor(peerB); got != newID {
		t.Fatalf("toward B after its acceptance: signing as %s, want %s", got, newID)
	}
}

// Given B, which answers our rename notices with a refusal of its own (an
// upstream server does not implement NotifyNewId), when this server
// renames and has a new event for B, then the event is pushed at once,
// under the ID B knows, while the notices go on.
func TestARefusedRenameNoticeHoldsNoPush(t *testing.T) {
	t.Parallel()
	synctest.Test(t, testARefusedRenameNoticeHoldsNoPush)
}

// testARefusedRenameNoticeHoldsNoPush runs in a synctest bubble: the notices' backoff passes on the bubble's clock.
func testARefusedRenameNoticeHoldsNoPush(t *testing.T) {
	unimplemented := fromPeer(&hrpc.RemoteError{Procedure: "/protocol.sync.v1.PostboxService/NotifyNewId", HTTPStatus: 501,
		Identifier: "hrpc.not-implemented", HumanMessage: "not implemented"})
	answers := make([]error, 1000)
	for i := range answers {
		answers[i] = unimplemented
	}
	notifier := &scriptedNotifier{answers: answers}
	w, renames, oldID, newID := renamedWorld(t, testConfig(), notifier)
	if err := renames.Rename(context.Background(), newID); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a first notice", func() bool { return notifier.count() > 0 })
	if _, err := w.engine.Send(context.Background(), peerB, added(1)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the event delivered", func() bool { return w.state().Delivered == 2 })
	if got := w.engine.registry.IDFor(peerB); got != oldID {
		t.Fatalf("toward B, which refused the new ID: signing as %s, want the old ID %s", got, oldID)
	}
	if n := notifiedRecords(w); n != 0 {
		t.Fatalf("%d PeerNotifiedOfNewId recorded for a refused notice", n)
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

// Given this server renamed from oldID to newID, when a peer it never met
// pushes addressing oldID (it learned that ID before the rename), then the
// peer is registered as knowing oldID, told newID at once, and signed to
// with newID once it accepted; registered as knowing newID it would have
// been signed to with an ID it never met, and registered it as a second
// peer for this server.
func TestAFirstPushAddressedToOurFormerIDIsToldOurNewOne(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	ctx := context.Background()
	oldID, newID := domain.MustParseServerID("a.example:2289"), domain.MustParseServerID("a2.example:2289")
	if err := w.engine.registry.RecordOwnID(ctx, oldID, time.Now()); err != nil {
		t.Fatal(err)
	}
	notifier := &fakeNotifier{}
	// C's key is served: a peer's key is recorded, or fetched before a
	// new caller is taken.
	renames := attachRenames(w, &fakeKeys{served: map[domain.ServerID]ed25519.PublicKey{peerC: pubKey(3)}}, notifier, oldID)
	if err := renames.Rename(ctx, newID); err != nil {
		t.Fatal(err)
	}
	caller := domain.Caller{ServerID: peerC, Extended: true, Audience: oldID}
	if err := w.engine.AcceptPush(ctx, caller, []*syncv1.Event{added(1)}, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the peer told our new ID", func() bool { return w.engine.registry.IDFor(peerC) == newID })
	if n := notifier.count(); n != 1 {
		t.Fatalf("%d notices, want 1", n)
	}
	// A peer that addressed the current ID needs no notice.
	fresh := domain.MustParseServerID("d.example:2289")
	if err := w.engine.AcceptPush(ctx, domain.Caller{ServerID: fresh, Extended: true, Audience: newID}, []*syncv1.Event{added(2)}, nil); err != nil {
		t.Fatal(err)
	}
	if got := w.engine.registry.IDFor(fresh); got != newID {
		t.Fatalf("toward a peer that addressed the new ID: %s", got)
	}
	time.Sleep(50 * time.Millisecond)
	if n := notifier.count(); n != 1 {
		t.Fatalf("%d notices, want still 1", n)
	}
}

// forgetfulPeer is B after its store went back to before it accepted this
// server's new ID: it refuses pushes signed with that ID as from a stranger,
// and accepts a notice signed with the old one.
type forgetfulPeer struct {
	*fakePeers
	w            *world
	newID        domain.ServerID
	mu           sync.Mutex
	relearned    bool
	refused      int
	noticeSigned domain.ServerID
}

func (f *forgetfulPeer) Push(ctx context.Context, peer domain.ServerID, seq uint64, events []*syncv1.Event) (domain.PushResult, error) {
	f.mu.Lock()
	stranger := !f.relearned && f.w.engine.registry.IDFor(peer) == f.newID
	if stranger {
		f.refused++
	}
	f.mu.Unlock()
	if stranger {
		return domain.PushResult{}, fromPeer(&hrpc.RemoteError{Procedure: "/protocol.sync.v1.PostboxService/Push", HTTPStatus: 400,
			Identifier: "postbox.unknown-peer", HumanMessage: "unknown peer: a2.example:2289 signs with the key of a peer known here"})
	}
	return f.fakePeers.Push(ctx, peer, seq, events)
}

func (f *forgetfulPeer) NotifyNewID(_ context.Context, peer, newID domain.ServerID) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.noticeSigned = f.w.engine.registry.IDFor(peer)
	f.relearned = true
	return nil
}

// Given B, which accepted this server's rename from oldID to newID, when
// B's store goes back to before that and B refuses a push signed with
// newID as from a stranger (postbox.unknown-peer), then this server tells
// B the rename again, signed with oldID, and once B accepts, pushes go on
// under newID: the event B refused is delivered, once.
func TestAPeerThatLostOurRenameIsToldAgainUnderTheFormerID(t *testing.T) {
	t.Parallel()
	oldID, newID := ourA, ourA2
	var b *forgetfulPeer
	w, renames := renamingPeer(t, func(w *world) PeerClient {
		b = &forgetfulPeer{fakePeers: w.peers, w: w, newID: newID, relearned: true}
		return b
	}, io.Discard)
	ctx := context.Background()
	if err := renames.Rename(ctx, newID); err != nil {
		t.Fatal(err)
	}
	eventually(t, "B to accept", func() bool { return w.engine.registry.KnowsOurID(mustLookup(t, w, peerB)) })
	b.mu.Lock()
	b.relearned = false // B's store goes back
	b.noticeSigned = domain.ServerID{}
	b.mu.Unlock()
	if _, err := w.engine.Send(ctx, peerB, added(1)); err != nil {
		t.Fatal(err)
	}
	w.pushedInOrder(2)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.refused == 0 || b.noticeSigned != oldID {
		t.Fatalf("%d pushes refused, the notice after them signed as %s; want at least one, and %s", b.refused, b.noticeSigned, oldID)
	}
	if got := w.engine.registry.IDFor(peerB); got != newID {
		t.Fatalf("toward B after it accepted again: signing as %s, want %s", got, newID)
	}
}

func TestFormerBeforeStepsBackThroughOurIDs(t *testing.T) {
	t.Parallel()
	a, b, c := domain.MustParseServerID("a.example:1"), domain.MustParseServerID("b.example:1"), domain.MustParseServerID("c.example:1")
	ids := []domain.OwnID{{ID: a}, {ID: b}, {ID: a}, {ID: c}} // renamed back to a once; c now
	var got []domain.ServerID
	for from := len(ids) - 1; ; {
		id, at := formerBefore(ids, from, c)
		if id.IsZero() {
			break
		}
		if at >= from {
			t.Fatalf("stepped from %d to %d: not back", from, at)
		}
		got, from = append(got, id), at
	}
	if want := []domain.ServerID{a, b, a}; !slices.Equal(got, want) {
		t.Fatalf("steps back %v, want %v", got, want)
	}
	if id, _ := formerBefore([]domain.OwnID{{ID: c}}, 0, c); !id.IsZero() {
		t.Errorf("a server never renamed has no former ID: %s", id)
	}
}

// recordingKeys records the key of each ID it is asked for, as the peer
// key resolver does through registry.KeyFetched.
type recordingKeys struct {
	fakeKeys
	reg interface {
		KeyFetched(context.Context, domain.ServerID, ed25519.PublicKey)
	}
	mu    sync.Mutex
	asked []domain.ServerID
}

func (k *recordingKeys) Key(ctx context.Context, id domain.ServerID) (ed25519.PublicKey, error) {
	k.mu.Lock()
	k.asked = append(k.asked, id)
	k.mu.Unlock()
	key, err := k.fakeKeys.Key(ctx, id)
	if err == nil {
		k.reg.KeyFetched(ctx, id, key)
	}
	return key, err
}

func (k *recordingKeys) count() int { k.mu.Lock(); defer k.mu.Unlock(); return len(k.asked) }

// Given B, a peer this server only sends to (it never called, so its key
// was never recorded), when a push to it succeeds, then B's key is fetched
// once and recorded: after a restore to before this server accepted a
// rename of B's, B's new ID is known by that key (and refused as a second
// peer). Later pushes fetch nothing.
func TestThePushedPeersKeyIsRecorded(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	keys := &recordingKeys{fakeKeys: fakeKeys{served: map[domain.ServerID]ed25519.PublicKey{peerB: pubKey(1)}}, reg: w.engine.registry}
	NewRenames(w.engine, w.engine.registry, keys, &fakeNotifier{}, domain.NewIdentity(domain.MustParseServerID("a.example:2289"), domain.DefaultAudienceGrace),
		systemClock{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	w.send(1)
	w.pushedInOrder(1)
	eventually(t, "B's key recorded", func() bool { return w.engine.registry.HasKey(mustLookup(t, w, peerB)) })
	if !w.engine.registry.Keys()[peerB].Equal(pubKey(1)) {
		t.Fatalf("B's recorded key: %x", w.engine.registry.Keys()[peerB])
	}
	if _, err := w.engine.Send(context.Background(), peerB, added(1)); err != nil {
		t.Fatal(err)
	}
	w.pushedInOrder(2)
	if n := keys.count(); n != 1 {
		t.Fatalf("B's key asked for %d times, want once", n)
	}
}

// Given B, a peer this server sends to that refuses every push (say, it
// cannot fetch this server's key), when a push to it is tried, then B's key
// is fetched and recorded all the same: should B rename itself before it
// ever takes a push, its first call under the new ID is known by that key
// (and refused as a second peer) instead of registered as one (simulation
// seed 113 under other timing).
func TestAPeerThatRefusesOurPushesHasItsKeyRecorded(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	w.peers.setDown(true)
	keys := &recordingKeys{fakeKeys: fakeKeys{served: map[domain.ServerID]ed25519.PublicKey{peerB: pubKey(1)}}, reg: w.engine.registry}
	NewRenames(w.engine, w.engine.registry, keys, &fakeNotifier{}, domain.NewIdentity(domain.MustParseServerID("a.example:2289"), domain.DefaultAudienceGrace),
		systemClock{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	w.send(1)
	eventually(t, "B's key recorded", func() bool { return w.engine.registry.HasKey(mustLookup(t, w, peerB)) })
	if len(w.peers.pushes()) != 0 {
		t.Fatalf("B took pushes %v; it was to refuse them", w.peers.pushes())
	}
}

// Given B, a peer this server sends to with no key recorded (B's key
// server did not answer a moment ago, or the store went back to before the
// key was recorded), and B renamed to B2 without this server knowing,
// when B2 makes its first call, signing with B's key, then B's key is
// fetched again before the call is taken, and B2 is refused as unknown
// here (to announce its rename again) instead of registered as a second
// peer (simulation seeds 772 and 4206).
func TestAStrangersFirstCallFetchesTheKeysOfPeersWithoutOne(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	ctx := context.Background()
	keys := &recordingKeys{fakeKeys: fakeKeys{served: map[domain.ServerID]ed25519.PublicKey{}}, reg: w.engine.registry}
	NewRenames(w.engine, w.engine.registry, keys, &fakeNotifier{}, domain.NewIdentity(domain.MustParseServerID("a.example:2289"), domain.DefaultAudienceGrace),
		systemClock{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	// A push to B asked for its key a moment ago, and B did not answer.
	w.peers.setDown(true)
	w.send(1)
	eventually(t, "B's key asked for", func() bool { return keys.count() > 0 })
	keys.Remember(peerB, pubKey(1))
	b2 := domain.MustParseServerID("b2.example:2289")
	w.engine.registry.KeyFetched(ctx, b2, pubKey(1)) // as the verifier does for B2's call
	err := w.engine.AcceptPush(ctx, domain.Caller{ServerID: b2}, []*syncv1.Event{added(0)}, nil)
	if !errors.Is(err, domain.ErrUnknownPeer) {
		t.Fatalf("B2's first push: %v, want unknown-peer", err)
	}
	if _, ok := w.engine.registry.Lookup(b2); ok {
		t.Fatal("B2 was registered as a second peer")
	}
	if !w.engine.registry.HasKey(mustLookup(t, w, peerB)) {
		t.Fatal("B's key was not recorded")
	}
	// A stranger that is no peer under another name is taken.
	c := domain.MustParseServerID("c.example:2289")
	w.engine.registry.KeyFetched(ctx, c, pubKey(3))
	if err := w.engine.AcceptPush(ctx, domain.Caller{ServerID: c}, []*syncv1.Event{added(0)}, nil); err != nil {
		t.Fatalf("C's first push: %v", err)
	}
}

// movableClock is a clock the test moves.
type movableClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *movableClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *movableClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Given B, a peer without a recorded key whose key server does not answer,
// when C, a server that is no peer, pushes for the first time, then C is
// answered busy and not registered (it may be B under a new ID); once B's
// key is fetched and is not C's, C's next push is taken. A stranger is held
// off at most a minute from its first push, even if B's key never comes
// (simulation seed 4206).
func TestAStrangerIsHeldOffWhileAKeylessPeersKeyCannotBeFetched(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	ctx := context.Background()
	clock := &movableClock{now: time.Now()}
	keys := &recordingKeys{fakeKeys: fakeKeys{served: map[domain.ServerID]ed25519.PublicKey{}}, reg: w.engine.registry}
	NewRenames(w.engine, w.engine.registry, keys, &fakeNotifier{}, domain.NewIdentity(domain.MustParseServerID("a.example:2289"), domain.DefaultAudienceGrace),
		clock, slog.New(slog.DiscardHandler))
	if _, err := w.engine.registry.Register(ctx, peerB); err != nil {
		t.Fatal(err)
	}
	push := func(from domain.ServerID) error {
		return w.engine.AcceptPush(ctx, domain.Caller{ServerID: from}, []*syncv1.Event{added(0)}, nil)
	}
	busy := func(err error) bool {
		var b *rpcerrors.Busy
		return errors.As(err, &b) && b.RetryAfter > 0
	}
	c := domain.MustParseServerID("c.example:2289")
	w.engine.registry.KeyFetched(ctx, c, pubKey(3))
	if err := push(c); !busy(err) {
		t.Fatalf("C's first push while B's key cannot be fetched: %v, want busy", err)
	}
	if _, ok := w.engine.registry.Lookup(c); ok {
		t.Fatal("C was registered while it might be B")
	}
	keys.Remember(peerB, pubKey(1))
	clock.add(strangerKeyInterval)
	if err := push(c); err != nil {
		t.Fatalf("C's push once B's key is known and not C's: %v", err)
	}

	// D meets a peer whose key server never answers: held off a minute.
	e := domain.MustParseServerID("e.example:2289")
	if _, err := w.engine.registry.Register(ctx, e); err != nil {
		t.Fatal(err)
	}
	d := domain.MustParseServerID("d.example:2289")
	w.engine.registry.KeyFetched(ctx, d, pubKey(4))
	for range 3 {
		if err := push(d); !busy(err) {
			t.Fatalf("D's push within a minute of its first: %v, want busy", err)
		}
		clock.add(strangerHold / 4)
	}
	clock.add(strangerHold / 4)
	if err := push(d); err != nil {
		t.Fatalf("D's push a minute after its first: %v", err)
	}
}

// rememberingPeer is B as it keeps this server's IDs: it takes a notice
// or a push signed with the ID it knows us by, answers
// postbox.peer-renamed to one signed with an ID of ours it knew before
// (but a notice of the rename it took, which it answers OK), and
// postbox.unknown-peer to any other.
type rememberingPeer struct {
	*fakePeers
	w      *world
	mu     sync.Mutex
	knows  domain.ServerID
	former []domain.ServerID
	signed []domain.ServerID // the ID each notice was signed with
	// onNotice, if set, is called at the n-th notice before B reads it:
	// down, B does not answer; lose, B takes it and the answer is lost.
	onNotice func(n int) (down, lose bool)
}

func (p *rememberingPeer) refusal(signed domain.ServerID, procedure string) error {
	if slices.Contains(p.former, signed) {
		return fromPeer(&hrpc.RemoteError{Procedure: procedure, HTTPStatus: 400,
			Identifier: "postbox.peer-renamed", HumanMessage: "server ID was renamed: " + signed.String() + " is now " + p.knows.String()})
	}
	return fromPeer(&hrpc.RemoteError{Procedure: procedure, HTTPStatus: 400, Identifier: "postbox.unknown-peer", HumanMessage: "unknown peer: " + signed.String()})
}

func (p *rememberingPeer) Push(ctx context.Context, peer domain.ServerID, seq uint64, events []*syncv1.Event) (domain.PushResult, error) {
	signed := p.w.engine.registry.IDFor(peer)
	p.mu.Lock()
	var err error
	if signed != p.knows {
		err = p.refusal(signed, "/protocol.sync.v1.PostboxService/Push")
	}
	p.mu.Unlock()
	if err != nil {
		return domain.PushResult{}, err
	}
	return p.fakePeers.Push(ctx, peer, seq, events)
}

func (p *rememberingPeer) NotifyNewID(_ context.Context, peer, newID domain.ServerID) error {
	signed := p.w.engine.registry.IDFor(peer)
	p.mu.Lock()
	p.signed = append(p.signed, signed)
	n, hook := len(p.signed), p.onNotice
	p.mu.Unlock()
	var down, lose bool
	if hook != nil {
		down, lose = hook(n)
	}
	if down {
		return errors.New("connection refused")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case signed != p.knows && newID == p.knows && slices.Contains(p.former, signed):
		return nil // the same rename announced again
	case signed != p.knows:
		return p.refusal(signed, "/protocol.sync.v1.PostboxService/NotifyNewId")
	case newID != p.knows:
		p.former = append(p.former, p.knows)
		p.knows = newID
	}
	if lose {
		return errors.New("connection reset by peer")
	}
	return nil
}

func (p *rememberingPeer) state() (knows domain.ServerID, signed []domain.ServerID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.knows, slices.Clone(p.signed)
}

// This server's IDs in the tests of a peer that remembers them.
var (
	ourA  = domain.MustParseServerID("a.example:2289")
	ourA2 = domain.MustParseServerID("a2.example:2289")
	ourA3 = domain.MustParseServerID("a3.example:2289")
	ourA4 = domain.MustParseServerID("a4.example:2289")
)

// renamingPeer starts a world whose B is the peer client makes (with the
// world, which it may consult), this server being ourA, with one event
// delivered to B; rename handling is attached, logging to logTo, with
// notices retried every 20 ms.
func renamingPeer(t *testing.T, client func(w *world) PeerClient, logTo io.Writer) (*world, *Renames) {
	t.Helper()
	w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: testConfig()}
	w.client = client(w)
	w.open()
	if err := w.engine.registry.RecordOwnID(context.Background(), ourA, time.Now()); err != nil {
		t.Fatal(err)
	}
	w.send(1)
	w.pushedInOrder(1)
	renames := NewRenames(w.engine, w.engine.registry, &fakeKeys{}, w.client.(Notifier), domain.NewIdentity(ourA, domain.DefaultAudienceGrace),
		systemClock{}, slog.New(slog.NewTextHandler(logTo, nil)))
	renames.backoff = domain.Backoff{First: 20 * time.Millisecond, Max: 20 * time.Millisecond}
	return w, renames
}

// noticeStep is what happens at one of B's notices, before B reads it:
// this server is renamed (if rename is set); B is down, or takes the
// notice and its answer is lost.
type noticeStep struct {
	rename     domain.ServerID
	down, lose bool
}

// renameRemembered runs this server, ourA, which delivered one event to B
// (a rememberingPeer) and is renamed to ids[0]; at B's notices, steps
// happen (by notice number, from 1). Then a second event is sent. It
// checks that B gets it, that B knows us by our last ID, which we sign
// with toward it, and that B's notices were signed as wantSigned.
func renameRemembered(t *testing.T, ids []domain.ServerID, steps map[int]noticeStep, wantSigned []domain.ServerID) {
	t.Helper()
	var b *rememberingPeer
	w, renames := renamingPeer(t, func(w *world) PeerClient {
		b = &rememberingPeer{fakePeers: w.peers, w: w, knows: ourA}
		return b
	}, io.Discard)
	ctx := context.Background()
	b.onNotice = func(n int) (bool, bool) {
		st := steps[n]
		if !st.rename.IsZero() {
			if err := renames.Rename(context.Background(), st.rename); err != nil {
				t.Error(err)
			}
		}
		return st.down, st.lose
	}
	if err := renames.Rename(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	w.send(1)
	w.pushedInOrder(2)
	knows, signed := b.state()
	current := ids[len(ids)-1]
	if knows != current || !w.engine.registry.KnowsOurID(mustLookup(t, w, peerB)) || w.engine.registry.IDFor(peerB) != current {
		t.Fatalf("B knows us as %s, we sign toward it as %s; want %s both", knows, w.engine.registry.IDFor(peerB), current)
	}
	if !slices.Equal(signed, wantSigned) {
		t.Fatalf("notices signed as %v, want %v", signed, wantSigned)
	}
}

// Given B, which accepted this server's rename from a to a2 but whose
// answer was lost, when this server is renamed again to a3 before B is
// told again, then B, asked under a, says a was renamed; it is told again
// signed as a2, the ID it knows, accepts a3, and pushes go on under a3:
// the notice does not retry under a for ever, holding B's pushes.
func TestAPeerWhoseAcceptanceWasLostIsToldTheNextRenameUnderTheIDItKnows(t *testing.T) {
	t.Parallel()
	renameRemembered(t, []domain.ServerID{ourA2, ourA3}, map[int]noticeStep{1: {rename: ourA3, lose: true}},
		[]domain.ServerID{ourA, ourA, ourA2})
}

// Given B, told nothing while this server went from a to a2 to a3 (down),
// which then accepted a3 but whose answer was lost, when this server is
// renamed to a4, then B is told a4 signed as a (renamed), a2 (unknown to
// it: the notice skipped it) and a3, which it knows, and accepts.
func TestAPeerWhoseAcceptanceWasLostIsFoundPastAnIDItNeverKnew(t *testing.T) {
	t.Parallel()
	renameRemembered(t, []domain.ServerID{ourA2, ourA3, ourA4},
		map[int]noticeStep{1: {rename: ourA3, down: true}, 2: {rename: ourA4, lose: true}},
		[]domain.ServerID{ourA, ourA, ourA, ourA2, ourA3})
}

// Given B, told this server's rename from a to a2, when this server is
// renamed again to a3 while that notice is under way and B accepts a2,
// then B is told a3 next, signed as a2: the rename made meanwhile is not
// lost because a notice was already under way (which made the new one's
// telling a no-op).
func TestARenameWhileANoticeIsUnderWayIsToldNext(t *testing.T) {
	t.Parallel()
	renameRemembered(t, []domain.ServerID{ourA2, ourA3}, map[int]noticeStep{1: {rename: ourA3}}, []domain.ServerID{ourA, ourA2})
}

// Given this server renamed from a to a2 and back to a (B accepted both,
// the second answer lost), then to a3 (B accepted, the answer lost again),
// when it is renamed to a4, then B is told a4 signed as a2, a (the second
// time we had it), then a3, which it knows: stepping forward goes on from
// where it stands in our IDs, not from the first time an ID was ours,
// which would step between a2 and a for ever.
func TestSteppingForwardThroughAnIDWeHadTwiceGoesOnFromTheLaterTime(t *testing.T) {
	t.Parallel()
	renameRemembered(t, []domain.ServerID{ourA2, ourA, ourA3, ourA4},
		map[int]noticeStep{1: {rename: ourA}, 2: {rename: ourA3, lose: true}, 4: {rename: ourA4, lose: true}},
		[]domain.ServerID{ourA, ourA2, ourA2, ourA, ourA, ourA3})
}

// Given B, which says every ID of ours was renamed (its record of us was
// renamed by another server holding our key), when this server renames
// from a to a2, then B is told under a, then under a2, and again under a2
// after each backoff, never past our last ID; pushes to it stay held.
func TestAPeerSayingEveryIDOfOursWasRenamedIsNotSteppedPastOurLast(t *testing.T) {
	t.Parallel()
	a, a2 := ourA, ourA2
	var b *rememberingPeer
	var logs logBuffer
	w, renames := renamingPeer(t, func(w *world) PeerClient {
		b = &rememberingPeer{fakePeers: w.peers, w: w, knows: a}
		return b
	}, &logs)
	ctx := context.Background()
	b.mu.Lock()
	b.knows, b.former = domain.MustParseServerID("z.example:2289"), []domain.ServerID{a, a2}
	b.mu.Unlock()
	if err := renames.Rename(ctx, a2); err != nil {
		t.Fatal(err)
	}
	w.send(1)
	eventually(t, "four notices", func() bool { _, signed := b.state(); return len(signed) >= 4 })
	_, signed := b.state()
	if want := []domain.ServerID{a, a2, a2, a2}; !slices.Equal(signed[:4], want) {
		t.Fatalf("notices signed as %v, want %v first", signed, want)
	}
	if d := w.state().Delivered; d != 1 {
		t.Fatalf("%d events delivered, want the one from before the rename: pushes wait for the notice", d)
	}
	for _, want := range []string{"a peer knows a later ID of ours than the one we signed with", "signed=a.example:2289 next=a2.example:2289",
		"a peer says the ID we signed with was renamed, and we have no later one"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the log lacks %q:\n%s", want, logs.String())
		}
	}
}
