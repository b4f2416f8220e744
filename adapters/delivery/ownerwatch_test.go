package delivery

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// watchedStore is the embedded store counting the engines' reads of the
// ends of outbox and delivery streams, and the registries' reads of the
// peers stream; deaf, its subscriptions never deliver an event
// (notifications lost).
type watchedStore struct {
	*embedded.Store
	tailReads  atomic.Int64
	peersReads atomic.Int64
	deaf       bool
}

func (s *watchedStore) ReadStream(ctx context.Context, stream string, from uint64, limit int) ([]eventstore.RecordedEvent, error) {
	if stream == streams.Peers {
		s.peersReads.Add(1)
	}
	return s.Store.ReadStream(ctx, stream, from, limit)
}

func (s *watchedStore) ReadStreamBackward(ctx context.Context, stream string, limit int) ([]eventstore.RecordedEvent, error) {
	if strings.HasPrefix(stream, streams.OutboxPrefix) || strings.HasPrefix(stream, streams.DeliveryPrefix) {
		s.tailReads.Add(1)
	}
	return s.Store.ReadStreamBackward(ctx, stream, limit)
}

func (s *watchedStore) Subscribe(ctx context.Context, filter eventstore.Filter, from eventstore.SubscribeFrom) (eventstore.Subscription, error) {
	if s.deaf {
		return deafSubscription{}, nil
	}
	return s.Store.Subscribe(ctx, filter, from)
}

type deafSubscription struct{}

func (deafSubscription) Recv(ctx context.Context) (eventstore.Item, error) {
	<-ctx.Done()
	return eventstore.Item{}, ctx.Err()
}

func (deafSubscription) Close() error { return nil }

// newWatchedPair is a replicaPair on a watchedStore (r1 owns every peer),
// each engine's watch tuned by tune before it runs.
func newWatchedPair(t *testing.T, deaf bool, tune watchTuning) (*replicaPair, *watchedStore) {
	t.Helper()
	ctx := context.Background()
	raw, err := embedded.Open(ctx, t.TempDir(), embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	store := &watchedStore{Store: raw, deaf: deaf}
	rp := &replicaPair{store: raw, peers: &fakePeers{}}
	codec := streams.NewCodec(rand.Reader)
	for i, name := range []string{"r1", "r2"} {
		reg, err := registry.Load(ctx, store, codec, rand.Reader, nil)
		if err != nil {
			t.Fatal(err)
		}
		rp.owners[i] = newFakeOwners(name, i == 0)
		rp.engine[i] = New(testConfig(), store, codec, reg, rp.peers, systemClock{}, slog.New(slog.NewTextHandler(io.Discard, nil)), rand.Reader)
		rp.engine[i].UseOwners(rp.owners[i])
		rp.engine[i].watch = tune
		t.Cleanup(runEngine(t, rp.engine[i]))
	}
	return rp, store
}

// Given two replicas, r1 owning twenty peers whose events are all
// delivered, and no sweep due,
// when nothing is sent for a second,
// then neither reads the end of any outbox or delivery stream, nor the
// peers stream; an event then sent at r2 is pushed by r1 at once, learnt
// from its subscription, and a peer r2 then registers is known at r1.
func TestIdleReplicasReadNoStreamEndsAndLearnOfAppendsAtOnce(t *testing.T) {
	t.Parallel()
	rp, store := newWatchedPair(t, false, watchTuning{sweepEvery: time.Hour})
	const peers = 20
	server := func(i int) domain.ServerID { return domain.MustParseServerID(fmt.Sprintf("p%d.example:2289", i)) }
	for i := range peers {
		if _, err := rp.engine[0].Send(context.Background(), server(i), added(1)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "one push to each peer", func() bool { return len(rp.peers.pushes()) == peers })
	eventually(t, "r1 to run every peer", func() bool { return len(rp.engine[0].ownedPeers()) == peers })
	time.Sleep(200 * time.Millisecond) // the records of the pushes land
	before, peersBefore := store.tailReads.Load(), store.peersReads.Load()
	time.Sleep(time.Second)
	if n := store.tailReads.Load() - before; n != 0 {
		t.Fatalf("idle replicas read the ends of outbox and delivery streams %d times in a second, want none", n)
	}
	if n := store.peersReads.Load() - peersBefore; n != 0 {
		t.Fatalf("idle replicas read the peers stream %d times in a second, want none", n)
	}

	start := time.Now()
	if _, err := rp.engine[1].Send(context.Background(), server(7), added(2)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "r1 to push the event r2 stored", func() bool { return len(rp.peers.pushes()) == peers+1 })
	t.Logf("pushed %v after the send at the other replica", time.Since(start).Round(time.Millisecond))

	if _, err := rp.engine[1].registry.Register(context.Background(), server(peers)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "r1 to know the peer r2 registered", func() bool { return rp.engine[0].registry.Knows(server(peers)) })
}

// Given two replicas whose subscriptions deliver nothing (every
// notification lost),
// when r2 stores events for a peer r1 runs,
// then r1's sweep finds them and pushes them.
func TestASweepFindsWhatANotificationMissed(t *testing.T) {
	t.Parallel()
	rp, _ := newWatchedPair(t, true, watchTuning{sweepEvery: 100 * time.Millisecond})
	rp.send(t, 0, 0, 1)
	eventually(t, "the owner's own event pushed", func() bool { return slices.Equal(rp.peers.pushes(), []uint64{0}) })
	rp.send(t, 1, 1, 2)
	eventually(t, "the events r2 stored pushed by r1", func() bool { return slices.Equal(rp.peers.pushes(), []uint64{0, 1, 2}) })
}

// Given two replicas with no sweep due, r1 owning B in queue mode with a
// long probe backoff,
// when B pulls everything at r2 and an event is then sent at r2,
// then r1 learns of the Pull from its delivery stream's news and pushes
// the event at once.
func TestTheOwnerLearnsOfAPullElsewhereFromItsSubscription(t *testing.T) {
	t.Parallel()
	rp, _ := newWatchedPair(t, false, watchTuning{sweepEvery: time.Hour})
	rp.peers.setDown(true)
	rp.send(t, 0, 0, 3)
	eventually(t, "queue mode at the owner", func() bool {
		return slices.ContainsFunc(rp.records(t), func(e domain.DeliveryEvent) bool { _, ok := e.(domain.QueueModeEntered); return ok })
	})
	rp.peers.setDown(false)
	eventually(t, "r2 to know B", func() bool { _, ok := rp.engine[1].registry.Lookup(peerB); return ok })
	caller := domain.Caller{ServerID: peerB}
	for range 2 {
		if _, err := rp.engine[1].ServePull(context.Background(), caller, nil); err != nil {
			t.Fatal(err)
		}
	}
	rp.send(t, 1, 3, 1)
	eventually(t, "r1 to push the event sent after the Pull", func() bool { return slices.Equal(rp.peers.pushes(), []uint64{3}) })
}

// Given two replicas, r1 owning upstream-style sender B and pulling it
// every 300 ms,
// when B pushes at r2 while one of r1's periodic pulls of B is under way,
// then the push waits for that pull, as in a single process: the pulled
// events, older, come first in the inbox; and B's pull announcements keep
// only the last one readable.
func TestAPushAtAnotherReplicaWaitsForTheOwnersPeriodicPull(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.PullInterval = 300 * time.Millisecond
	rp := newReplicaPairWith(t, cfg)
	ctx := context.Background()
	arrived, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	letGo := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(letGo) // before the engines stop, even if the test fails
	var pulls atomic.Int32
	rp.peers.set(func(f *fakePeers) {
		f.pullFn = func(*uint64) (peerclient.PullResult, error) {
			// The first pull is r1's on taking B over; the second, a
			// periodic one, is held.
			if pulls.Add(1) != 2 {
				return peerclient.PullResult{}, nil
			}
			close(arrived)
			<-release
			return peerclient.PullResult{Events: []*syncv1.Event{added(100), added(101)}}, nil
		}
	})
	rp.send(t, 0, 0, 1)
	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("r1 never pulled B periodically")
	}
	rp.pushAtR2WaitsFor(t, ctx, "r1's periodic pull of B", letGo)
	id := mustLookupIn(t, rp.engine[0], peerB)
	eventually(t, "more periodic pulls", func() bool { return pulls.Load() >= 6 })
	eventually(t, "one pull announcement readable", func() bool {
		recs, err := rp.store.ReadStream(ctx, streams.Pulling(id), 0, 100)
		return err == nil && len(recs) >= 1 && len(recs) <= 2 && recs[len(recs)-1].Revision >= 6
	})
}

// Given a replica's registry that has not read another replica's latest
// write to the peers stream,
// when a peer accepts this server's new ID there,
// then the acceptance is recorded (the registry rereads and tries again),
// rather than failing, which would tell the peer again.
func TestAnAcceptanceIsRecordedAfterAnotherReplicasWrite(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, codec, mine := registryOnAStore(t)
	newID := domain.MustParseServerID("renamed.example:2289")
	if err := mine.RecordOwnID(ctx, newID, time.Now()); err != nil {
		t.Fatal(err)
	}
	id, err := mine.Register(ctx, peerB)
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := registry.Load(ctx, store, codec, rand.Reader, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := theirs.Register(ctx, domain.MustParseServerID("c.example:2289")); err != nil {
		t.Fatal(err)
	}
	e := New(testConfig(), store, codec, mine, &fakePeers{}, systemClock{}, slog.New(slog.NewTextHandler(io.Discard, nil)), rand.Reader)
	r := NewRenames(e, mine, nil, nil, domain.NewIdentity(newID, time.Hour), systemClock{}, slog.New(slog.DiscardHandler))
	if err := r.recordNotified(ctx, id, newID); err != nil {
		t.Fatalf("recording the acceptance: %v", err)
	}
	if !mine.KnowsOurID(id) {
		t.Fatal("the registry does not show the peer knows our ID")
	}
}

// Given a replica's registry that has not read another replica's latest
// write to the peers stream,
// when the operator renames the server there (postbox rename),
// then the rename is recorded (the registry rereads and tries again).
func TestARenameIsRecordedAfterAnotherReplicasWrite(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, codec, mine := registryOnAStore(t)
	oldID, newID := domain.MustParseServerID("a.example:2289"), domain.MustParseServerID("renamed.example:2289")
	if err := mine.RecordOwnID(ctx, oldID, time.Now()); err != nil {
		t.Fatal(err)
	}
	theirs, err := registry.Load(ctx, store, codec, rand.Reader, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := theirs.Register(ctx, peerB); err != nil {
		t.Fatal(err)
	}
	e := New(testConfig(), store, codec, mine, &fakePeers{}, systemClock{}, slog.New(slog.NewTextHandler(io.Discard, nil)), rand.Reader)
	identity := domain.NewIdentity(oldID, time.Hour)
	r := NewRenames(e, mine, nil, nil, identity, systemClock{}, slog.New(slog.DiscardHandler))
	if err := r.Rename(ctx, newID); err != nil {
		t.Fatalf("postbox rename: %v", err)
	}
	if own, _ := mine.OwnID(); own != newID || identity.Current() != newID {
		t.Fatalf("recorded ID %s, identity %s; want %s", own, identity.Current(), newID)
	}
}

// registryOnAStore opens an embedded store and loads a registry on it, as
// a replica does; another registry loaded on the store is another
// replica's.
func registryOnAStore(t *testing.T) (*embedded.Store, *streams.Codec, *registry.Registry) {
	t.Helper()
	store, err := embedded.Open(context.Background(), t.TempDir(), embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	codec := streams.NewCodec(rand.Reader)
	reg, err := registry.Load(context.Background(), store, codec, rand.Reader, nil)
	if err != nil {
		t.Fatal(err)
	}
	return store, codec, reg
}
