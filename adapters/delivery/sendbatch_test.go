package delivery

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/adapters/streams"

	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// Given a batch of events for three peers, one of whose events is refused,
// when it is sent, then each other peer's events are stored in one append
// in the batch's order, every send gets its own outcome, and none of the
// refused peer's events is stored.
func TestSendBatchStoresEachPeersEventsInOneAppendWithAnOutcomeEach(t *testing.T) {
	t.Parallel()
	w, spy := newSpiedWorld(t)
	w.send(2) // B's outbox already holds 0 and 1
	spy.setHook(nil)
	peerD := domain.MustParseServerID("d.example:2289")
	batch := []domain.BatchSend[*syncv1.Event]{
		{To: peerB, Event: added(10)},
		{To: peerC, Event: added(20)},
		{To: peerD, Event: added(30)},
		{To: peerB, Event: added(11)},
		{To: peerD, Event: &syncv1.Event{}}, // no kind: refused
		{To: peerC, Event: added(21)},
		{To: peerB, Event: added(12)},
	}
	out := w.engine.SendBatch(t.Context(), batch)
	want := map[int]uint64{0: 2, 3: 3, 6: 4, 1: 0, 5: 1}
	for i, o := range out {
		if seq, ok := want[i]; ok {
			if o.Err != nil || o.Seq != seq {
				t.Errorf("send %d: seq %d, %v; want %d", i, o.Seq, o.Err, seq)
			}
		} else if !errors.Is(o.Err, domain.ErrInvalidArgument) {
			t.Errorf("send %d (for the refused peer): %v, want an invalid argument", i, o.Err)
		}
	}
	if n := len(spy.appends()); n != 2 {
		t.Errorf("%d outbox appends, want 2 (one for B, one for C)", n)
	}
	if users, _ := w.outboxUsers(); len(users) != 5 || users[2] != 10 || users[3] != 11 || users[4] != 12 {
		t.Errorf("B's outbox users %v, want [0 1 10 11 12]", users)
	}
	if _, ok := w.engine.registry.Lookup(peerD); ok {
		t.Errorf("the refused peer was registered")
	}
	eventually(t, "B's five events delivered", func() bool { return w.state().Delivered == 5 })
}

// multiSpy is the embedded store with its AppendStreams counted.
type multiSpy struct {
	*embedded.Store
	mu    sync.Mutex
	calls [][]string // the streams of each AppendStreams
	plain int        // outbox Appends
}

func (s *multiSpy) AppendStreams(ctx context.Context, parts []eventstore.StreamAppend) ([]eventstore.AppendResult, []error) {
	var names []string
	for _, p := range parts {
		names = append(names, p.Stream)
	}
	s.mu.Lock()
	s.calls = append(s.calls, names)
	s.mu.Unlock()
	return s.Store.AppendStreams(ctx, parts)
}

func (s *multiSpy) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	if strings.HasPrefix(stream, streams.OutboxPrefix) {
		s.mu.Lock()
		s.plain++
		s.mu.Unlock()
	}
	return s.Store.Append(ctx, stream, expected, events...)
}

// Given a store that appends to several streams in one commit, when a
// batch for three peers is sent, then their outbox appends are one
// AppendStreams, and nothing is appended alone.
func TestSendBatchForSeveralPeersIsOneAppendStreams(t *testing.T) {
	t.Parallel()
	w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: testConfig()}
	store, err := embedded.Open(t.Context(), w.dir, embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	codec := streams.NewCodec(rand.Reader)
	reg, err := registry.Load(t.Context(), store, codec, rand.Reader, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.store = store
	spy := &multiSpy{Store: store}
	w.engine = New(w.cfg, spy, codec, reg, w.peers, systemClock{}, slog.New(slog.DiscardHandler), rand.Reader)
	w.stop = runEngine(t, w.engine)
	t.Cleanup(w.close)
	w.send(1)
	peerD := domain.MustParseServerID("d.example:2289")
	out := w.engine.SendBatch(t.Context(), []domain.BatchSend[*syncv1.Event]{
		{To: peerC, Event: added(1)}, {To: peerB, Event: added(2)}, {To: peerD, Event: added(3)}, {To: peerB, Event: added(4)},
	})
	for i, want := range []uint64{0, 1, 0, 2} {
		if out[i].Err != nil || out[i].Seq != want {
			t.Errorf("send %d: seq %d, %v; want %d", i, out[i].Seq, out[i].Err, want)
		}
	}
	spy.mu.Lock()
	calls, plain := spy.calls, spy.plain
	spy.mu.Unlock()
	if len(calls) != 1 || len(calls[0]) != 3 || plain != 1 {
		t.Errorf("AppendStreams calls %v and %d outbox Appends; want one call of 3 streams, and the one Send's append", calls, plain)
	}
	if users, _ := w.outboxUsers(); len(users) != 3 || users[1] != 2 || users[2] != 4 {
		t.Errorf("B's outbox users %v, want [0 2 4]", users)
	}
}

// Given batches for several peers sent at once with Sends to the same
// peers, when all are answered, then none waited on another forever, and
// each peer's outbox holds every event once, at the sequence number its
// sender was given.
func TestConcurrentBatchesAndSendsShareTheOutboxes(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	peerD := domain.MustParseServerID("d.example:2289")
	peers := []domain.ServerID{peerB, peerC, peerD}
	const batchers, batches, senders, sendsEach = 6, 10, 4, 20
	type given struct {
		to   domain.ServerID
		user uint64
		seq  uint64
	}
	var mu sync.Mutex
	var all []given
	var wg sync.WaitGroup
	for g := range batchers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range batches {
				var batch []domain.BatchSend[*syncv1.Event]
				for k := range 3 {
					to := peers[(g+b+k)%3] // each batch in its own order of peers
					batch = append(batch, domain.BatchSend[*syncv1.Event]{To: to, Event: added(uint64(1000*g + 10*b + k))})
				}
				for i, o := range w.engine.SendBatch(context.Background(), batch) {
					if o.Err != nil {
						t.Error(o.Err)
						return
					}
					mu.Lock()
					all = append(all, given{batch[i].To, batch[i].Event.GetUserAddedToGuild().GetUserId(), o.Seq})
					mu.Unlock()
				}
			}
		}()
	}
	for g := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range sendsEach {
				to, user := peers[i%3], uint64(100000+1000*g+i)
				seq, err := w.engine.Send(context.Background(), to, added(user))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				all = append(all, given{to, user, seq})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, to := range peers {
		recs, err := w.store.ReadStream(t.Context(), streams.Outbox(mustLookup(t, w, to)), 0, 10000)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, g := range all {
			if g.to != to {
				continue
			}
			n++
			if g.seq >= uint64(len(recs)) {
				t.Fatalf("%s: user %d given seq %d, past the outbox's %d events", to, g.user, g.seq, len(recs))
			}
			ev, err := streams.DecodeEnqueued(recs[g.seq])
			if err != nil || ev.GetUserAddedToGuild().GetUserId() != g.user {
				t.Fatalf("%s: seq %d holds user %d (%v), given for user %d", to, g.seq, ev.GetUserAddedToGuild().GetUserId(), err, g.user)
			}
		}
		if n != len(recs) {
			t.Errorf("%s: %d events given, the outbox holds %d", to, n, len(recs))
		}
	}
}
