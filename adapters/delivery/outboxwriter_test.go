package delivery

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/adapters/streams"
)

// outboxSpy records the appends to outbox streams and lets a test change
// what one of them does.
type outboxSpy struct {
	Store
	mu    sync.Mutex
	calls []outboxCall
	// hook, if set, makes outbox append n (counted from 0) instead of the
	// store.
	hook func(n int, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error)
}

type outboxCall struct {
	expected eventstore.ExpectedRevision
	events   int
}

func (s *outboxSpy) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	if !strings.HasPrefix(stream, streams.OutboxPrefix) {
		return s.Store.Append(ctx, stream, expected, events...)
	}
	s.mu.Lock()
	n := len(s.calls)
	s.calls = append(s.calls, outboxCall{expected, len(events)})
	hook := s.hook
	s.mu.Unlock()
	if hook != nil {
		return hook(n, stream, expected, events)
	}
	return s.Store.Append(ctx, stream, expected, events...)
}

func (s *outboxSpy) appends() []outboxCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

// setHook sets hook and starts counting appends afresh.
func (s *outboxSpy) setHook(hook func(n int, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls, s.hook = nil, hook
}

// newSpiedWorld is newWorld with the engine's store behind an outboxSpy.
func newSpiedWorld(t *testing.T) (*world, *outboxSpy) {
	t.Helper()
	w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: testConfig()}
	ctx := context.Background()
	store, err := embedded.Open(ctx, w.dir, embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	codec := streams.NewCodec(rand.Reader)
	reg, err := registry.Load(ctx, store, codec, rand.Reader, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.store = store
	spy := &outboxSpy{Store: store}
	w.engine = New(w.cfg, spy, codec, reg, w.peers, systemClock{}, slog.New(slog.DiscardHandler), rand.Reader)
	w.stop = runEngine(t, w.engine)
	t.Cleanup(w.close)
	return w, spy
}

// outboxUsers reads the outbox of peerB: the user ID of each event, by
// sequence number, and the event IDs.
func (w *world) outboxUsers() ([]uint64, []eventstore.EventID) {
	w.t.Helper()
	id := mustLookup(w.t, w, peerB)
	recs, err := w.store.ReadStream(context.Background(), streams.Outbox(id), 0, 100000)
	if err != nil {
		w.t.Fatal(err)
	}
	var users []uint64
	var ids []eventstore.EventID
	for _, r := range recs {
		ev, err := streams.DecodeEnqueued(r)
		if err != nil {
			w.t.Fatal(err)
		}
		users = append(users, ev.GetUserAddedToGuild().GetUserId())
		ids = append(ids, r.ID)
	}
	return users, ids
}

// hold waits for release, or the test's end.
func hold(t *testing.T, release chan struct{}) {
	select {
	case <-release:
	case <-t.Context().Done():
	}
}

func (w *world) queuedSends() int {
	p := w.engine.peer(mustLookup(w.t, w, peerB))
	p.sends.mu.Lock()
	defer p.sends.mu.Unlock()
	return len(p.sends.queue)
}

// Sends to one peer from many goroutines go in shared appends while one is
// in flight, each at the exact revision, and every Send gets the sequence
// number its event has in the outbox.
func TestConcurrentSendsShareAppendsAtExactRevisions(t *testing.T) {
	t.Parallel()
	w, spy := newSpiedWorld(t)
	if _, err := w.engine.Send(t.Context(), peerB, added(999999)); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	spy.setHook(func(n int, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
		if n == 0 {
			hold(t, release)
		}
		return w.store.Append(context.Background(), stream, expected, events...)
	})
	const senders, each = 16, 20
	seqs := make([][]uint64, senders)
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for g := range senders {
		if g == 1 {
			eventually(t, "the first append is held", func() bool { return len(spy.appends()) == 1 })
		}
		wg.Go(func() {
			for i := range each {
				seq, err := w.engine.Send(t.Context(), peerB, added(uint64(g*1000+i)))
				if err != nil {
					errs <- err
					return
				}
				seqs[g] = append(seqs[g], seq)
			}
		})
	}
	// One append is held; everyone else queues behind it.
	eventually(t, "the other senders queue", func() bool { return w.queuedSends() == senders-1 })
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	users, ids := w.outboxUsers()
	if len(users) != senders*each+1 {
		t.Fatalf("the outbox holds %d events, want %d", len(users), senders*each+1)
	}
	for g := range senders {
		for i, seq := range seqs[g] {
			if i > 0 && seq <= seqs[g][i-1] {
				t.Fatalf("sender %d got sequence %d after %d", g, seq, seqs[g][i-1])
			}
			if want := uint64(g*1000 + i); users[seq] != want {
				t.Fatalf("Send of user %d returned %d, which holds user %d", want, seq, users[seq])
			}
		}
	}
	distinct := map[eventstore.EventID]bool{}
	for _, id := range ids {
		distinct[id] = true
	}
	if len(distinct) != len(ids) {
		t.Fatalf("%d distinct event IDs among %d events", len(distinct), len(ids))
	}
	calls := spy.appends()
	for _, c := range calls {
		if c.expected.IsAny() {
			t.Fatalf("an outbox append expected any revision: %+v", calls)
		}
	}
	// The second append takes every send that waited (and perhaps the
	// first sender's next one).
	if len(calls) >= senders*each || calls[1].events < senders-1 {
		t.Fatalf("%d appends for %d sends, the second of %d events; want the waiting sends together", len(calls), senders*each, calls[1].events)
	}
	if rev, _ := calls[0].expected.Revision(); rev != 0 {
		t.Fatalf("first append expected %v, want revision 0", calls[0].expected)
	}
}

// Another writer appended to the outbox: the append conflicts, the engine
// rereads the head and appends after it.
func TestASendAfterAnotherWriterAppendsAtTheNewHead(t *testing.T) {
	t.Parallel()
	w, spy := newSpiedWorld(t)
	if seq, err := w.engine.Send(t.Context(), peerB, added(1)); err != nil || seq != 0 {
		t.Fatalf("first Send: %d, %v", seq, err)
	}
	spy.setHook(nil)
	foreign, err := streams.NewCodec(strings.NewReader(strings.Repeat("x", 64))).EncodeEnqueued(added(2))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.store.Append(t.Context(), streams.Outbox(mustLookup(t, w, peerB)), eventstore.Exact(0), foreign); err != nil {
		t.Fatal(err)
	}
	if seq, err := w.engine.Send(t.Context(), peerB, added(3)); err != nil || seq != 2 {
		t.Fatalf("Send after another writer: %d, %v; want 2", seq, err)
	}
	if users, _ := w.outboxUsers(); !slices.Equal(users, []uint64{1, 2, 3}) {
		t.Fatalf("outbox holds users %v, want [1 2 3]", users)
	}
	calls := spy.appends()
	if len(calls) != 2 || calls[0].expected != eventstore.Exact(0) || calls[1].expected != eventstore.Exact(1) {
		t.Fatalf("outbox appends %+v; want at revision 0 (conflict), then 1", calls)
	}
}

// The store wrote an append but the answer was lost: the engine finds the
// event by its ID where it expected it, and Send succeeds once.
func TestAnAppendThatLandedButFailedCountsOnce(t *testing.T) {
	t.Parallel()
	w, spy := newSpiedWorld(t)
	if _, err := w.engine.Send(t.Context(), peerB, added(0)); err != nil {
		t.Fatal(err)
	}
	spy.setHook(func(n int, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
		res, err := w.store.Append(context.Background(), stream, expected, events...)
		if n == 0 && err == nil {
			return eventstore.AppendResult{}, errors.New("connection reset: outcome unknown")
		}
		return res, err
	})
	if seq, err := w.engine.Send(t.Context(), peerB, added(1)); err != nil || seq != 1 {
		t.Fatalf("Send whose append landed: %d, %v; want 1", seq, err)
	}
	if seq, err := w.engine.Send(t.Context(), peerB, added(2)); err != nil || seq != 2 {
		t.Fatalf("next Send: %d, %v; want 2", seq, err)
	}
	if users, _ := w.outboxUsers(); !slices.Equal(users, []uint64{0, 1, 2}) {
		t.Fatalf("outbox holds users %v, want [0 1 2]", users)
	}
}

// A split append stored its first part, and the retry of the whole was
// refused as a conflict (as EventStoreDB refuses a retry that runs past
// the stream's end): the engine counts what landed, by ID at the expected
// place, and appends only the rest.
func TestAConflictAfterAPartlyStoredAppendStoresTheRestOnce(t *testing.T) {
	t.Parallel()
	w, spy := newSpiedWorld(t)
	if _, err := w.engine.Send(t.Context(), peerB, added(100)); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	spy.setHook(func(n int, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
		switch n {
		case 0:
			hold(t, release)
		case 1:
			res, err := w.store.Append(context.Background(), stream, expected, events[:2]...)
			if err != nil {
				return res, err
			}
			return eventstore.AppendResult{}, &eventstore.WrongExpectedRevisionError{Stream: stream, Expected: expected, Actual: res.NextExpectedRevision, StreamExists: true}
		}
		return w.store.Append(context.Background(), stream, expected, events...)
	})
	const senders = 5
	var wg sync.WaitGroup
	seqs := make([]uint64, senders)
	for g := range senders {
		if g == 1 {
			eventually(t, "the first append is held", func() bool { return len(spy.appends()) == 1 })
		}
		wg.Go(func() {
			seq, err := w.engine.Send(t.Context(), peerB, added(uint64(g)))
			if err != nil {
				t.Error(err)
			}
			seqs[g] = seq
		})
	}
	eventually(t, "the other senders queue", func() bool { return w.queuedSends() == senders-1 })
	close(release)
	wg.Wait()
	users, _ := w.outboxUsers()
	if len(users) != senders+1 {
		t.Fatalf("outbox holds users %v, want %d events", users, senders+1)
	}
	for g, seq := range seqs {
		if users[seq] != uint64(g) {
			t.Fatalf("Send of user %d returned %d, which holds %d (outbox %v)", g, seq, users[seq], users)
		}
	}
	calls := spy.appends()
	want := []outboxCall{{eventstore.Exact(0), 1}, {eventstore.Exact(1), 4}, {eventstore.Exact(3), 2}}
	if !slices.Equal(calls, want) {
		t.Fatalf("outbox appends %+v, want %+v", calls, want)
	}
}

// A Send whose context ends while it waits behind another append is
// withdrawn: nothing of it is stored.
func TestASendWithdrawnWhileWaitingStoresNothing(t *testing.T) {
	t.Parallel()
	w, spy := newSpiedWorld(t)
	if _, err := w.engine.Send(t.Context(), peerB, added(0)); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	spy.setHook(func(n int, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
		if n == 0 {
			hold(t, release)
		}
		return w.store.Append(context.Background(), stream, expected, events...)
	})
	first := make(chan error, 1)
	go func() {
		_, err := w.engine.Send(t.Context(), peerB, added(1))
		first <- err
	}()
	eventually(t, "the first append is held", func() bool { return len(spy.appends()) == 1 })
	ctx, cancel := context.WithCancel(t.Context())
	second := make(chan error, 1)
	go func() {
		_, err := w.engine.Send(ctx, peerB, added(2))
		second <- err
	}()
	eventually(t, "the second send queues", func() bool { return w.queuedSends() == 1 })
	cancel()
	if err := <-second; !errors.Is(err, context.Canceled) {
		t.Fatalf("withdrawn Send: %v", err)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	// A later Send is stored after anything still queued: the withdrawn
	// one is not among them.
	if _, err := w.engine.Send(t.Context(), peerB, added(3)); err != nil {
		t.Fatal(err)
	}
	if users, _ := w.outboxUsers(); !slices.Equal(users, []uint64{0, 1, 3}) {
		t.Fatalf("outbox holds users %v, want [0 1 3]", users)
	}
}
