package delivery

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// batchOf is a SendBatch of n events to peerB, users from first on.
func batchOf(first, n int) []domain.BatchSend[*syncv1.Event] {
	out := make([]domain.BatchSend[*syncv1.Event], n)
	for i := range out {
		out[i] = domain.BatchSend[*syncv1.Event]{To: peerB, Event: added(uint64(first + i))}
	}
	return out
}

// Given two batches for one peer waiting behind an append, together over
// the events one append takes, when the append is done, then the first
// goes in the next append and the second in the one after, and both are
// answered.
func TestSendsWaitingOverOneAppendsBoundGoInTheNext(t *testing.T) {
	t.Parallel()
	const big, small = maxSendBatch - 24, 100
	w, sizes := sendTwoBatchesBehindAnAppend(t, big, small)
	if !slices.Equal(sizes, []int{1, big, small}) {
		t.Fatalf("events per append: %v, want [1 %d %d]", sizes, big, small)
	}
	if users, _ := w.outboxUsers(); len(users) != 2+big+small || users[2+big] != 2+big {
		t.Fatalf("the outbox holds %d events, want %d in order", len(users), 2+big+small)
	}
}

// Given sends waiting whose events make exactly one append's bound, they
// go in one append.
func TestSendsWaitingUpToExactlyOneAppendsBoundGoTogether(t *testing.T) {
	t.Parallel()
	_, sizes := sendTwoBatchesBehindAnAppend(t, maxSendBatch-100, 100)
	if !slices.Equal(sizes, []int{1, maxSendBatch}) {
		t.Fatalf("events per append: %v, want [1 %d]", sizes, maxSendBatch)
	}
}

// sendTwoBatchesBehindAnAppend holds the first append to peer B's outbox,
// queues a batch of big events and then one of small behind it, lets the
// append go, and returns the events of each append once both batches are
// answered, each with consecutive sequence numbers.
func sendTwoBatchesBehindAnAppend(t *testing.T, big, small int) (*world, []int) {
	t.Helper()
	w, spy := newSpiedWorld(t)
	w.peers.setDown(true) // the pushes do not matter here
	w.send(1)
	release := make(chan struct{})
	spy.setHook(func(n int, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
		if n == 0 {
			hold(t, release)
		}
		return spy.Store.Append(context.Background(), stream, expected, events...)
	})
	go func() {
		if _, err := w.engine.Send(t.Context(), peerB, added(1)); err != nil {
			t.Error(err)
		}
	}()
	eventually(t, "the first append", func() bool { return len(spy.appends()) == 1 })
	outcomes := make(chan []domain.SendOutcome, 2)
	go func() { outcomes <- w.engine.SendBatch(t.Context(), batchOf(2, big)) }()
	eventually(t, "the big batch waiting", func() bool { return w.queuedSends() == 1 })
	go func() { outcomes <- w.engine.SendBatch(t.Context(), batchOf(2+big, small)) }()
	eventually(t, "the small batch waiting", func() bool { return w.queuedSends() == 2 })
	close(release)
	for range 2 {
		select {
		case out := <-outcomes:
			for i, o := range out {
				if o.Err != nil || o.Seq != out[0].Seq+uint64(i) {
					t.Fatalf("batch of %d, send %d: seq %d, %v", len(out), i, o.Seq, o.Err)
				}
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a batch was not answered")
		}
	}
	var sizes []int
	for _, c := range spy.appends() {
		sizes = append(sizes, c.events)
	}
	return w, sizes
}

// Given a Send making the append for its peer and another Send waiting
// behind it, when its own append is done and the next one is slow, then
// the first Send is answered without waiting for the next append.
func TestASendIsAnsweredOnceItsOwnAppendIsDone(t *testing.T) {
	t.Parallel()
	w, spy := newSpiedWorld(t)
	w.send(1)
	first, second := make(chan struct{}), make(chan struct{})
	spy.setHook(func(n int, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
		switch n {
		case 0:
			hold(t, first)
		case 1:
			hold(t, second)
		}
		return spy.Store.Append(context.Background(), stream, expected, events...)
	})
	answered := make(chan error, 2)
	go func() {
		_, err := w.engine.Send(t.Context(), peerB, added(1))
		answered <- err
	}()
	eventually(t, "the first append", func() bool { return len(spy.appends()) == 1 })
	go func() {
		_, err := w.engine.Send(t.Context(), peerB, added(2))
		answered <- err
	}()
	eventually(t, "the second Send waiting", func() bool { return w.queuedSends() == 1 })
	close(first)
	select {
	case err := <-answered:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the first Send waited for the append after its own")
	}
	eventually(t, "the second append", func() bool { return len(spy.appends()) == 2 })
	close(second)
	if err := <-answered; err != nil {
		t.Fatal(err)
	}
	if users, _ := w.outboxUsers(); !slices.Equal(users, []uint64{0, 1, 2}) {
		t.Fatalf("outbox users %v, want [0 1 2]", users)
	}
}

// Given an outbox append that fails, then the Send is refused (not
// answered as stored), an operator is told, and the next Send is stored
// at the outbox's head.
func TestASendWhoseAppendFailsIsRefusedAndLogged(t *testing.T) {
	t.Parallel()
	appends := &failingAppends{prefix: streams.OutboxPrefix}
	w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: testConfig(), logs: &logBuffer{},
		wrap: func(s Store) Store { appends.Store = s; return appends }}
	w.open()
	w.send(1)
	if strings.Contains(w.logs.String(), "appending to an outbox failed") {
		t.Fatalf("a stored Send logged as failed:\n%s", w.logs.String())
	}
	appends.fail.Store(1)
	if seq, err := w.engine.Send(t.Context(), peerB, added(1)); !errors.Is(err, errAppendFailed) {
		t.Fatalf("a Send whose append failed: seq %d, %v", seq, err)
	}
	if !strings.Contains(w.logs.String(), "appending to an outbox failed") {
		t.Fatalf("log:\n%s", w.logs.String())
	}
	if seq, err := w.engine.Send(t.Context(), peerB, added(2)); err != nil || seq != 1 {
		t.Fatalf("the next Send: seq %d, %v; want 1", seq, err)
	}
	if users, _ := w.outboxUsers(); !slices.Equal(users, []uint64{0, 2}) {
		t.Fatalf("outbox users %v, want [0 2]", users)
	}
}

// Given a SendBatch for two peers whose append to one outbox fails, then
// that peer's sends fail with the store's failure and the other's are
// stored.
func TestABatchWhoseAppendFailsForOnePeerTellsWhy(t *testing.T) {
	t.Parallel()
	appends := &failingAppends{prefix: streams.OutboxPrefix}
	w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: testConfig(),
		wrap: func(s Store) Store { appends.Store = s; return appends }}
	w.open()
	appends.fail.Store(1)
	out := w.engine.SendBatch(t.Context(), []domain.BatchSend[*syncv1.Event]{{To: peerB, Event: added(1)}, {To: peerC, Event: added(2)}})
	failed := 0
	for i, o := range out {
		switch {
		case o.Err == nil && o.Seq == 0:
		case errors.Is(o.Err, errAppendFailed):
			failed++
		default:
			t.Fatalf("send %d: seq %d, %v; want stored at 0 or the store's failure", i, o.Seq, o.Err)
		}
	}
	if failed != 1 {
		t.Fatalf("%d sends failed, want 1: %+v", failed, out)
	}
}

// Given retention asked of a store that cannot truncate streams, then an
// operator is told that delivered events are kept.
func TestRetentionOnAStoreThatCannotTruncateIsLogged(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.RetainDelivered = time.Hour
	appends := &failingAppends{} // a Store and nothing more: no Truncate
	w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: cfg, logs: &logBuffer{},
		wrap: func(s Store) Store { appends.Store = s; return appends }}
	w.open()
	eventually(t, "the warning", func() bool {
		return strings.Contains(w.logs.String(), "this store cannot truncate streams: delivered events are kept")
	})
}

// failingTruncates fails every Truncate while fail is set.
type failingTruncates struct {
	Store
	fail atomic.Bool
}

func (f *failingTruncates) Truncate(ctx context.Context, stream string, before uint64) error {
	if f.fail.Load() {
		return errors.New("truncate failed")
	}
	return f.Store.(truncater).Truncate(ctx, stream, before)
}

// Given delivered events retained long enough and fewer delivery records
// than a snapshot takes, when truncating fails, then an operator is told
// and the events stay; once it works, the outbox is cut (all but the last
// event) and no delivery record goes, since no snapshot covers them.
func TestRetentionTellsOfAFailedCutAndKeepsUnsnapshottedRecords(t *testing.T) {
	t.Parallel()
	tr := &failingTruncates{}
	tr.fail.Store(true)
	w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: retainConfig(20 * time.Millisecond), logs: &logBuffer{},
		wrap: func(s Store) Store { tr.Store = s; return tr }}
	w.open()
	w.send(3)
	eventually(t, "the events delivered", func() bool { return w.state().Delivered == 3 })
	eventually(t, "the failed cut logged", func() bool {
		return strings.Contains(w.logs.String(), "removing delivered events failed")
	})
	if got := w.truncatedBefore(w.outboxStream()); got != 0 {
		t.Fatalf("the outbox is cut before %d although truncating failed", got)
	}
	tr.fail.Store(false)
	eventually(t, "the outbox cut", func() bool { return w.truncatedBefore(w.outboxStream()) == 2 })
	time.Sleep(50 * time.Millisecond) // a few more passes
	if got := w.truncatedBefore(w.deliveryStream()); got != 0 {
		t.Fatalf("delivery records cut before %d with no snapshot", got)
	}
	if strings.Contains(w.logs.String(), "compacting delivery records failed") {
		t.Fatalf("a cut of delivery records was tried with no snapshot:\n%s", w.logs.String())
	}
	if records := w.deliveryRecords(); len(records) != 3 {
		t.Fatalf("%d delivery records, want 3", len(records))
	}
}
