package delivery

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/adapters/rpcerrors"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// fakeOwners gives this replica every peer or none.
type fakeOwners struct {
	name    string
	mu      sync.Mutex
	all     bool
	changed chan struct{}
	// afterRefresh, if set, is what Owns says once the heartbeats are
	// read again (Refresh): a replica whose view was behind.
	afterRefresh *bool
	refreshes    int
}

func (o *fakeOwners) RefreshIfIdle(context.Context) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.refreshes++
	if o.afterRefresh != nil {
		o.all, o.afterRefresh = *o.afterRefresh, nil
	}
	return nil
}

func newFakeOwners(name string, all bool) *fakeOwners {
	return &fakeOwners{name: name, all: all, changed: make(chan struct{})}
}

func (o *fakeOwners) Name() string { return o.name }

func (o *fakeOwners) Owns(streams.PeerID) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.all
}

func (o *fakeOwners) Changed() <-chan struct{} {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.changed
}

func (o *fakeOwners) set(all bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.all = all
	close(o.changed)
	o.changed = make(chan struct{})
}

// replicaPair is two replicas' engines on one store, pushing to one fake
// peer.
type replicaPair struct {
	store  *embedded.Store
	peers  *fakePeers
	owners [2]*fakeOwners
	engine [2]*Engine
}

func newReplicaPair(t *testing.T) *replicaPair {
	t.Helper()
	return newReplicaPairWith(t, testConfig())
}

func newReplicaPairWith(t *testing.T, cfg Config) *replicaPair {
	t.Helper()
	return newReplicaPairClient(t, cfg, nil)
}

// newReplicaPairClient is newReplicaPairWith calling peers through client
// (nil: the pair's fakePeers).
func newReplicaPairClient(t *testing.T, cfg Config, client PeerClient) *replicaPair {
	t.Helper()
	ctx := context.Background()
	store, err := embedded.Open(ctx, t.TempDir(), embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rp := &replicaPair{store: store, peers: &fakePeers{}}
	codec := streams.NewCodec(rand.Reader)
	for i, name := range []string{"r1", "r2"} {
		reg, err := registry.Load(ctx, store, codec, rand.Reader, nil)
		if err != nil {
			t.Fatal(err)
		}
		rp.owners[i] = newFakeOwners(name, i == 0)
		if client == nil {
			client = rp.peers
		}
		rp.engine[i] = New(cfg, store, codec, reg, client, systemClock{}, slog.New(slog.NewTextHandler(io.Discard, nil)), rand.Reader)
		rp.engine[i].UseOwners(rp.owners[i])
		stop := runEngine(t, rp.engine[i])
		t.Cleanup(stop)
	}
	t.Cleanup(func() { store.Close() })
	return rp
}

func (rp *replicaPair) send(t *testing.T, via, from, n int) {
	t.Helper()
	for i := range n {
		if _, err := rp.engine[via].Send(context.Background(), peerB, added(uint64(from+i))); err != nil {
			t.Fatal(err)
		}
	}
}

func (rp *replicaPair) records(t *testing.T) []domain.DeliveryEvent {
	t.Helper()
	id, _ := rp.engine[0].registry.Lookup(peerB)
	var out []domain.DeliveryEvent
	_, err := readAll(context.Background(), rp.store, streams.Delivery(id), func(r eventstore.RecordedEvent) error {
		ev, err := streams.DecodeDelivery(r)
		out = append(out, ev)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func seqs(n int) []uint64 {
	out := make([]uint64, n)
	for i := range out {
		out[i] = uint64(i)
	}
	return out
}

func ownerRecords(recs []domain.DeliveryEvent) []domain.OwnerTermStarted {
	var out []domain.OwnerTermStarted
	for _, r := range recs {
		if o, ok := r.(domain.OwnerTermStarted); ok {
			out = append(out, o)
		}
	}
	return out
}

// Only the owner pushes, whichever replica took the Sends; a handover
// records the next term and the new owner goes on where the old stopped.
func TestOnlyThePeersOwnerPushesAndAHandoverGoesOn(t *testing.T) {
	t.Parallel()
	rp := newReplicaPair(t)
	rp.send(t, 1, 0, 20) // at the replica that does not own B
	eventually(t, "the owner to push the 20 events sent at the other replica", func() bool { return len(rp.peers.pushes()) == 20 })

	rp.owners[0].set(false)
	rp.owners[1].set(true)
	// The old owner lets B go at its next look at the owners. A Send there
	// before that may set both pushing event 20 at once, one under each
	// term, which a Postbox receiver sorts out by term and sequence number
	// and this upstream-style fake would take twice.
	id := mustLookupIn(t, rp.engine[0], peerB)
	eventually(t, "the old owner to let B go", func() bool { return !rp.engine[0].runs(id) })
	rp.send(t, 0, 20, 20)
	eventually(t, "the new owner to push the next 20", func() bool { return len(rp.peers.pushes()) >= 40 })
	if got := rp.peers.pushes(); !slices.Equal(got, seqs(40)) {
		t.Fatalf("pushes %v, want 0..39 once each, in order", got)
	}
	want := []domain.OwnerTermStarted{{Term: 1, Replica: "r1"}, {Term: 2, Replica: "r2", Previous: "r1"}}
	if got := ownerRecords(rp.records(t)); !slices.Equal(got, want) {
		t.Fatalf("owner records %+v, want %+v", got, want)
	}
}

// A replica whose view still gives it the peer after another replica
// claimed it pushes nothing more under its old term: its fence sees the
// delivery stream moved on, it reads the other's term, and pushes again
// only once it has claimed the peer back under a later one.
func TestAPushIsFencedByTheDeliveryStream(t *testing.T) {
	t.Parallel()
	rp := newReplicaPair(t)
	rp.send(t, 0, 0, 10)
	eventually(t, "10 pushes", func() bool { return len(rp.peers.pushes()) == 10 })
	eventually(t, "their records", func() bool { return len(rp.records(t)) == 11 })

	// r2 claims B behind r1's back (r1's view says it still owns B).
	id, _ := rp.engine[0].registry.Lookup(peerB)
	ev, err := streams.NewCodec(rand.Reader).EncodeOwnerTerm(domain.OwnerTerm{Term: 2, Replica: "r2"}, "r1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rp.store.Append(context.Background(), streams.Delivery(id), eventstore.Exact(10), ev); err != nil {
		t.Fatal(err)
	}
	rp.send(t, 0, 10, 10)
	eventually(t, "the next 10 pushes", func() bool { return len(rp.peers.pushes()) >= 20 })
	if got := rp.peers.pushes(); !slices.Equal(got, seqs(20)) {
		t.Fatalf("pushes %v, want 0..19 once each: a push under the ended term went out", got)
	}
	recs := rp.records(t)
	want := []domain.OwnerTermStarted{{Term: 1, Replica: "r1"}, {Term: 2, Replica: "r2", Previous: "r1"}, {Term: 3, Replica: "r1", Previous: "r2"}}
	if got := ownerRecords(recs); !slices.Equal(got, want) {
		t.Fatalf("owner records %+v, want %+v", got, want)
	}
	// Nothing was recorded between r2's claim and r1's claim back.
	if _, ok := recs[12].(domain.OwnerTermStarted); !ok {
		t.Fatalf("record 12 is %#v, want r1's claim right after r2's", recs[12])
	}
}

// BenchmarkPushSingleVsReplica pushes b.N events one per push (an
// upstream-style peer) on the embedded store: as a single process, whose
// records are batched behind the pushes, and as a replica, which reads the
// delivery stream's end before each push and waits for each record. The
// difference per push is the replica's fence. Run with -benchtime=2000x.
func BenchmarkPushSingleVsReplica(b *testing.B) {
	for _, mode := range []string{"single", "replica"} {
		b.Run(mode, func(b *testing.B) {
			ctx := context.Background()
			store, err := embedded.Open(ctx, b.TempDir(), embedded.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer store.Close()
			codec := streams.NewCodec(rand.Reader)
			reg, err := registry.Load(ctx, store, codec, rand.Reader, nil)
			if err != nil {
				b.Fatal(err)
			}
			peers := &fakePeers{}
			e := New(testConfig(), store, codec, reg, peers, systemClock{}, slog.New(slog.NewTextHandler(io.Discard, nil)), rand.Reader)
			if mode == "replica" {
				e.UseOwners(newFakeOwners("r1", true))
			}
			stop := runEngine(b, e)
			defer stop()
			// The events are stored first, so that only the pushes are timed.
			peers.setDown(true)
			for i := range b.N {
				if _, err := e.Send(ctx, peerB, added(uint64(i))); err != nil {
					b.Fatal(err)
				}
			}
			peers.setDown(false)
			b.ResetTimer()
			id, _ := reg.Lookup(peerB)
			p := e.peer(id)
			p.mu.Lock()
			if p.out.Mode == domain.ModeQueue {
				p.mu.Unlock()
				if err := e.Resume(ctx, peerB); err != nil {
					b.Fatal(err)
				}
			} else {
				e.kickLocked(p)
				p.mu.Unlock()
			}
			for len(peers.pushes()) < b.N {
				time.Sleep(time.Millisecond)
			}
			b.StopTimer()
		})
	}
}

// A Pull the peer makes at a replica that does not own it ends the owner's
// resume probe, as a Pull at the owner does, and once the queue is empty
// there the owner pushes what is sent next at once, not after its probe's
// backoff (40 s here).
func TestAPullAtAnotherReplicaEndsTheOwnersProbe(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.ResumeProbe = true
	cfg.ProbeBackoff = domain.Backoff{First: 40 * time.Second, Max: time.Minute}
	rp := newReplicaPairWith(t, cfg)
	ctx := context.Background()
	rp.peers.setDown(true)
	rp.send(t, 0, 0, 3)
	eventually(t, "queue mode at the owner", func() bool {
		return slices.ContainsFunc(rp.records(t), func(e domain.DeliveryEvent) bool { _, ok := e.(domain.QueueModeEntered); return ok })
	})
	rp.peers.setDown(false)
	eventually(t, "the other replica to know B", func() bool { _, ok := rp.engine[1].registry.Lookup(peerB); return ok })

	// B (an upstream-style caller: no acknowledgement) pulls at r2.
	caller := domain.Caller{ServerID: peerB}
	batch, err := rp.engine[1].ServePull(ctx, caller, nil)
	if err != nil || len(batch.Events) != 3 {
		t.Fatalf("the Pull at r2: %d events, %v; want the 3 queued", len(batch.Events), err)
	}
	if batch, err = rp.engine[1].ServePull(ctx, caller, nil); err != nil || len(batch.Events) != 0 {
		t.Fatalf("the next Pull at r2: %d events, %v; want none", len(batch.Events), err)
	}
	rp.send(t, 1, 3, 2)
	deadline := time.Now().Add(3 * time.Second)
	for !slices.Equal(rp.peers.pushes(), []uint64{3, 4}) {
		if time.Now().After(deadline) {
			t.Fatalf("the owner pushed %v within 3 s of the sends, want [3 4]: it still acts on its probe", rp.peers.pushes())
		}
		time.Sleep(5 * time.Millisecond)
	}
	rp.engine[0].mu.Lock()
	p := rp.engine[0].peers[mustLookupIn(t, rp.engine[0], peerB)]
	rp.engine[0].mu.Unlock()
	p.mu.Lock()
	armed := p.probeTimer != nil
	p.mu.Unlock()
	if armed {
		t.Fatal("the owner's probe is still armed after the peer pulled at the other replica")
	}
}

func mustLookupIn(t *testing.T, e *Engine, server domain.ServerID) streams.PeerID {
	t.Helper()
	id, ok := e.registry.Lookup(server)
	if !ok {
		t.Fatalf("%s is not a peer", server)
	}
	return id
}

// A push from an upstream-style sender (no sequence numbers) that reaches
// a replica while another replica pulls the sender on taking it over waits
// for that pull, as in a single process: the pulled events, older, come
// first in the inbox.
func TestAPushAtAnotherReplicaWaitsForTheOwnersPull(t *testing.T) {
	t.Parallel()
	rp := newReplicaPair(t)
	ctx := context.Background()
	arrived, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	letGo := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(letGo) // before the engines stop, even if the test fails
	var once sync.Once
	rp.peers.set(func(f *fakePeers) {
		f.pullFn = func(*uint64) (peerclient.PullResult, error) {
			first := false
			once.Do(func() { first = true; close(arrived) })
			if !first {
				return peerclient.PullResult{}, nil
			}
			<-release
			return peerclient.PullResult{Events: []*syncv1.Event{added(100), added(101)}}, nil
		}
	})
	rp.send(t, 0, 0, 1) // B becomes a peer, which r1 takes over and pulls
	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("r1 never pulled B on taking it over")
	}
	rp.pushAtR2WaitsFor(t, ctx, "r1's pull of B", letGo)
}

// Events pulled from an upstream-style sender exist nowhere else once its
// reply is written: when another writer appended to the inbox between this
// replica's read of it and its append, they are appended after, not lost.
func TestPulledEventsAreAppendedAfterAnotherReplicasAppend(t *testing.T) {
	t.Parallel()
	rp := newReplicaPair(t)
	ctx := context.Background()
	rp.send(t, 0, 0, 1)
	id := mustLookupIn(t, rp.engine[0], peerB)
	codec := streams.NewCodec(rand.Reader)
	var pulled atomic.Bool
	rp.peers.set(func(f *fakePeers) {
		f.pullFn = func(*uint64) (peerclient.PullResult, error) {
			if pulled.Swap(true) {
				return peerclient.PullResult{}, nil // the next rounds get nothing
			}
			// Another replica takes a push from B meanwhile.
			data, err := codec.EncodeReceived(streams.Received{Event: added(200), Via: eventsv1.EventReceived_VIA_PUSH})
			if err != nil {
				return peerclient.PullResult{}, err
			}
			if _, err := rp.store.Append(ctx, streams.Inbox(id), eventstore.Any(), data); err != nil {
				return peerclient.PullResult{}, err
			}
			return peerclient.PullResult{Events: []*syncv1.Event{added(100), added(101)}}, nil
		}
	})
	// Reading the inbox first (the pull's acknowledgement does) makes
	// r1's append expect the inbox as it was.
	if err := rp.engine[0].PullFrom(ctx, peerB); err != nil {
		t.Fatalf("PullFrom: %v", err)
	}
	got := inboxUsers(t, rp)
	if !slices.Equal(got, []uint64{200, 100, 101}) && !slices.Equal(got, []uint64{100, 101, 200}) {
		t.Fatalf("inbox %v, want 200 and the pulled 100, 101 each once", got)
	}
}

func inboxUsers(t *testing.T, rp *replicaPair) []uint64 {
	t.Helper()
	id := mustLookupIn(t, rp.engine[0], peerB)
	var out []uint64
	for _, rec := range receivedIn(t, rp.store, streams.Inbox(id)) {
		out = append(out, rec.Event.GetUserAddedToGuild().GetUserId())
	}
	return out
}

// termPeers is a Postbox receiver that has seen owner term seen from this
// server: it refuses pushes under a lower one, as the receiver does.
type termPeers struct {
	*fakePeers
	seen uint64
}

func (c termPeers) PushClaimed(ctx context.Context, peer domain.ServerID, seq uint64, events []*syncv1.Event, claim domain.PushClaim) (domain.PushResult, error) {
	if claim.Term < c.seen {
		return domain.PushResult{}, rpcerrors.FromPeer("postbox.stale-term", errors.New("409 postbox.stale-term"), false, 0)
	}
	return c.Push(ctx, peer, seq, events)
}

func (c termPeers) PullAccounted(ctx context.Context, peer domain.ServerID, ack *uint64, _ domain.PullAccount) (PullBatch, error) {
	return c.Pull(ctx, peer, ack)
}

// A replica whose push is refused as stale while the store still gives it
// that term (the store went back to a backup; the peer saw later terms)
// starts the next term, recorded as any other, until the peer takes its
// pushes; nothing is counted as delivered on the way.
func TestAReplicaStepsPastATermThePeerSawAndTheStoreLost(t *testing.T) {
	t.Parallel()
	peers := &fakePeers{}
	rp := newReplicaPairClient(t, testConfig(), termPeers{fakePeers: peers, seen: 3})
	rp.send(t, 0, 0, 2)
	eventually(t, "the pushes to go through under term 3", func() bool { return len(peers.pushes()) == 2 })
	if got := peers.pushes(); !slices.Equal(got, seqs(2)) {
		t.Fatalf("pushes %v, want 0, 1", got)
	}
	want := []domain.OwnerTermStarted{{Term: 1, Replica: "r1"}, {Term: 2, Replica: "r1", Previous: "r1"}, {Term: 3, Replica: "r1", Previous: "r1"}}
	if got := ownerRecords(rp.records(t)); !slices.Equal(got, want) {
		t.Fatalf("owner records %+v, want %+v", got, want)
	}
}

// Given r2 holding B's term after a handover, when r1, whose view of the
// replicas is behind (it has not read r2's heartbeat yet), believes it runs
// B, then it reads the heartbeats before claiming B, learns it does not,
// and claims nothing: no tug of war of terms between the two.
func TestAReplicaReadsHeartbeatsBeforeClaimingAPeerAnotherHolds(t *testing.T) {
	t.Parallel()
	rp := newReplicaPair(t)
	rp.send(t, 0, 0, 1)
	eventually(t, "the event pushed", func() bool { return len(rp.peers.pushes()) == 1 })
	rp.owners[0].set(false)
	rp.owners[1].set(true)
	terms := func() []domain.OwnerTermStarted {
		var out []domain.OwnerTermStarted
		for _, r := range rp.records(t) {
			if o, ok := r.(domain.OwnerTermStarted); ok {
				out = append(out, o)
			}
		}
		return out
	}
	eventually(t, "r2 to claim B", func() bool { ts := terms(); return len(ts) > 0 && ts[len(ts)-1].Replica == "r2" })
	behind := false
	rp.owners[0].mu.Lock()
	rp.owners[0].afterRefresh = &behind
	rp.owners[0].mu.Unlock()
	rp.owners[0].set(true)
	eventually(t, "r1 to read the heartbeats", func() bool {
		rp.owners[0].mu.Lock()
		defer rp.owners[0].mu.Unlock()
		return rp.owners[0].refreshes > 0
	})
	time.Sleep(100 * time.Millisecond)
	if ts := terms(); ts[len(ts)-1].Replica != "r2" {
		t.Fatalf("terms %+v: r1 claimed B from r2 on a view that was behind", ts)
	}
}

// pushAtR2WaitsFor checks that B's push at r2 waits while r1's pull of B
// (what) is under way, and, once letGo ends that pull, is applied after the
// two pulled events.
func (rp *replicaPair) pushAtR2WaitsFor(t *testing.T, ctx context.Context, what string, letGo func()) {
	t.Helper()
	eventually(t, "r2 to know B", func() bool { _, ok := rp.engine[1].registry.Lookup(peerB); return ok })
	pushed := make(chan error, 1)
	go func() {
		pushed <- rp.engine[1].AcceptPush(ctx, domain.Caller{ServerID: peerB}, []*syncv1.Event{added(200)}, nil)
	}()
	select {
	case err := <-pushed:
		t.Fatalf("the push at r2 returned (%v) while %s was under way", err, what)
	case <-time.After(300 * time.Millisecond):
	}
	letGo()
	select {
	case err := <-pushed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the push at r2 still waits after r1's pull ended")
	}
	if got := inboxUsers(t, rp); !slices.Equal(got, []uint64{100, 101, 200}) {
		t.Fatalf("inbox %v, want the pulled 100, 101 before the pushed 200", got)
	}
}
