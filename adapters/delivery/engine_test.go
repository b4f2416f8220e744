package delivery

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/hrpc"
	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/adapters/rpcerrors"
	"github.com/harmony-postbox/postbox/adapters/seqext"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) AfterFunc(d time.Duration, f func()) domain.Timer { return time.AfterFunc(d, f) }

// fakePeers records pushes and can be told to refuse them. With batchBytes
// set it answers as a Postbox receiver that takes several events per push;
// without, as an upstream one, which takes only the first.
type fakePeers struct {
	mu          sync.Mutex
	down        bool
	batchBytes  uint64
	batchEvents uint32 // with batchBytes: the event cap announced (0: 10,000)
	gate        pushGate
	failBatches int      // refuse this many pushes of several events
	pushed      []uint64 // the sequence numbers taken, in order
	sizes       []int    // events per push, failed ones included
	bytes       []int    // request bytes per push
	pullFn      func(ack *uint64) (peerclient.PullResult, error)
}

func (f *fakePeers) Push(_ context.Context, _ domain.ServerID, seq uint64, events []*syncv1.Event) (peerclient.PushResult, error) {
	f.gate.pass()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return peerclient.PushResult{}, errors.New("connection refused")
	}
	req := &syncv1.PushRequest{Event: events[0]}
	seqext.SetPushSeq(req, seq)
	if err := seqext.AddFollowing(req, events[1:]...); err != nil {
		return peerclient.PushResult{}, err
	}
	f.sizes = append(f.sizes, len(events))
	f.bytes = append(f.bytes, proto.Size(req))
	if len(events) > 1 && f.failBatches > 0 {
		f.failBatches--
		return peerclient.PushResult{}, errors.New("request too large")
	}
	if f.batchBytes == 0 {
		f.pushed = append(f.pushed, seq)
		return peerclient.PushResult{Through: seq}, nil
	}
	for i := range events {
		f.pushed = append(f.pushed, seq+uint64(i))
	}
	n := f.batchEvents
	if n == 0 {
		n = 10000
	}
	if len(events) > int(n) {
		return peerclient.PushResult{}, errors.New("too many events")
	}
	return peerclient.PushResult{Through: seq + uint64(len(events)) - 1, BatchBytes: f.batchBytes, BatchEvents: n}, nil
}

func (f *fakePeers) Pull(_ context.Context, _ domain.ServerID, ack *uint64) (peerclient.PullResult, error) {
	f.mu.Lock()
	fn := f.pullFn
	f.mu.Unlock()
	if fn == nil {
		return peerclient.PullResult{}, nil
	}
	return fn(ack)
}

func (f *fakePeers) setDown(v bool) { f.mu.Lock(); f.down = v; f.mu.Unlock() }
func (f *fakePeers) pushes() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]uint64(nil), f.pushed...)
}

type world struct {
	t      *testing.T
	dir    string
	store  *embedded.Store
	peers  *fakePeers
	client PeerClient    // calls peers; peers unless set
	clock  domain.Timers // the engine's; the system's unless set
	engine *Engine
	stop   func() // ends the engine's Run
	cfg    Config
	// beforeRun, if set, runs between New and Run, as the assembly
	// attaches renames.
	beforeRun func()
	// wrap, if set, stands between the engine and its store.
	wrap func(Store) Store
	logs *logBuffer // the engine's log, when set
}

func testConfig() Config {
	cfg := DefaultConfig()
	cfg.PushRetries = 2
	cfg.PushBackoff = domain.Backoff{First: time.Millisecond, Max: 4 * time.Millisecond}
	cfg.ResumeProbe = false
	cfg.PullInterval = time.Hour
	return cfg
}

func newWorld(t *testing.T, cfg Config) *world {
	t.Helper()
	w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: cfg}
	w.open()
	return w
}

func (w *world) open() {
	w.t.Helper()
	ctx := context.Background()
	store, err := embedded.Open(ctx, w.dir, embedded.Options{})
	if err != nil {
		w.t.Fatal(err)
	}
	codec := streams.NewCodec(rand.Reader)
	reg, err := registry.Load(ctx, store, codec, rand.Reader, nil)
	if err != nil {
		w.t.Fatal(err)
	}
	w.store = store
	client := w.client
	if client == nil {
		client = w.peers
	}
	var clock domain.Timers = systemClock{}
	if w.clock != nil {
		clock = w.clock
	}
	var engineStore Store = store
	if w.wrap != nil {
		engineStore = w.wrap(store)
	}
	var logTo io.Writer = io.Discard
	if w.logs != nil {
		logTo = w.logs
	}
	w.engine = New(w.cfg, engineStore, codec, reg, client, clock, slog.New(slog.NewTextHandler(logTo, nil)), rand.Reader)
	if w.beforeRun != nil {
		w.beforeRun()
	}
	// Pushes from known peers wait until their startup pull is done.
	w.stop = runEngine(w.t, w.engine)
	select {
	case <-w.engine.Ready():
	case <-time.After(10 * time.Second):
		w.t.Fatal("the startup pulls did not end within 10 s")
	}
	w.t.Cleanup(w.close)
}

func (w *world) close() {
	if w.engine != nil {
		w.stop()
		w.store.Close()
		w.engine = nil
	}
}

// runEngine runs e until the returned stop is called (at the latest when
// the test ends), and returns once e has rebuilt its state.
func runEngine(t testing.TB, e *Engine) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	// Bounded waits: an engine that never starts or never stops fails the
	// test in seconds rather than hanging the whole run.
	select {
	case <-e.started:
	case err := <-done:
		cancel()
		t.Fatalf("Run: %v", err)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("Run did not rebuild the state within 10 s")
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("Run did not return within 10 s of being stopped")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func (w *world) restart() {
	w.close()
	w.open()
}

var peerB = domain.MustParseServerID("b.example:2289")

func added(i uint64) *syncv1.Event {
	return &syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: i, GuildId: 1}}}
}

func (w *world) send(n int) {
	w.t.Helper()
	for i := 0; i < n; i++ {
		if _, err := w.engine.Send(context.Background(), peerB, added(uint64(i))); err != nil {
			w.t.Fatal(err)
		}
	}
}

// deliveryRecords returns the types recorded in B's delivery stream.
func (w *world) deliveryRecords() []domain.DeliveryEvent {
	w.t.Helper()
	id, _ := w.engine.registry.Lookup(peerB)
	var out []domain.DeliveryEvent
	_, err := readAll(context.Background(), w.store, streams.Delivery(id), func(r eventstore.RecordedEvent) error {
		ev, err := streams.DecodeDelivery(r)
		out = append(out, ev)
		return err
	})
	if err != nil {
		w.t.Fatal(err)
	}
	return out
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (w *world) state() domain.Outbox {
	id, _ := w.engine.registry.Lookup(peerB)
	p := w.engine.peer(id)
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out
}

func TestEventsArePushedInOrderAndRecorded(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	w.send(50)
	eventually(t, "50 pushes recorded", func() bool { return len(w.deliveryRecords()) == 50 })
	for i, seq := range w.peers.pushes() {
		if seq != uint64(i) {
			t.Fatalf("push %d carried seq %d", i, seq)
		}
	}
	for i, r := range w.deliveryRecords() {
		if p, ok := r.(domain.EventPushed); !ok || p.Seq != uint64(i) {
			t.Fatalf("record %d is %#v", i, r)
		}
	}
}

func (f *fakePeers) set(fn func(f *fakePeers)) { f.mu.Lock(); fn(f); f.mu.Unlock() }

func (f *fakePeers) pushSizes() ([]int, []int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]int(nil), f.sizes...), append([]int(nil), f.bytes...)
}

// pushGate can hold the pushes that reach a test double, and counts them.
type pushGate struct {
	mu      sync.Mutex
	hold    chan struct{} // set: pushes wait until it is closed
	arrived int           // pushes that reached it, held ones included
}

// pass counts a push and waits while pushes are held.
func (g *pushGate) pass() {
	g.mu.Lock()
	hold := g.hold
	g.arrived++
	g.mu.Unlock()
	if hold != nil {
		<-hold
	}
}

// holdPushes makes the next pushes wait, and returns what lets them go.
func (g *pushGate) holdPushes() (release func()) {
	hold := make(chan struct{})
	g.mu.Lock()
	g.hold = hold
	g.mu.Unlock()
	return func() {
		g.mu.Lock()
		g.hold = nil
		g.mu.Unlock()
		close(hold)
	}
}

// arrivedIs reports whether n pushes have reached the gate.
func (g *pushGate) arrivedIs(n int) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.arrived == n
}

// holdPushes makes the next push to the fake wait, and returns what lets
// it go.
func (w *world) holdPushes() (release func()) { return w.peers.gate.holdPushes() }

// pushedInOrder checks that the peer took events 0..n-1, each once, in order.
func (w *world) pushedInOrder(n int) {
	w.t.Helper()
	eventually(w.t, fmt.Sprintf("%d events delivered", n), func() bool { return w.state().Delivered == uint64(n) })
	got := w.peers.pushes()
	if len(got) != n {
		w.t.Fatalf("the peer took %d events, want %d: %v", len(got), n, got)
	}
	for i, seq := range got {
		if seq != uint64(i) {
			w.t.Fatalf("event %d taken as seq %d: %v", i, seq, got)
		}
	}
}

func TestAPushCarriesSeveralEventsOnceThePeerAnnouncesIt(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.PushBatchEvents = 100
	w := newWorld(t, cfg)
	w.peers.set(func(f *fakePeers) { f.batchBytes = 1 << 20 })
	// Given a first push under way, before the peer has announced anything,
	release := w.holdPushes()
	w.send(301)
	// when it is answered,
	release()
	// then the next pushes carry what waited, up to the cap, in order.
	w.pushedInOrder(301)
	if sizes, _ := w.peers.pushSizes(); !slices.Equal(sizes, []int{1, 100, 100, 100}) {
		t.Fatalf("events per push: %v, want [1 100 100 100]", sizes)
	}
	want := []domain.DeliveryEvent{
		domain.EventPushed{Seq: 0, Attempts: 1},
		domain.EventPushed{Seq: 1, Through: 100, Attempts: 1},
		domain.EventPushed{Seq: 101, Through: 200, Attempts: 1},
		domain.EventPushed{Seq: 201, Through: 300, Attempts: 1},
	}
	eventually(t, "the pushes recorded", func() bool { return len(w.deliveryRecords()) == len(want) })
	if got := w.deliveryRecords(); !reflect.DeepEqual(got, want) {
		t.Fatalf("delivery records %#v, want %#v", got, want)
	}
}

func TestAPushStaysWithinTheEventsThePeerAnnounced(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	w.peers.set(func(f *fakePeers) { f.batchBytes, f.batchEvents = 1<<20, 7 })
	release := w.holdPushes()
	w.send(30)
	release()
	w.pushedInOrder(30)
	if sizes, _ := w.peers.pushSizes(); !slices.Equal(sizes, []int{1, 7, 7, 7, 7, 1}) {
		t.Fatalf("events per push: %v, want [1 7 7 7 7 1]", sizes)
	}
}

func TestAPushStaysWithinTheBytesThePeerAnnounced(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	const limit = 200
	w.peers.set(func(f *fakePeers) { f.batchBytes = limit })
	release := w.holdPushes()
	w.send(100)
	release()
	w.pushedInOrder(100)
	sizes, bytes := w.peers.pushSizes()
	if len(sizes) < 3 || slices.Max(sizes) < 2 {
		t.Fatalf("events per push: %v, want several pushes of several events", sizes)
	}
	for i, b := range bytes {
		if b > limit {
			t.Fatalf("push %d was %d bytes, over the %d announced", i, b, limit)
		}
	}
}

func TestAnUpstreamPeerGetsOneEventPerPush(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig()) // the fake announces nothing, as upstream
	release := w.holdPushes()
	w.send(20)
	release()
	w.pushedInOrder(20)
	if sizes, _ := w.peers.pushSizes(); slices.Max(sizes) != 1 || len(sizes) != 20 {
		t.Fatalf("events per push: %v, want 20 pushes of one", sizes)
	}
}

func TestAFailedPushOfSeveralEventsIsRetriedWithOne(t *testing.T) {
	t.Parallel()
	synctest.Test(t, testAFailedPushOfSeveralEventsIsRetriedWithOne)
}

// testAFailedPushOfSeveralEventsIsRetriedWithOne runs in a synctest bubble: the retry waits its backoff on the bubble's clock.
func testAFailedPushOfSeveralEventsIsRetriedWithOne(t *testing.T) {
	w := newWorld(t, testConfig())
	w.peers.set(func(f *fakePeers) { f.batchBytes = 1 << 20 })
	w.send(1)
	w.pushedInOrder(1) // the peer has announced batches
	// Given a push of one event under way and nine events waiting behind it,
	release := w.holdPushes()
	w.send(1)
	eventually(t, "the push under way", func() bool { return w.peers.gate.arrivedIs(2) })
	w.send(9)
	// when the peer refuses the next push of several events,
	w.peers.set(func(f *fakePeers) { f.failBatches = 1 })
	release()
	// then the retry carries one event, and once the peer announces
	// again, the rest go together.
	w.pushedInOrder(11)
	if sizes, _ := w.peers.pushSizes(); !slices.Equal(sizes, []int{1, 1, 9, 1, 8}) {
		t.Fatalf("events per push: %v, want [1 1 9 1 8]", sizes)
	}
}

func TestQueueModeThenAcknowledgedPullsThenPushAgain(t *testing.T) {
	t.Parallel()
	synctest.Test(t, testQueueModeThenAcknowledgedPullsThenPushAgain)
}

// testQueueModeThenAcknowledgedPullsThenPushAgain runs in a synctest bubble: the retries before queue mode wait on its clock, and nothing more happens once every goroutine waits.
func testQueueModeThenAcknowledgedPullsThenPushAgain(t *testing.T) {
	w := newWorld(t, testConfig())
	w.peers.setDown(true)
	w.send(5)
	eventually(t, "queue mode", func() bool { return w.state().Mode == domain.ModeQueue })
	if n := len(w.peers.pushes()); n != 0 {
		t.Fatalf("%d pushes went through a dead peer", n)
	}
	w.send(2) // later events wait in the queue
	synctest.Wait()
	if n := len(w.peers.pushes()); n != 0 {
		t.Fatal("pushed while in queue mode")
	}
	caller := domain.Caller{ServerID: peerB, Extended: true}
	ctx := context.Background()

	batch, err := w.engine.ServePull(ctx, caller, nil)
	if err != nil || len(batch.Events) != 7 || batch.FirstSeq != 0 {
		t.Fatalf("first pull: %d events from %d, %v", len(batch.Events), batch.FirstSeq, err)
	}
	// The reply was lost: the same events come again.
	batch, err = w.engine.ServePull(ctx, caller, nil)
	if err != nil || len(batch.Events) != 7 || batch.FirstSeq != 0 {
		t.Fatalf("pull after a lost reply: %d events from %d, %v", len(batch.Events), batch.FirstSeq, err)
	}
	ack := uint64(6)
	batch, err = w.engine.ServePull(ctx, caller, &ack)
	if err != nil || len(batch.Events) != 0 {
		t.Fatalf("acknowledged pull: %d events, %v", len(batch.Events), err)
	}
	if s := w.state(); s.Mode != domain.ModePush || s.Delivered != 7 {
		t.Fatalf("after the drained queue: %+v", s)
	}
	w.peers.setDown(false)
	w.send(1)
	eventually(t, "the next event pushed", func() bool { p := w.peers.pushes(); return len(p) == 1 && p[0] == 7 })
}

func TestAPullFromAnUnknownServerRegistersNothing(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	w.send(1)
	stranger := domain.Caller{ServerID: domain.MustParseServerID("c.example:2289"), Extended: true}
	batch, err := w.engine.ServePull(context.Background(), stranger, nil)
	if err != nil || len(batch.Events) != 0 {
		t.Fatalf("stranger's pull: %v, %v", batch, err)
	}
	if _, ok := w.engine.registry.Lookup(stranger.ServerID); ok {
		t.Fatal("a pull registered a peer")
	}
}

func TestStateIsRebuiltFromTheStreamsAfterARestart(t *testing.T) {
	t.Parallel()
	synctest.Test(t, testStateIsRebuiltFromTheStreamsAfterARestart)
}

// testStateIsRebuiltFromTheStreamsAfterARestart runs in a synctest bubble: the retries before queue mode wait on the bubble's clock.
func testStateIsRebuiltFromTheStreamsAfterARestart(t *testing.T) {
	w := newWorld(t, testConfig())
	w.peers.setDown(true)
	w.send(4)
	eventually(t, "queue mode", func() bool { return w.state().Mode == domain.ModeQueue })
	batch, _ := w.engine.ServePull(context.Background(), domain.Caller{ServerID: peerB, Extended: true}, nil)
	if len(batch.Events) != 4 {
		t.Fatalf("pull got %d", len(batch.Events))
	}
	w.restart()
	if s := w.state(); s.Mode != domain.ModeQueue || s.Head != 4 || s.Delivered != 0 || s.HandedOver != 4 {
		t.Fatalf("rebuilt state %+v", s)
	}
	ack := uint64(1)
	batch, _ = w.engine.ServePull(context.Background(), domain.Caller{ServerID: peerB, Extended: true}, &ack)
	if batch.FirstSeq != 2 || len(batch.Events) != 2 {
		t.Fatalf("after restart and ack 1: %d events from %d", len(batch.Events), batch.FirstSeq)
	}
}

func TestPushesResumeAfterARestartWhereTheyStopped(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	w.send(3)
	eventually(t, "3 pushes recorded", func() bool { return len(w.deliveryRecords()) == 3 })
	w.peers.setDown(true)
	w.close()
	w.peers.setDown(false)
	// Events appended while the engine was down are pushed on start.
	w.open()
	w.send(2)
	eventually(t, "5 pushes recorded", func() bool { return len(w.deliveryRecords()) == 5 })
	if got := w.peers.pushes(); len(got) != 5 || got[3] != 3 || got[4] != 4 {
		t.Fatalf("pushes %v", got)
	}
}

func TestReceivedEventsAreAppliedOnceAndInOrder(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	ctx := context.Background()
	sender := domain.Caller{ServerID: domain.MustParseServerID("s.example:2289"), Extended: true}
	seq := func(v uint64) *uint64 { return &v }
	for _, s := range []uint64{0, 1, 1, 0, 2} { // a retried push, a re-sent one
		if err := w.engine.AcceptPush(ctx, sender, []*syncv1.Event{added(s)}, seq(s)); err != nil {
			t.Fatal(err)
		}
	}
	id, _ := w.engine.registry.Lookup(sender.ServerID)
	recs := receivedIn(t, w.store, streams.Inbox(id))
	if len(recs) != 3 {
		t.Fatalf("inbox holds %d events, want 3", len(recs))
	}
	for i, rec := range recs {
		if *rec.SenderSeq != uint64(i) || rec.Via != eventsv1.EventReceived_VIA_PUSH || rec.Event.GetUserAddedToGuild().GetUserId() != uint64(i) {
			t.Fatalf("inbox[%d] = %+v", i, rec)
		}
	}
	// A push of several events that overlaps what was applied: only the
	// new ones are appended, in one append.
	if err := w.engine.AcceptPush(ctx, sender, []*syncv1.Event{added(1), added(2), added(3), added(4)}, seq(1)); err != nil {
		t.Fatal(err)
	}
	recs = receivedIn(t, w.store, streams.Inbox(id))
	if len(recs) != 5 {
		t.Fatalf("inbox holds %d events, want 5", len(recs))
	}
	for i, rec := range recs {
		if *rec.SenderSeq != uint64(i) || rec.Event.GetUserAddedToGuild().GetUserId() != uint64(i) {
			t.Fatalf("inbox[%d] = %+v", i, rec)
		}
	}
	// After a restart the receiver still knows what it applied.
	w.restart()
	if err := w.engine.AcceptPush(ctx, sender, []*syncv1.Event{added(2)}, seq(2)); err != nil {
		t.Fatal(err)
	}
	if recs := receivedIn(t, w.store, streams.Inbox(id)); len(recs) != 5 {
		t.Fatalf("a replayed push was applied after a restart: %d events", len(recs))
	}
}

func TestAPushWaitsForThisServersPullFromTheSender(t *testing.T) {
	t.Parallel()
	synctest.Test(t, testAPushWaitsForThisServersPullFromTheSender)
}

// testAPushWaitsForThisServersPullFromTheSender runs in a synctest bubble: the push is seen waiting once every goroutine waits.
func testAPushWaitsForThisServersPullFromTheSender(t *testing.T) {
	w := newWorld(t, testConfig())
	ctx := context.Background()
	sender := domain.Caller{ServerID: domain.MustParseServerID("s.example:2289"), Extended: true}
	seq := func(v uint64) *uint64 { return &v }
	if err := w.engine.AcceptPush(ctx, sender, []*syncv1.Event{added(0)}, seq(0)); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	served := false
	w.peers.mu.Lock()
	w.peers.pullFn = func(ack *uint64) (peerclient.PullResult, error) {
		if served {
			return peerclient.PullResult{}, nil
		}
		<-release
		served = true
		if ack == nil || *ack != 0 {
			t.Errorf("pull ack %v, want 0", ack)
		}
		return peerclient.PullResult{Events: []*syncv1.Event{added(1), added(2)}, FirstSeq: 1, HasSeq: true}, nil
	}
	w.peers.mu.Unlock()
	pulled := make(chan error, 1)
	go func() { pulled <- w.engine.PullFrom(ctx, sender.ServerID) }()
	eventually(t, "the pull to start", func() bool {
		id, _ := w.engine.registry.Lookup(sender.ServerID)
		p := w.engine.peer(id)
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.pullGate != nil
	})
	pushed := make(chan error, 1)
	go func() { pushed <- w.engine.AcceptPush(ctx, sender, []*syncv1.Event{added(3)}, seq(3)) }()
	synctest.Wait()
	select {
	case err := <-pushed:
		t.Fatalf("the push finished during the pull: %v", err)
	default:
	}
	close(release)
	if err := <-pulled; err != nil {
		t.Fatal(err)
	}
	if err := <-pushed; err != nil {
		t.Fatal(err)
	}
	id, _ := w.engine.registry.Lookup(sender.ServerID)
	var order []uint64
	for _, rec := range receivedIn(t, w.store, streams.Inbox(id)) {
		order = append(order, *rec.SenderSeq)
	}
	if len(order) != 4 || order[1] != 1 || order[2] != 2 || order[3] != 3 {
		t.Fatalf("inbox order %v, want [0 1 2 3]", order)
	}
}

func TestIdlePeersHoldNoGoroutine(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	w.send(3)
	eventually(t, "the push loop to exit", func() bool {
		id, _ := w.engine.registry.Lookup(peerB)
		p := w.engine.peer(id)
		p.mu.Lock()
		defer p.mu.Unlock()
		return !p.pushing && !p.flushing && p.out.Delivered == 3
	})
}

// The retry waits a second, on a clock the test controls (a synctest
// bubble's): the test takes no second.
func TestAPullRefusedAsPredatingThePeersStartIsRetried(t *testing.T) {
	t.Parallel()
	synctest.Test(t, testAPullRefusedAsPredatingThePeersStartIsRetried)
}

func testAPullRefusedAsPredatingThePeersStartIsRetried(t *testing.T) {
	w := newWorld(t, testConfig())
	ctx := context.Background()
	sender := domain.MustParseServerID("s.example:2289")
	if _, err := w.engine.registry.Register(ctx, sender); err != nil {
		t.Fatal(err)
	}
	calls := 0
	w.peers.mu.Lock()
	w.peers.pullFn = func(*uint64) (peerclient.PullResult, error) {
		calls++
		switch calls {
		case 1:
			return peerclient.PullResult{}, fromPeer(&hrpc.RemoteError{HTTPStatus: 400, Identifier: "postbox.token-replayed"})
		case 2:
			return peerclient.PullResult{Events: []*syncv1.Event{added(0)}, FirstSeq: 0, HasSeq: true}, nil
		}
		return peerclient.PullResult{}, nil
	}
	w.peers.mu.Unlock()
	start := time.Now()
	if err := w.engine.PullFrom(ctx, sender); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < time.Second {
		t.Errorf("retried after %s, want a second: a token signed in the same second is refused again", waited)
	}
	id, _ := w.engine.registry.Lookup(sender)
	if recs := receivedIn(t, w.store, streams.Inbox(id)); len(recs) != 1 || calls != 3 {
		t.Fatalf("inbox %d events after %d calls, want 1 after 3", len(recs), calls)
	}
}

func TestFirstContactsArrivingTogetherShareAppends(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	ctx := context.Background()
	before := w.store.Stats().Appends
	const n = 200
	ids := make([]streams.PeerID, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			id, err := w.engine.registry.Register(ctx, domain.MustParseServerID(fmt.Sprintf("p%d.example:2289", i)))
			if err != nil {
				t.Error(err)
			}
			ids[i] = id
		})
	}
	wg.Wait()
	seen := map[streams.PeerID]bool{}
	for i, id := range ids {
		again, _ := w.engine.registry.Register(ctx, domain.MustParseServerID(fmt.Sprintf("p%d.example:2289", i)))
		if id == "" || seen[id] || again != id {
			t.Fatalf("peer %d: ID %q (again %q), duplicate %v", i, id, again, seen[id])
		}
		seen[id] = true
	}
	recs, _ := w.store.ReadStream(ctx, streams.Peers, 0, 1000)
	if len(recs) != n {
		t.Fatalf("peers stream holds %d records, want %d", len(recs), n)
	}
	if appends := w.store.Stats().Appends - before; appends >= n {
		t.Fatalf("%d first contacts took %d appends: none were grouped", n, appends)
	}
}

// engineLink carries one engine's pushes straight into another's
// AcceptPush, answering as the federation service does, and can lose the
// reply to a push the receiver applied.
type engineLink struct {
	to   *Engine
	from domain.ServerID

	gate        pushGate
	mu          sync.Mutex
	loseReplies int // this many applied pushes of several events answer with an error
}

func (l *engineLink) Push(ctx context.Context, _ domain.ServerID, seq uint64, events []*syncv1.Event) (peerclient.PushResult, error) {
	l.gate.pass()
	if err := l.to.AcceptPush(ctx, domain.Caller{ServerID: l.from, Extended: true}, events, &seq); err != nil {
		return peerclient.PushResult{}, err
	}
	l.mu.Lock()
	lose := len(events) > 1 && l.loseReplies > 0
	if lose {
		l.loseReplies--
	}
	l.mu.Unlock()
	if lose {
		return peerclient.PushResult{}, errors.New("connection reset before the reply")
	}
	return peerclient.PushResult{Through: seq + uint64(len(events)) - 1, BatchBytes: 1 << 20, BatchEvents: 10000}, nil
}

func (l *engineLink) Pull(context.Context, domain.ServerID, *uint64) (peerclient.PullResult, error) {
	return peerclient.PullResult{}, nil
}

func TestALostReplyToAPushOfSeveralEventsDeliversEachOnce(t *testing.T) {
	t.Parallel()
	b := newWorld(t, testConfig())
	aID := domain.MustParseServerID("a.example:2289")
	link := &engineLink{to: b.engine, from: aID}
	a := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, client: link, cfg: testConfig()}
	a.open()

	// Given B has announced batches, a push of one event under way, and
	// 49 events waiting behind it,
	a.send(1)
	eventually(t, "the first push", func() bool { return a.state().Delivered == 1 })
	release := link.gate.holdPushes()
	if _, err := a.engine.Send(t.Context(), peerB, added(1)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the held push", func() bool { return link.gate.arrivedIs(2) })
	for i := uint64(2); i < 50; i++ {
		if _, err := a.engine.Send(t.Context(), peerB, added(i)); err != nil {
			t.Fatal(err)
		}
	}
	// when B applies the next push, of 48 events, but its reply is lost,
	link.mu.Lock()
	link.loseReplies = 1
	link.mu.Unlock()
	release()
	// then A pushes them again, B drops what it has, and B holds each
	// event once, in order.
	eventually(t, "every event delivered", func() bool { return a.state().Delivered == 50 })
	id, _ := b.engine.registry.Lookup(aID)
	recs := receivedIn(t, b.store, streams.Inbox(id))
	if len(recs) != 50 {
		t.Fatalf("B's inbox holds %d events, want 50", len(recs))
	}
	for i, rec := range recs {
		if *rec.SenderSeq != uint64(i) || rec.Event.GetUserAddedToGuild().GetUserId() != uint64(i) {
			t.Fatalf("B's inbox[%d] = %+v", i, rec)
		}
	}
	want := []domain.DeliveryEvent{
		domain.EventPushed{Seq: 0, Attempts: 1},
		domain.EventPushed{Seq: 1, Attempts: 1},
		domain.EventPushed{Seq: 2, Attempts: 2}, // the retry after the lost reply carries one event
		domain.EventPushed{Seq: 3, Through: 49, Attempts: 1},
	}
	eventually(t, "A's records", func() bool { return len(a.deliveryRecords()) == len(want) })
	if got := a.deliveryRecords(); !reflect.DeepEqual(got, want) {
		t.Fatalf("A's delivery records %#v, want %#v", got, want)
	}
}

// fromPeer is an hRPC error answer as the peer client hands it to the
// engine: read back through the one error table, marked as the peer's.
func fromPeer(remote *hrpc.RemoteError) error {
	wait, busy := remote.Busy()
	return rpcerrors.FromPeer(remote.Identifier, remote, busy, wait)
}

// The engine serves calls only while Run runs: before, they wait for it to
// rebuild the peers' state; after, they are refused as unavailable; and
// Run runs once.
func TestCallsWaitForRunAndEndWithIt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, err := embedded.Open(ctx, t.TempDir(), embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	codec := streams.NewCodec(rand.Reader)
	reg, err := registry.Load(ctx, store, codec, rand.Reader, nil)
	if err != nil {
		t.Fatal(err)
	}
	peers := &fakePeers{}
	e := New(testConfig(), store, codec, reg, peers, systemClock{}, slog.New(slog.DiscardHandler), rand.Reader)

	early, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := e.Send(early, peerB, added(0)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Send before Run = %v, want it to wait for Run until its deadline", err)
	}
	stop := runEngine(t, e)
	if _, err := e.Send(ctx, peerB, added(0)); err != nil {
		t.Fatalf("Send while Run runs: %v", err)
	}
	eventually(t, "the push", func() bool { return len(peers.pushes()) == 1 })
	if err := e.Run(ctx); err == nil {
		t.Error("a second Run started")
	}
	stop()
	if _, err := e.Send(ctx, peerB, added(1)); !errors.Is(err, domain.ErrUnavailable) {
		t.Errorf("Send after Run ended = %v, want unavailable", err)
	}
	if err := e.AcceptPush(ctx, domain.Caller{ServerID: peerB}, []*syncv1.Event{added(0)}, nil); !errors.Is(err, domain.ErrUnavailable) {
		t.Errorf("AcceptPush after Run ended = %v, want unavailable", err)
	}
}

// A peer this server has only sent to is pulled now and then, as every
// peer is at startup: that pull tells the peer what this server holds from
// it, so a peer whose events this server lost (its store went back) sends
// them again. Before, such a peer was never pulled until a restart.
func TestAPeerThisServerOnlySendsToIsPulledPeriodically(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.PullInterval = 20 * time.Millisecond
	w := newWorld(t, cfg)
	pulls := make(chan struct{}, 16)
	w.peers.set(func(f *fakePeers) {
		f.pullFn = func(*uint64) (peerclient.PullResult, error) {
			select {
			case pulls <- struct{}{}:
			default:
			}
			return peerclient.PullResult{}, nil
		}
	})
	w.send(1)
	for range 2 {
		select {
		case <-pulls:
		case <-time.After(10 * time.Second):
			t.Fatal("the peer this server sent to was not pulled")
		}
	}
}

// failFirstPull makes the peer fail the first pull and answer the others
// empty; the channel hears of each pull.
func (w *world) failFirstPull() <-chan struct{} {
	pulls := make(chan struct{}, 16)
	failed := false
	w.peers.set(func(f *fakePeers) {
		f.pullFn = func(*uint64) (peerclient.PullResult, error) {
			f.mu.Lock()
			first := !failed
			failed = true
			f.mu.Unlock()
			pulls <- struct{}{}
			if first {
				return peerclient.PullResult{}, errors.New("connection refused")
			}
			return peerclient.PullResult{}, nil
		}
	})
	return pulls
}

// A failed pull is tried again soon, with backoff, not a whole pull
// interval later: the peer may be holding a queue for this server.
func TestAFailedPullIsRetriedBeforeThePullInterval(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig()) // pull interval: an hour
	w.send(1)
	pulls := w.failFirstPull()
	w.restart() // the startup pull fails
	for range 2 {
		select {
		case <-pulls:
		case <-time.After(10 * time.Second):
			t.Fatal("the failed pull was not tried again within 10 s")
		}
	}
}

// Given a pull of a peer that failed (its retry due in seconds), when the
// peer pushes, then the retry still comes: a push puts off the periodic
// pull only while pulls succeed, so the next pull does not depend on
// whether the push or the failure came first.
func TestAPushDoesNotPutOffTheRetryOfAFailedPull(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig()) // pull interval: an hour
	w.send(1)
	pulls := w.failFirstPull()
	w.restart() // the startup pull fails
	select {
	case <-pulls:
	case <-time.After(10 * time.Second):
		t.Fatal("no startup pull")
	}
	eventually(t, "the failure counted", func() bool {
		p := w.engine.knownPeer(mustLookup(t, w, peerB))
		if p == nil {
			return false
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.pullFailures > 0
	})
	if err := w.engine.AcceptPush(context.Background(), domain.Caller{ServerID: peerB}, []*syncv1.Event{added(0)}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-pulls:
	case <-time.After(10 * time.Second):
		t.Fatal("the push put the failed pull's retry off by the pull interval")
	}
}
