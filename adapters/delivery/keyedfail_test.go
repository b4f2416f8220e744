package delivery

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// faultyStore fails, while told to, the reads of outbox heads made once
// the engine has started (started set) and the appends to the peers
// stream.
type faultyStore struct {
	Store
	started   chan struct{}
	failHeads atomic.Bool
	failPeers atomic.Bool
	// holdPeers, if set, holds appends to the peers stream until closed;
	// peersHeld tells that one is held.
	holdPeers atomic.Pointer[chan struct{}]
	peersHeld atomic.Bool
}

var errHeadReadFailed = errors.New("outbox head read failed")

func (f *faultyStore) ReadStreamBackward(ctx context.Context, stream string, limit int) ([]eventstore.RecordedEvent, error) {
	if strings.HasPrefix(stream, streams.OutboxPrefix) && f.failHeads.Load() {
		select {
		case <-f.started:
			return nil, errHeadReadFailed
		default:
		}
	}
	return f.Store.ReadStreamBackward(ctx, stream, limit)
}

func (f *faultyStore) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	if stream == streams.Peers && f.failPeers.Load() {
		return eventstore.AppendResult{}, errAppendFailed
	}
	if hold := f.holdPeers.Load(); stream == streams.Peers && hold != nil {
		f.peersHeld.Store(true)
		<-*hold
	}
	return f.Store.Append(ctx, stream, expected, events...)
}

// Given an outbox holding a keyed send, when the engine starts and the
// outbox cannot be read back, then keyed sends are refused as unavailable
// (answering them could store a retry twice), an operator is told why,
// and sends without a key go on.
func TestKeyedSendsAreRefusedWhileTheirKeysCannotBeRebuilt(t *testing.T) {
	t.Parallel()
	f := &faultyStore{}
	w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: testConfig(), logs: &logBuffer{},
		wrap: func(s Store) Store { f.Store = s; return f }}
	w.beforeRun = func() { f.started = w.engine.started }
	w.open()
	w.sendKeyed(peerB, added(7), "k1")

	f.failHeads.Store(true)
	w.restart()
	for _, key := range []string{"k1", "k2"} {
		if seq, err := w.engine.SendKeyed(t.Context(), peerB, added(7), key); !errors.Is(err, domain.ErrUnavailable) || !errors.Is(err, errHeadReadFailed) {
			t.Fatalf("keyed send %q while the keys could not be rebuilt: seq %d, %v; want unavailable", key, seq, err)
		}
	}
	if !strings.Contains(w.logs.String(), "rebuilding the index of idempotency keys failed") {
		t.Fatalf("log:\n%s", w.logs.String())
	}
	f.failHeads.Store(false)
	w.send(1)
	if users, _ := w.outboxUsers(); len(users) != 2 {
		t.Fatalf("outbox users %v, want the keyed send and the one without a key", users)
	}
}

// Given an outbox whose keyed record is damaged (a digest of the wrong
// length), when the engine starts, then keyed sends are refused as
// unavailable rather than answered without that key.
func TestADamagedKeyedRecordRefusesKeyedSends(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	w.send(1)
	codec := streams.NewCodec(rand.Reader)
	damaged, err := codec.Encode(streams.TypeEventEnqueued, &eventsv1.EventEnqueued{Event: added(5), IdempotencyKey: "k1", Digest: []byte{1, 2, 3}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.store.Append(t.Context(), streams.Outbox(mustLookup(t, w, peerB)), expectAfter(1), damaged); err != nil {
		t.Fatal(err)
	}
	w.restart()
	if seq, err := w.engine.SendKeyed(t.Context(), peerB, added(5), "k1"); !errors.Is(err, domain.ErrUnavailable) {
		t.Fatalf("keyed send after a damaged keyed record: seq %d, %v; want unavailable", seq, err)
	}
}

// Given a keyed send stored with a binary body (as the embedded store's
// codec writes it), when it is retried after a restart, then the key is
// known: the retry gets the first sequence number and nothing more is
// stored.
func TestAKeyedSendStoredInBinaryIsRememberedAfterARestart(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	w.send(1)
	id := mustLookup(t, w, peerB)
	digest, err := sendDigest(id, added(9))
	if err != nil {
		t.Fatal(err)
	}
	binary := streams.NewCodecWithBodies(rand.Reader, streams.BinaryBodies)
	rec, err := binary.EncodeEnqueuedKeyed(added(9), "kb", digest)
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.Data) == 0 || rec.Data[0] == '{' {
		t.Fatalf("the record is not binary: %q", rec.Data)
	}
	if _, err := w.store.Append(t.Context(), streams.Outbox(id), expectAfter(1), rec); err != nil {
		t.Fatal(err)
	}
	w.restart()
	if seq := w.sendKeyed(peerB, added(9), "kb"); seq != 1 {
		t.Fatalf("retry after a restart: seq %d, want 1", seq)
	}
	if users, _ := w.outboxUsers(); len(users) != 2 {
		t.Fatalf("outbox users %v, want two", users)
	}
}

// newRegistryWorld is newWorld with the engine and its registry behind f.
func newRegistryWorld(t *testing.T, cfg Config, f *faultyStore) *world {
	t.Helper()
	w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: cfg}
	ctx := context.Background()
	store, err := embedded.Open(ctx, w.dir, embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	w.store = store
	f.Store = store
	codec := streams.NewCodec(rand.Reader)
	reg, err := registry.Load(ctx, f, codec, rand.Reader, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.engine = New(w.cfg, f, codec, reg, w.peers, systemClock{}, slog.New(slog.DiscardHandler), rand.Reader)
	f.started = w.engine.started
	w.stop = runEngine(t, w.engine)
	t.Cleanup(w.close)
	return w
}

// Given keyed sends refused before their append (the peer cannot be
// registered, the event cannot be encoded, the event is too large), then
// each fails, nothing is stored, and the key stays free for the next send.
func TestAKeyedSendRefusedBeforeItsAppendStoresNothing(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.MaxEventBytes = 200
	f := &faultyStore{}
	w := newRegistryWorld(t, cfg, f)

	f.failPeers.Store(true)
	if seq, err := w.engine.SendKeyed(t.Context(), peerB, added(1), "k"); !errors.Is(err, errAppendFailed) {
		t.Fatalf("keyed send to a peer that cannot be registered: seq %d, %v", seq, err)
	}
	f.failPeers.Store(false)

	badUTF8 := &syncv1.Event{Kind: &syncv1.Event_UserInvited_{UserInvited: &syncv1.Event_UserInvited{UserId: 1, InviteId: "\xff\xfe"}}}
	if seq, err := w.engine.SendKeyed(t.Context(), peerB, badUTF8, "k"); !errors.Is(err, domain.ErrInvalidArgument) {
		t.Fatalf("keyed send of an event that cannot be encoded: seq %d, %v", seq, err)
	}
	large := &syncv1.Event{Kind: &syncv1.Event_UserInvited_{UserInvited: &syncv1.Event_UserInvited{UserId: 1, InviteId: strings.Repeat("i", 300)}}}
	var tooLarge *domain.EventTooLargeError
	if seq, err := w.engine.SendKeyed(t.Context(), peerB, large, "k"); !errors.As(err, &tooLarge) {
		t.Fatalf("keyed send of a too large event: seq %d, %v", seq, err)
	}
	// The key is free, and the index answers at once.
	type answer struct {
		seq uint64
		err error
	}
	done := make(chan answer, 1)
	go func() {
		seq, err := w.engine.SendKeyed(t.Context(), peerB, added(2), "k")
		done <- answer{seq, err}
	}()
	select {
	case a := <-done:
		if a.err != nil || a.seq != 0 {
			t.Fatalf("keyed send after the refusals: seq %d, %v; want 0", a.seq, a.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a keyed send after the refusals did not return")
	}
	if users, _ := w.outboxUsers(); len(users) != 1 || users[0] != 2 {
		t.Fatalf("outbox users %v, want [2]", users)
	}
}

// Given a keyed send whose append is under way, when the same key comes
// with another event, then it is refused at once, and the first send gets
// its answer and is stored alone.
func TestAKeyReusedWhileItsFirstSendIsStoredIsRefused(t *testing.T) {
	t.Parallel()
	w, spy := newSpiedWorld(t)
	w.send(1)
	release := make(chan struct{})
	spy.setHook(func(_ int, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
		hold(t, release)
		return spy.Store.Append(context.Background(), stream, expected, events...)
	})
	first := make(chan error, 1)
	go func() {
		_, err := w.engine.SendKeyed(t.Context(), peerB, added(7), "k")
		first <- err
	}()
	eventually(t, "the first append", func() bool { return len(spy.appends()) == 1 })
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if seq, err := w.engine.SendKeyed(ctx, peerB, added(8), "k"); !errors.Is(err, domain.ErrInvalidArgument) {
		t.Fatalf("the key with another event while the first is stored: seq %d, %v; want an invalid argument", seq, err)
	}
	close(release)
	select {
	case err := <-first:
		if err != nil {
			t.Fatalf("first keyed send: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the first keyed send did not return")
	}
	if users, _ := w.outboxUsers(); len(users) != 2 || users[1] != 7 {
		t.Fatalf("outbox users %v, want [0 7]", users)
	}
}

// Given an idempotency window left at zero, then keys are remembered for
// the default window, not forgotten at once.
func TestAZeroIdempotencyWindowMeansTheDefault(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.IdempotencyWindow = 0
	w := newWorld(t, cfg)
	w.sendKeyed(peerB, added(7), "k")
	time.Sleep(time.Millisecond)
	if seq := w.sendKeyed(peerB, added(7), "k"); seq != 0 {
		t.Fatalf("retry: seq %d, want 0", seq)
	}
	if users, _ := w.outboxUsers(); len(users) != 1 {
		t.Fatalf("outbox users %v, want one", users)
	}
}

// Given keyed sends with one key waiting for the index of keys, when the
// engine stops meanwhile, then each is refused as unavailable and nothing
// is stored.
func TestKeyedSendsCaughtByAStopAreRefused(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	w.sendKeyed(peerB, added(0), "k0") // the index is rebuilt
	k := w.engine.keys
	k.mu.Lock()
	const callers = 2
	results := make(chan error, callers)
	for range callers {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			_, err := w.engine.SendKeyed(ctx, peerB, added(3), "k")
			results <- err
		}()
	}
	time.Sleep(50 * time.Millisecond) // both wait for the index
	stopped := make(chan struct{})
	go func() {
		w.stop()
		close(stopped)
	}()
	eventually(t, "the engine stopping", w.engine.isStopping)
	k.mu.Unlock()
	for range callers {
		select {
		case err := <-results:
			if !errors.Is(err, domain.ErrUnavailable) {
				t.Fatalf("keyed send caught by a stop: %v, want unavailable", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a keyed send caught by a stop did not return")
		}
	}
	<-stopped
	if users, _ := w.outboxUsers(); len(users) != 1 {
		t.Fatalf("outbox users %v, want one", users)
	}
}

// Given a caller that has gone away, when it sends, then the send is
// refused and nothing is stored.
func TestASendWhoseCallerHasGoneIsRefused(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	w.send(1)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for range 20 {
		if seq, err := w.engine.Send(ctx, peerB, added(5)); err == nil {
			t.Fatalf("a send whose caller has gone was answered: seq %d", seq)
		}
	}
	if users, _ := w.outboxUsers(); len(users) != 1 {
		t.Fatalf("outbox users %v, want one", users)
	}
}

// Given sends to a new peer whose registration is under way, when the
// engine stops meanwhile, then each send is refused as the engine closing,
// none waits for ever, and nothing is stored.
func TestSendsCaughtByAStopWhileTheirPeerRegistersAreRefused(t *testing.T) {
	t.Parallel()
	f := &faultyStore{}
	w := newRegistryWorld(t, testConfig(), f)
	hold := make(chan struct{})
	f.holdPeers.Store(&hold)
	const senders = 4
	results := make(chan error, senders)
	for i := range senders {
		go func() {
			_, err := w.engine.Send(t.Context(), peerB, added(uint64(i)))
			results <- err
		}()
	}
	eventually(t, "the registration held", f.peersHeld.Load)
	time.Sleep(20 * time.Millisecond) // the other senders wait for it too
	stopped := make(chan struct{})
	go func() {
		w.stop()
		close(stopped)
	}()
	eventually(t, "the engine stopping", w.engine.isStopping)
	close(hold)
	for range senders {
		select {
		case err := <-results:
			if !errors.Is(err, errEngineClosed) {
				t.Fatalf("send caught by a stop: %v, want the engine closed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a send caught by a stop did not return")
		}
	}
	<-stopped
	if recs, err := w.store.ReadStream(t.Context(), streams.Outbox(mustLookup(t, w, peerB)), 0, 10); !errors.Is(err, eventstore.ErrStreamNotFound) {
		t.Fatalf("outbox: %d records, %v; want none", len(recs), err)
	}
}

// Given a SendBatch for two peers holding their outbox writers, and a Send
// to one of them waiting behind it, when the engine stops before the batch
// is stored, then the batch is stored and the waiting Send is refused as
// the engine closing, not left waiting.
func TestASendWaitingBehindABatchCaughtByAStopIsRefused(t *testing.T) {
	t.Parallel()
	w, spy := newSpiedWorld(t)
	w.send(1)
	if _, err := w.engine.Send(t.Context(), peerC, added(0)); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	spy.setHook(func(_ int, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
		hold(t, release)
		return spy.Store.Append(context.Background(), stream, expected, events...)
	})
	batched := make(chan []domain.SendOutcome, 1)
	go func() {
		batched <- w.engine.SendBatch(t.Context(), []domain.BatchSend[*syncv1.Event]{{To: peerB, Event: added(10)}, {To: peerC, Event: added(11)}})
	}()
	eventually(t, "the batch's appends", func() bool { return len(spy.appends()) == 2 })
	sent := make(chan error, 1)
	go func() {
		_, err := w.engine.Send(t.Context(), peerB, added(12))
		sent <- err
	}()
	eventually(t, "the Send waiting or appending", func() bool { return w.queuedSends() == 1 || len(spy.appends()) > 2 })
	if n := len(spy.appends()); n != 2 {
		t.Fatalf("%d appends while the batch holds the writers, want 2", n)
	}
	stopped := make(chan struct{})
	go func() {
		w.stop()
		close(stopped)
	}()
	eventually(t, "the engine stopping", w.engine.isStopping)
	close(release)
	select {
	case out := <-batched:
		for i, o := range out {
			if o.Err != nil || o.Seq != 1 {
				t.Fatalf("batch send %d: seq %d, %v; want 1", i, o.Seq, o.Err)
			}
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the batch did not return")
	}
	select {
	case err := <-sent:
		if !errors.Is(err, errEngineClosed) {
			t.Fatalf("the Send behind the batch: %v, want the engine closed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the Send behind the batch did not return")
	}
	<-stopped
	if users, _ := w.outboxUsers(); !slices.Equal(users, []uint64{0, 10}) {
		t.Fatalf("outbox users %v, want [0 10]", users)
	}
}

// Given an outbox record with an empty body (a binary record of a send
// without event or key), when the engine starts, then the index of keys
// is rebuilt all the same: keyed sends are answered.
func TestAnEmptyOutboxRecordDoesNotStopTheKeysRebuild(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	w.peers.setDown(true)
	w.sendKeyed(peerB, added(1), "k1")
	empty := eventstore.EventData{ID: eventstore.EventID{1, 2, 3, 4, 5, 6, 0x40, 8, 0x80}, Type: streams.TypeEventEnqueued}
	if _, err := w.store.Append(t.Context(), streams.Outbox(mustLookup(t, w, peerB)), expectAfter(1), empty); err != nil {
		t.Fatal(err)
	}
	w.restart()
	if seq := w.sendKeyed(peerB, added(1), "k1"); seq != 0 {
		t.Fatalf("retry after a restart: seq %d, want 0", seq)
	}
}

// Given keyed sends to several peers, when they are retried after a
// restart, then the keys of every peer are known again.
func TestTheKeysOfEveryPeerAreRebuilt(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	w.peers.setDown(true)
	servers := []domain.ServerID{peerB, peerC, domain.MustParseServerID("d.example:2289")}
	for i, to := range servers {
		w.sendKeyed(to, added(uint64(i)), fmt.Sprint("k", i))
	}
	w.restart()
	for i, to := range servers {
		if seq := w.sendKeyed(to, added(uint64(i)), fmt.Sprint("k", i)); seq != 0 {
			t.Fatalf("retry to %s after a restart: seq %d, want 0", to, seq)
		}
	}
}

// Given a SendBatch to a peer that cannot be registered, then its sends
// fail with the store's failure and nothing is stored for it.
func TestABatchToAPeerThatCannotBeRegisteredFails(t *testing.T) {
	t.Parallel()
	f := &faultyStore{}
	w := newRegistryWorld(t, testConfig(), f)
	f.failPeers.Store(true)
	out := w.engine.SendBatch(t.Context(), batchOf(0, 2))
	for i, o := range out {
		if !errors.Is(o.Err, errAppendFailed) {
			t.Fatalf("send %d of a batch to a peer that cannot be registered: seq %d, %v", i, o.Seq, o.Err)
		}
	}
	if _, ok := w.engine.registry.Lookup(peerB); ok {
		t.Fatal("the peer was registered")
	}
}
