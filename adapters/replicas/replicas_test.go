package replicas

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

func TestReplicasOnOneStoreSeeEachOtherAndGiveEachPeerOneOwner(t *testing.T) {
	t.Parallel()
	eachStore(t, func(t *testing.T, store eventstore.Store) {
		clock := newFakeClock()
		a, b, c := newReplica(t, store, clock, "a"), newReplica(t, store, clock, "b"), newReplica(t, store, clock, "c")
		mustStart(t, a, b, c)
		refreshAll(t, a, b, c)
		for _, r := range []*Replicas{a, b, c} {
			if v := r.View(); !slices.Equal(v.Live, []string{"a", "b", "c"}) || v.Self != r.Name() {
				t.Fatalf("%s sees %+v", r.Name(), v)
			}
		}
		owned := map[string]int{}
		for i := range 3000 {
			peer := streams.PeerID(fmt.Sprintf("peer-%d", i))
			n := 0
			for _, r := range []*Replicas{a, b, c} {
				if r.View().Owns(peer) {
					n++
					owned[r.Name()]++
				}
			}
			if n != 1 {
				t.Fatalf("%s has %d owners", peer, n)
			}
		}
		for name, n := range owned {
			if n < 800 || n > 1200 {
				t.Errorf("%s owns %d of 3000 peers", name, n)
			}
		}
		// Heartbeats cost one record per replica per beat, whatever the
		// number of peers.
		recs, err := store.ReadStream(t.Context(), streams.Replicas(streams.ReplicasPeriodOf(clock.Now())), 0, 100)
		if err != nil || len(recs) != 3 {
			t.Fatalf("replicas stream: %d records, %v; want 3", len(recs), err)
		}
	})
}

// Three replicas run their loops on virtual time; c is killed (its loop
// stops, it never says it leaves). a and b take its peers once its lease
// has run out, and not before, and are told through Changed.
func TestAKilledReplicasPeersMoveToTheOthersWhenItsLeaseRunsOut(t *testing.T) {
	t.Parallel()
	eachStore(t, func(t *testing.T, store eventstore.Store) {
		clock := newFakeClock()
		a, b, c := newReplica(t, store, clock, "a"), newReplica(t, store, clock, "b"), newReplica(t, store, clock, "c")
		mustStart(t, a, b, c)
		refreshAll(t, a, b)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		cctx, kill := context.WithCancel(ctx)
		loops := make(chan struct{}, 3)
		for _, r := range []*Replicas{a, b} {
			go func() { r.Run(ctx, clock.After); loops <- struct{}{} }()
		}
		go func() { c.Run(cctx, clock.afterAs("c")); loops <- struct{}{} }()
		clock.waitForWaiters(t, 3)

		// A minute of beats: everyone stays live.
		for range 60 {
			clock.Advance(time.Second)
			clock.waitForWaiters(t, 3)
		}
		if v := a.View(); !slices.Equal(v.Live, []string{"a", "b", "c"}) {
			t.Fatalf("after a minute of beats a sees %v", v.Live)
		}
		gen := a.View().Generation
		changed := a.Changed()

		kill()
		<-loops
		clock.forget("c")                   // c's last wait would count as a running loop's
		lastBeat, _ := c.lastHeartbeat("c") // its own last beat: a may not have read it yet
		killedAt := clock.Now()
		var movedAt time.Time
		for range 30 {
			clock.Advance(500 * time.Millisecond)
			clock.waitForWaiters(t, 2)
			if !slices.Contains(a.View().Live, "c") {
				movedAt = clock.Now()
				break
			}
		}
		if movedAt.IsZero() {
			t.Fatal("c's peers never moved")
		}
		if movedAt.Before(lastBeat.Add(10*time.Second)) || movedAt.After(lastBeat.Add(11*time.Second)) {
			t.Fatalf("c left a's view %s after its last beat (killed %s after it); want just after its 10 s lease",
				movedAt.Sub(lastBeat), killedAt.Sub(lastBeat))
		}
		select {
		case <-changed:
		default:
			t.Fatal("Changed was not closed")
		}
		if v := a.View(); v.Generation != gen+1 || !slices.Equal(v.Live, []string{"a", "b"}) {
			t.Fatalf("a's view %+v", v)
		}
		clock.Advance(time.Second)
		clock.waitForWaiters(t, 2)
		if v := b.View(); !slices.Equal(v.Live, []string{"a", "b"}) {
			t.Fatalf("b sees %v", v.Live)
		}
		for i := range 1000 {
			peer := streams.PeerID(fmt.Sprintf("peer-%d", i))
			if a.View().Owns(peer) == b.View().Owns(peer) {
				t.Fatalf("%s: a owns %v, b owns %v", peer, a.View().Owns(peer), b.View().Owns(peer))
			}
		}
		cancel()
		<-loops
		<-loops
	})
}

func (r *Replicas) lastHeartbeat(name string) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	h, ok := r.set.Latest(name)
	return h.At, ok
}

func TestAReplicaThatLeavesHandsOnItsPeersAtOnce(t *testing.T) {
	t.Parallel()
	eachStore(t, func(t *testing.T, store eventstore.Store) {
		clock := newFakeClock()
		a, b := newReplica(t, store, clock, "a"), newReplica(t, store, clock, "b")
		mustStart(t, a, b)
		refreshAll(t, a)
		if err := b.Leave(t.Context()); err != nil {
			t.Fatal(err)
		}
		refreshAll(t, a)
		if v := a.View(); !slices.Equal(v.Live, []string{"a"}) {
			t.Fatalf("a sees %v after b left", v.Live)
		}
		if v := b.View(); slices.Contains(v.Live, "b") {
			t.Fatalf("b still counts itself live after leaving: %v", v.Live)
		}
		// A later replica under the same name starts at once.
		b2 := newReplica(t, store, clock, "b")
		mustStart(t, b2)
		refreshAll(t, a)
		if v := a.View(); !slices.Equal(v.Live, []string{"a", "b"}) {
			t.Fatalf("a sees %v after b came back", v.Live)
		}
	})
}

func TestAReplicaOfAnotherServerIDOrKeyRefusesToStart(t *testing.T) {
	t.Parallel()
	eachStore(t, func(t *testing.T, store eventstore.Store) {
		clock := newFakeClock()
		a := newReplica(t, store, clock, "a")
		mustStart(t, a)
		otherKey := ed25519.NewKeyFromSeed(make([]byte, 32))
		otherKey[0] = 1 // a different seed
		otherKey = ed25519.NewKeyFromSeed(otherKey[:32])
		for name, edit := range map[string]func(*Config){
			"server ID": func(c *Config) { c.ServerID = "other.example.org:2289" },
			"key":       func(c *Config) { c.PublicKey = otherKey.Public().(ed25519.PublicKey) },
		} {
			d := newReplica(t, store, clock, "d", edit)
			err := d.Start(t.Context(), noWait(t))
			if !errors.Is(err, ErrIdentityMismatch) {
				t.Fatalf("another %s: Start = %v", name, err)
			}
			if msg := err.Error(); !strings.Contains(msg, "live replica a") || !strings.Contains(msg, "--server-id and key file") {
				t.Fatalf("another %s: the error does not say what to do: %v", name, err)
			}
		}
		recs, _ := store.ReadStream(t.Context(), streams.Replicas(streams.ReplicasPeriodOf(clock.Now())), 0, 100)
		if len(recs) != 1 {
			t.Fatalf("a refused replica wrote heartbeats: %d records", len(recs))
		}
		// Once a's lease has run out the store is free for another server.
		clock.Advance(11 * time.Second)
		d := newReplica(t, store, clock, "d", func(c *Config) { c.ServerID = "other.example.org:2289" })
		mustStart(t, d)
		// And a, if it comes back, leaves d out of its live set.
		refreshAll(t, a)
		if v := a.View(); slices.Contains(v.Live, "d") {
			t.Fatalf("a counts a replica of another server: %v", v.Live)
		}
	})
}

// A replica started under the name of a process killed just before (a
// pod restarted under its name) waits for that process's lease to run out,
// then starts; one started under the name of a process that keeps beating
// is refused.
func TestAReplicaNameHeldByAnotherProcessIsWaitedOutOrRefused(t *testing.T) {
	t.Parallel()
	eachStore(t, func(t *testing.T, store eventstore.Store) {
		clock := newFakeClock()
		killed := newReplica(t, store, clock, "a")
		mustStart(t, killed)
		clock.Advance(3 * time.Second)

		started := make(chan error, 1)
		go func() { started <- newReplica(t, store, clock, "a").Start(t.Context(), clock.After) }()
		clock.waitForWaiters(t, 1)
		select {
		case err := <-started:
			t.Fatalf("Start did not wait for the killed process's lease: %v", err)
		default:
		}
		clock.Advance(7 * time.Second) // the lease ends, but is not past
		clock.waitForWaiters(t, 1)
		clock.Advance(time.Millisecond)
		if err := <-started; err != nil {
			t.Fatalf("Start after the killed process's lease: %v", err)
		}

		alive := newReplica(t, store, clock, "b")
		mustStart(t, alive)
		go func() { started <- newReplica(t, store, clock, "b").Start(t.Context(), clock.After) }()
		clock.waitForWaiters(t, 1)
		clock.Advance(5 * time.Second)
		if err := alive.Beat(t.Context()); err != nil {
			t.Fatal(err)
		}
		clock.Advance(5*time.Second + time.Millisecond)
		err := <-started
		if !errors.Is(err, ErrNameInUse) || !strings.Contains(err.Error(), "--replica") {
			t.Fatalf("Start beside a live process of its name: %v", err)
		}
	})
}

func TestAReplicaCutOffFromTheStoreGivesUpItsPeers(t *testing.T) {
	t.Parallel()
	eachStore(t, func(t *testing.T, store eventstore.Store) {
		clock := newFakeClock()
		cut := &failingStore{Store: store}
		a, b := newReplica(t, cut, clock, "a"), newReplica(t, store, clock, "b")
		mustStart(t, a, b)
		refreshAll(t, a)
		cut.set(true)
		for range 10 {
			clock.Advance(time.Second)
			if err := a.Beat(t.Context()); !errors.Is(err, eventstore.ErrClosed) {
				t.Fatalf("Beat while cut off: %v", err)
			}
			if err := b.Beat(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
		if v := a.View(); !slices.Equal(v.Live, []string{"a", "b"}) {
			t.Fatalf("within its lease a sees %v", v.Live)
		}
		clock.Advance(time.Second)
		_ = a.Beat(t.Context())
		if err := b.Beat(t.Context()); err != nil {
			t.Fatal(err)
		}
		// a's own lease has run out: it owns nothing, and b owns all.
		for i := range 200 {
			peer := streams.PeerID(fmt.Sprintf("peer-%d", i))
			if a.View().Owns(peer) || !b.View().Owns(peer) {
				t.Fatalf("%s: a owns %v, b owns %v", peer, a.View().Owns(peer), b.View().Owns(peer))
			}
		}
		cut.set(false)
		if err := a.Beat(t.Context()); err != nil {
			t.Fatal(err)
		}
		if v := a.View(); !slices.Equal(v.Live, []string{"a", "b"}) {
			t.Fatalf("back in touch, a sees %v", v.Live)
		}
	})
}

// A long history of heartbeats: Start reads back only as far as a
// heartbeat may still be live, across more than one page.
func TestStartReadsTheLiveTailOfALongHistory(t *testing.T) {
	t.Parallel()
	eachStore(t, func(t *testing.T, store eventstore.Store) {
		clock := newFakeClock()
		codec := streams.NewCodec(rand.Reader)
		write := func(name string, at time.Time) {
			ev, err := codec.EncodeHeartbeat(streams.Heartbeat{
				ReplicaHeartbeat: domain.ReplicaHeartbeat{Replica: name, At: at, Lease: 10 * time.Second},
				Instance:         []byte(name), ServerID: testServerID, KeyFingerprint: Fingerprint(testKey),
			})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := store.Append(t.Context(), streams.Replicas(streams.ReplicasPeriodOf(at)), eventstore.Any(), ev); err != nil {
				t.Fatal(err)
			}
		}
		now := clock.Now()
		for i := range 600 { // an hour ago, long dead
			write(fmt.Sprintf("old-%d", i%3), now.Add(-time.Hour))
		}
		write("quiet", now.Add(-9*time.Second)) // live, behind 300 newer records
		for i := range 300 {
			write(fmt.Sprintf("busy-%d", i%2), now.Add(-5*time.Second))
		}
		counting := &failingStore{Store: store}
		a := newReplica(t, counting, clock, "a")
		mustStart(t, a)
		if v := a.View(); !slices.Equal(v.Live, []string{"a", "busy-0", "busy-1", "quiet"}) {
			t.Fatalf("a sees %v", v.Live)
		}
		if counting.reads > 6 {
			t.Fatalf("Start made %d reads: it read history no heartbeat of which could be live", counting.reads)
		}
	})
}

func TestNewRefusesABadConfig(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	codec := streams.NewCodec(rand.Reader)
	for name, cfg := range map[string]Config{
		"bad name":              {Name: "a b", ServerID: testServerID, PublicKey: testKey},
		"no key":                {Name: "a", ServerID: testServerID},
		"interval of the lease": {Name: "a", ServerID: testServerID, PublicKey: testKey, Lease: time.Second, Interval: time.Second},
	} {
		if _, err := New(cfg, nil, codec, clock, rand.Reader, nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	r, err := New(Config{Name: "a", ServerID: testServerID, PublicKey: testKey}, nil, codec, clock, rand.Reader, nil)
	if err != nil || r.Lease() != DefaultLease || r.cfg.Interval != DefaultLease/4 {
		t.Fatalf("defaults: %v, lease %s, interval %s", err, r.Lease(), r.cfg.Interval)
	}
}

// Heartbeats go to one stream per hour: replicas see each other across
// the hour's turn, even with clocks a little apart, and the streams of
// hours past are deleted.
func TestHeartbeatStreamsTurnEachHourAndOldOnesAreDeleted(t *testing.T) {
	t.Parallel()
	eachStore(t, func(t *testing.T, store eventstore.Store) {
		clock := newFakeClock()
		clock.Advance(-30 * time.Minute)
		long := func(c *Config) { c.Lease, c.Interval = 10*time.Minute, 5*time.Minute }
		a, b := newReplica(t, store, clock, "a", long), newReplica(t, store, clock, "b", long)
		mustStart(t, a, b)
		firstHour := streams.ReplicasPeriodOf(clock.Now())
		for range 36 { // three hours, a beat each five minutes
			clock.Advance(5 * time.Minute)
			for _, r := range []*Replicas{a, b} {
				if err := r.Beat(t.Context()); err != nil {
					t.Fatal(err)
				}
				if v := r.View(); !slices.Equal(v.Live, []string{"a", "b"}) {
					t.Fatalf("at %s %s sees %v", clock.Now().Format(time.TimeOnly), r.Name(), v.Live)
				}
			}
		}
		now := streams.ReplicasPeriodOf(clock.Now())
		if now != firstHour+3 {
			t.Fatalf("ran from hour %d to %d", firstHour, now)
		}
		for p := firstHour; p <= now; p++ {
			_, err := store.ReadStream(t.Context(), streams.Replicas(p), 0, 1)
			gone := errors.Is(err, eventstore.ErrStreamDeleted) || errors.Is(err, eventstore.ErrStreamNotFound)
			if want := p < now-1; gone != want {
				t.Errorf("hour %d of %d..%d: deleted %v (%v), want %v", p, firstHour, now, gone, err, want)
			}
		}
		// A replica starting now reads only the live hours.
		c := newReplica(t, store, clock, "c", long)
		mustStart(t, c)
		if v := c.View(); !slices.Equal(v.Live, []string{"a", "b", "c"}) {
			t.Fatalf("c sees %v", v.Live)
		}
	})
}

// Given replica a, which has not read b's heartbeat since b started, when
// a reads the heartbeats if idle, then it sees b; while another read of
// a's holds its reader, RefreshIfIdle does not wait for it (that read
// updates the view itself).
func TestRefreshIfIdleReadsTheHeartbeatsUnlessAReadIsUnderWay(t *testing.T) {
	t.Parallel()
	eachStore(t, func(t *testing.T, store eventstore.Store) {
		clock := newFakeClock()
		a := newReplica(t, store, clock, "a")
		mustStart(t, a)
		b := newReplica(t, store, clock, "b")
		mustStart(t, b)
		if v := a.View(); slices.Contains(v.Live, "b") {
			t.Fatalf("a saw b before reading its heartbeat: %+v", v)
		}
		if err := a.lockIO(t.Context()); err != nil {
			t.Fatal(err)
		}
		err := a.RefreshIfIdle(t.Context())
		a.unlockIO()
		if v := a.View(); err != nil || slices.Contains(v.Live, "b") {
			t.Fatalf("with a read under way: %+v, %v; want no read", v, err)
		}
		if err := a.RefreshIfIdle(t.Context()); err != nil {
			t.Fatal(err)
		}
		if v := a.View(); !slices.Equal(v.Live, []string{"a", "b"}) {
			t.Fatalf("a sees %+v after reading the heartbeats, want a and b", v)
		}
	})
}

// Given a replica whose heartbeat I/O hangs (a write or read that does not
// return, as under a stalled disk or a paused heartbeat loop), when its own
// lease ends, then its view leaves it out at once, without waiting for the
// I/O: the others take its peers then, and a replica that still believed
// it ran them would claim them back, a new term each time, until the I/O
// returned (the simulation saw such a tug of war for a whole pause).
func TestAReplicaWhoseHeartbeatsHangLeavesItsOwnViewWhenItsLeaseEnds(t *testing.T) {
	t.Parallel()
	eachStore(t, func(t *testing.T, store eventstore.Store) {
		clock := newFakeClock()
		a, b := newReplica(t, store, clock, "a"), newReplica(t, store, clock, "b")
		mustStart(t, a, b)
		refreshAll(t, a, b)
		if err := a.lockIO(t.Context()); err != nil { // a's heartbeat read hangs
			t.Fatal(err)
		}
		defer a.unlockIO()
		clock.Advance(a.Lease() - time.Millisecond)
		if v := a.View(); !slices.Contains(v.Live, "a") {
			t.Fatalf("within its lease a sees %v", v.Live)
		}
		changed := a.Changed()
		clock.Advance(2 * time.Millisecond)
		if v := a.View(); slices.Contains(v.Live, "a") {
			t.Fatalf("a's lease ended, a still sees itself live: %v", v.Live)
		}
		select {
		case <-changed:
		default:
			t.Fatal("the view changed and Changed was not closed")
		}
		for i := range 50 {
			if peer := streams.PeerID(fmt.Sprintf("peer-%d", i)); a.Owns(peer) {
				t.Fatalf("a owns %s after its lease ended", peer)
			}
		}
	})
}

// A Refresh behind a read of the heartbeats that hangs (a stalled store)
// waits only as long as its context: it does not hang with it.
func TestARefreshBehindAHangingReadEndsWithItsContext(t *testing.T) {
	t.Parallel()
	eachStore(t, func(t *testing.T, store eventstore.Store) {
		a := newReplica(t, store, newFakeClock(), "a")
		mustStart(t, a)
		if err := a.lockIO(t.Context()); err != nil { // a read under way hangs
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		if err := a.Refresh(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Refresh behind a hanging read: %v, want the context's deadline", err)
		}
		a.unlockIO()
		if err := a.Refresh(t.Context()); err != nil {
			t.Fatalf("Refresh once the read ended: %v", err)
		}
	})
}
