package esdb_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb/fakestreams"
)

// syncBuffer collects log output from several goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testLogger logs to the test at debug level.
func testLogger(t testing.TB) *slog.Logger {
	return leveledTestLogger(t, slog.LevelDebug)
}

func leveledTestLogger(t testing.TB, level slog.Level) *slog.Logger {
	w := &tWriter{t: t}
	// Registered first, so it runs after the cleanups that close stores:
	// the client may log from its own goroutines until then, and logging to
	// a finished test panics.
	t.Cleanup(w.stop)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// tWriter writes log lines to the test until stopped.
type tWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *tWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// openFake opens the adapter on a fresh test double.
func openFake(t testing.TB, opts fakestreams.Options) (*esdb.Store, *fakestreams.Server) {
	t.Helper()
	srv := fakestreams.StartServer(t, opts)
	store, err := esdb.Open(testContext(t), srv.ConnString(), testLogger(t))
	if err != nil {
		t.Fatalf("open adapter on the test double: %v", err)
	}
	t.Cleanup(func() { _ = store.Close() })
	return store, srv
}

func newID() eventstore.EventID {
	var id eventstore.EventID
	_, _ = rand.Read(id[:])
	id[6] = id[6]&0x0f | 0x40 // a version 4 UUID
	id[8] = id[8]&0x3f | 0x80
	return id
}

func event(typ, body string) eventstore.EventData {
	return eventstore.EventData{ID: newID(), Type: typ, Data: []byte(body)}
}

func mustAppend(t testing.TB, s eventstore.Store, stream string, exp eventstore.ExpectedRevision, evs ...eventstore.EventData) eventstore.AppendResult {
	t.Helper()
	res, err := s.Append(testContext(t), stream, exp, evs...)
	if err != nil {
		t.Fatalf("append to %s: %v", stream, err)
	}
	return res
}

func recv(t testing.TB, sub eventstore.Subscription) eventstore.Item {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	it, err := sub.Recv(ctx)
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	return it
}

func describe(it eventstore.Item) string {
	if it.CaughtUp {
		return "caught-up"
	}
	return fmt.Sprintf("%s@%d:%s", it.Event.Stream, it.Event.Revision, it.Event.Data)
}

func TestAppendReadAgainstTestDouble(t *testing.T) {
	store, _ := openFake(t, fakestreams.Options{})
	ctx := testContext(t)
	res := mustAppend(t, store, "Postbox-a", eventstore.NoStream(), event("T", `{"n":0}`), event("T", `{"n":1}`))
	if res.NextExpectedRevision != 1 {
		t.Fatalf("next expected revision = %d, want 1", res.NextExpectedRevision)
	}
	evs, err := store.ReadStream(ctx, "Postbox-a", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 || string(evs[1].Data) != `{"n":1}` || evs[1].Revision != 1 || evs[1].Position != res.Position {
		t.Fatalf("read %+v, append result %+v", evs, res)
	}
	if evs[0].Created.IsZero() || time.Since(evs[0].Created) > time.Minute {
		t.Fatalf("created = %v", evs[0].Created)
	}
	back, err := store.ReadStreamBackward(ctx, "Postbox-a", 1)
	if err != nil || len(back) != 1 || back[0].Revision != 1 {
		t.Fatalf("backward: %+v, %v", back, err)
	}
}

// collect receives n items and describes them.
func collect(t testing.TB, sub eventstore.Subscription, n int) []string {
	t.Helper()
	out := make([]string, 0, n)
	for range n {
		out = append(out, describe(recv(t, sub)))
	}
	return out
}

func subscribe(t testing.TB, s eventstore.Store, f eventstore.Filter, from eventstore.SubscribeFrom) eventstore.Subscription {
	t.Helper()
	sub, err := s.Subscribe(testContext(t), f, from)
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	return sub
}

// TestSubscribeCaughtUp checks history, one caught-up item, then live
// events, on a server that sends caught-up itself and on one that does not,
// with events the filter skips at the head of $all.
func TestSubscribeCaughtUp(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts fakestreams.Options
	}{
		{"server sends caught-up", fakestreams.Options{}},
		{"server before 23.10 sends none", fakestreams.Options{Profile: "22.10"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store, _ := openFake(t, tc.opts)
			mustAppend(t, store, "Postbox-a", eventstore.Any(), event("T", "a0"), event("T", "a1"))
			mustAppend(t, store, "Other-x", eventstore.Any(), event("T", "x0"))
			mustAppend(t, store, "Postbox-b", eventstore.Any(), event("T", "b0"))
			// System and foreign events at the head of $all: the
			// subscription never sees them, so they cannot mark its end.
			mustAppend(t, store, "$stats-127.0.0.1", eventstore.Any(), event("$statsCollected", "{}"))
			mustAppend(t, store, "Other-y", eventstore.Any(), event("T", "y0"))

			prefixed := subscribe(t, store, eventstore.Filter{StreamPrefix: "Postbox-"}, eventstore.FromStart())
			got := strings.Join(collect(t, prefixed, 4), " ")
			if want := "Postbox-a@0:a0 Postbox-a@1:a1 Postbox-b@0:b0 caught-up"; got != want {
				t.Fatalf("prefix subscription: got %q, want %q", got, want)
			}
			all := subscribe(t, store, eventstore.Filter{}, eventstore.FromStart())
			got = strings.Join(collect(t, all, 6), " ")
			if want := "Postbox-a@0:a0 Postbox-a@1:a1 Other-x@0:x0 Postbox-b@0:b0 Other-y@0:y0 caught-up"; got != want {
				t.Fatalf("all-streams subscription: got %q, want %q", got, want)
			}
			mustAppend(t, store, "Postbox-a", eventstore.Exact(1), event("T", "a2"))
			if got := describe(recv(t, prefixed)); got != "Postbox-a@2:a2" {
				t.Fatalf("live: got %q", got)
			}
			if got := describe(recv(t, all)); got != "Postbox-a@2:a2" {
				t.Fatalf("live: got %q", got)
			}
		})
	}
}

func TestSubscribeEmptyAndAfter(t *testing.T) {
	store, _ := openFake(t, fakestreams.Options{Profile: "22.10"})
	empty := subscribe(t, store, eventstore.Filter{StreamPrefix: "Postbox-"}, eventstore.FromStart())
	if got := describe(recv(t, empty)); got != "caught-up" {
		t.Fatalf("empty store: first item %q", got)
	}
	r1 := mustAppend(t, store, "Postbox-a", eventstore.NoStream(), event("T", "a0"), event("T", "a1"))
	if got := describe(recv(t, empty)); got != "Postbox-a@0:a0" {
		t.Fatalf("live: %q", got)
	}
	mustAppend(t, store, "Postbox-a", eventstore.Exact(1), event("T", "a2"))

	// After the first append's last event: only a2 is history.
	after := subscribe(t, store, eventstore.Filter{StreamPrefix: "Postbox-"}, eventstore.After(r1.Position))
	if got := strings.Join(collect(t, after, 2), " "); got != "Postbox-a@2:a2 caught-up" {
		t.Fatalf("after %v: got %q", r1.Position, got)
	}
	// After the head: caught up at once.
	evs, err := store.ReadStreamBackward(testContext(t), "Postbox-a", 1)
	if err != nil {
		t.Fatal(err)
	}
	atHead := subscribe(t, store, eventstore.Filter{StreamPrefix: "Postbox-"}, eventstore.After(evs[0].Position))
	if got := describe(recv(t, atHead)); got != "caught-up" {
		t.Fatalf("after head: %q", got)
	}
}

func TestSubscribeSkipsTombstones(t *testing.T) {
	store, _ := openFake(t, fakestreams.Options{})
	ctx := testContext(t)
	mustAppend(t, store, "Postbox-a", eventstore.NoStream(), event("T", "a0"))
	if err := store.Delete(ctx, "Postbox-a", eventstore.Exact(0)); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, store, "Postbox-b", eventstore.NoStream(), event("T", "b0"))
	sub := subscribe(t, store, eventstore.Filter{StreamPrefix: "Postbox-"}, eventstore.FromStart())
	if got := strings.Join(collect(t, sub, 3), " "); got != "Postbox-a@0:a0 Postbox-b@0:b0 caught-up" {
		t.Fatalf("got %q", got)
	}
}

// checkSequence receives n events of stream "Postbox-seq" and fails on any
// gap, duplicate or reordering.
func checkSequence(t *testing.T, sub eventstore.Subscription, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		it := recv(t, sub)
		if it.CaughtUp {
			t.Fatalf("caught-up again before event %d", i)
		}
		if it.Event.Revision != uint64(i) || string(it.Event.Data) != fmt.Sprint(i) {
			t.Fatalf("want event %d, got %s", i, describe(it))
		}
	}
}

// TestSubscriptionResumesAfterDrop cuts the subscription while it reads
// the history and again while it is live; it must resubscribe and go on
// without gaps or duplicates, and say caught-up once.
func TestSubscriptionResumesAfterDrop(t *testing.T) {
	store, srv := openFake(t, fakestreams.Options{})
	const history, live = 300, 300
	for i := range history {
		mustAppend(t, store, "Postbox-seq", eventstore.Any(), event("T", fmt.Sprint(i)))
	}
	sub := subscribe(t, store, eventstore.Filter{StreamPrefix: "Postbox-"}, eventstore.FromStart())

	checkSequence(t, sub, 0, 10)
	if n := srv.DropSubscriptions(); n != 1 {
		t.Fatalf("cut %d subscriptions, want 1", n)
	}
	checkSequence(t, sub, 10, history-10)
	if got := describe(recv(t, sub)); got != "caught-up" {
		t.Fatalf("after history: %q", got)
	}

	// Live: append while cutting the subscription every few events.
	appended := make(chan error, 1)
	go func() {
		ctx := testContext(t)
		for i := history; i < history+live; i++ {
			if _, err := store.Append(ctx, "Postbox-seq", eventstore.Any(), event("T", fmt.Sprint(i))); err != nil {
				appended <- err
				return
			}
			if i%50 == 0 {
				srv.DropSubscriptions()
			}
		}
		appended <- nil
	}()
	checkSequence(t, sub, history, live)
	if err := <-appended; err != nil {
		t.Fatal(err)
	}
	// Nothing more: no duplicate trails behind.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if it, err := sub.Recv(ctx); err == nil {
		t.Fatalf("unexpected item after the last event: %s", describe(it))
	}
}

// openQuickDiscovery opens the adapter with fewer, faster discovery
// attempts, so that the client gives up on a stopped server quickly.
func openQuickDiscovery(t *testing.T, srv *fakestreams.Server) *esdb.Store {
	t.Helper()
	conn := srv.ConnString() + "&maxDiscoverAttempts=2&discoveryInterval=20"
	store, err := esdb.Open(testContext(t), conn, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	return store
}

// TestCallsRecoverAfterOutage stops the server for longer than the client's
// rediscovery lasts, which leaves the client closed for good; the adapter
// must replace it. (Calls here run one at a time: a call running inside the
// client while it gives up can stay stuck there until the adapter closes
// the client under it, which the race detector reports as a race inside
// the client.)
func TestCallsRecoverAfterOutage(t *testing.T) {
	srv := fakestreams.StartServer(t, fakestreams.Options{})
	store := openQuickDiscovery(t, srv)
	ctx := testContext(t)
	mustAppend(t, store, "Postbox-a", eventstore.NoStream(), event("T", "0"))
	srv.Stop()
	for range 3 {
		if _, err := store.ReadStream(ctx, "Postbox-a", 0, 1); err == nil {
			t.Fatal("read succeeded with the server stopped")
		}
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := store.Append(ctx, "Postbox-a", eventstore.Exact(0), event("T", "1"))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("append after restart: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	evs, err := store.ReadStream(ctx, "Postbox-a", 0, 10)
	if err != nil || len(evs) != 2 {
		t.Fatalf("read after restart: %d events, %v", len(evs), err)
	}
}

// TestSubscriptionSurvivesServerRestart takes the server away while a
// subscription is live; it must keep resubscribing, through replaced
// clients, and resume once the server is back.
func TestSubscriptionSurvivesServerRestart(t *testing.T) {
	srv := fakestreams.StartServer(t, fakestreams.Options{})
	store := openQuickDiscovery(t, srv)
	mustAppend(t, store, "Postbox-seq", eventstore.NoStream(), event("T", "0"))
	sub := subscribe(t, store, eventstore.Filter{StreamPrefix: "Postbox-"}, eventstore.FromStart())
	checkSequence(t, sub, 0, 1)
	if got := describe(recv(t, sub)); got != "caught-up" {
		t.Fatalf("got %q", got)
	}

	srv.Stop()
	// Long enough for several failed rediscoveries.
	time.Sleep(time.Second)
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	// Only the subscription uses the client until it is back.
	deadline := time.Now().Add(10 * time.Second)
	for srv.Subscriptions() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the subscription did not come back")
		}
		time.Sleep(10 * time.Millisecond)
	}
	mustAppend(t, store, "Postbox-seq", eventstore.Exact(0), event("T", "1"))
	checkSequence(t, sub, 1, 1)
}

func wantWrong(t *testing.T, err error, exists bool, actual uint64) {
	t.Helper()
	var wrong *eventstore.WrongExpectedRevisionError
	if !errors.As(err, &wrong) || !errors.Is(err, eventstore.ErrWrongExpectedRevision) {
		t.Fatalf("want a wrong expected revision error, got %v", err)
	}
	if wrong.StreamExists != exists || (exists && wrong.Actual != actual) {
		t.Fatalf("got exists=%v actual=%d, want exists=%v actual=%d (%v)", wrong.StreamExists, wrong.Actual, exists, actual, err)
	}
}

func TestErrorMapping(t *testing.T) {
	store, _ := openFake(t, fakestreams.Options{})
	ctx := testContext(t)
	first := mustAppend(t, store, "Postbox-a", eventstore.NoStream(), event("T", "0"), event("T", "1"))

	_, err := store.Append(ctx, "Postbox-a", eventstore.Exact(0), event("T", "x"))
	wantWrong(t, err, true, 1)
	_, err = store.Append(ctx, "Postbox-a", eventstore.NoStream(), event("T", "x"))
	wantWrong(t, err, true, 1)
	_, err = store.Append(ctx, "Postbox-missing", eventstore.Exact(3), event("T", "x"))
	wantWrong(t, err, false, 0)
	err = store.Delete(ctx, "Postbox-a", eventstore.Exact(7))
	wantWrong(t, err, true, 1)
	err = store.Delete(ctx, "Postbox-missing", eventstore.Exact(7))
	wantWrong(t, err, false, 0)
	// Empty appends only check the expectation.
	_, err = store.Append(ctx, "Postbox-a", eventstore.Exact(5))
	wantWrong(t, err, true, 1)
	if res, err := store.Append(ctx, "Postbox-a", eventstore.Exact(1)); err != nil || res != first {
		t.Fatalf("empty append: %+v, %v; want %+v", res, err, first)
	}

	if _, err := store.ReadStream(ctx, "Postbox-missing", 0, 10); !errors.Is(err, eventstore.ErrStreamNotFound) {
		t.Fatalf("read missing stream: %v", err)
	}
	if evs, err := store.ReadStream(ctx, "Postbox-a", 5, 10); err != nil || len(evs) != 0 {
		t.Fatalf("read past the end: %v, %v", evs, err)
	}

	// A retry of the same events at the same place succeeds, unwritten.
	e1, e2 := event("T", "r0"), event("T", "r1")
	r1 := mustAppend(t, store, "Postbox-r", eventstore.NoStream(), e1, e2)
	r2 := mustAppend(t, store, "Postbox-r", eventstore.NoStream(), e1, e2)
	if r1 != r2 {
		t.Fatalf("retry result %+v, first %+v", r2, r1)
	}
	if evs, err := store.ReadStream(ctx, "Postbox-r", 0, 10); err != nil || len(evs) != 2 {
		t.Fatalf("after retry: %d events, %v", len(evs), err)
	}

	if err := store.Delete(ctx, "Postbox-a", eventstore.Exact(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := store.ReadStream(ctx, "Postbox-a", 0, 10); !errors.Is(err, eventstore.ErrStreamDeleted) {
		t.Fatalf("read deleted stream: %v", err)
	}
	if _, err := store.ReadStreamBackward(ctx, "Postbox-a", 10); !errors.Is(err, eventstore.ErrStreamDeleted) {
		t.Fatalf("read deleted stream backward: %v", err)
	}
	if _, err := store.Append(ctx, "Postbox-a", eventstore.Any(), event("T", "x")); !errors.Is(err, eventstore.ErrStreamDeleted) {
		t.Fatalf("append to deleted stream: %v", err)
	}
	if err := store.Delete(ctx, "Postbox-a", eventstore.Any()); !errors.Is(err, eventstore.ErrStreamDeleted) {
		t.Fatalf("delete deleted stream: %v", err)
	}
}

func TestClosed(t *testing.T) {
	store, _ := openFake(t, fakestreams.Options{})
	ctx := testContext(t)
	mustAppend(t, store, "Postbox-a", eventstore.NoStream(), event("T", "0"))
	sub := subscribe(t, store, eventstore.Filter{}, eventstore.FromStart())
	recv(t, sub)
	idle := subscribe(t, store, eventstore.Filter{}, eventstore.FromStart())
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	if err := store.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	// The subscription's pending items may still be handed over; then it
	// ends with ErrClosed.
	for {
		_, err := sub.Recv(ctx)
		if err == nil {
			continue
		}
		if !errors.Is(err, eventstore.ErrClosed) {
			t.Fatalf("subscription after close: %v", err)
		}
		break
	}
	_ = idle.Close()
	if _, err := idle.Recv(ctx); !errors.Is(err, eventstore.ErrClosed) {
		t.Fatalf("closed subscription: %v", err)
	}
	if _, err := store.Append(ctx, "Postbox-a", eventstore.Any(), event("T", "x")); !errors.Is(err, eventstore.ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}
	if _, err := store.ReadStream(ctx, "Postbox-a", 0, 1); !errors.Is(err, eventstore.ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
	if err := store.Delete(ctx, "Postbox-a", eventstore.Any()); !errors.Is(err, eventstore.ErrClosed) {
		t.Fatalf("delete after close: %v", err)
	}
	if _, err := store.Subscribe(ctx, eventstore.Filter{}, eventstore.FromStart()); !errors.Is(err, eventstore.ErrClosed) {
		t.Fatalf("subscribe after close: %v", err)
	}
}

func TestSubscriptionContextEnds(t *testing.T) {
	store, _ := openFake(t, fakestreams.Options{})
	ctx, cancel := context.WithCancel(testContext(t))
	sub, err := store.Subscribe(ctx, eventstore.Filter{}, eventstore.FromStart())
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if got := describe(recv(t, sub)); got != "caught-up" {
		t.Fatalf("got %q", got)
	}
	cancel()
	if _, err := sub.Recv(testContext(t)); !errors.Is(err, context.Canceled) {
		t.Fatalf("after the subscribe context ended: %v", err)
	}
}

// TestCredentialsWithoutTLSWarns checks the warning for credentials the
// client would silently drop, and that the password stays out of the log.
func TestCredentialsWithoutTLSWarns(t *testing.T) {
	srv := fakestreams.StartServer(t, fakestreams.Options{})
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	conn := strings.Replace(srv.ConnString(), "esdb://", "esdb://admin:s3cret-pw@", 1)
	store, err := esdb.Open(testContext(t), conn, logger)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	out := logs.String()
	if !strings.Contains(out, "level=WARN") || !strings.Contains(out, "tls=false") || !strings.Contains(out, "user=admin") {
		t.Fatalf("no warning about credentials without TLS in:\n%s", out)
	}
	if strings.Contains(out, "s3cret-pw") {
		t.Fatalf("the password leaked into the log:\n%s", out)
	}

	logs = syncBuffer{}
	plain, err := esdb.Open(testContext(t), srv.ConnString(), logger)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if strings.Contains(logs.String(), "tls=false") {
		t.Fatalf("warning without credentials:\n%s", logs.String())
	}
}

func TestOpenFails(t *testing.T) {
	if _, err := esdb.Open(testContext(t), "http://admin:s3cret-pw@localhost:2113", nil); err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("bad scheme: %v", err)
	}
	if _, err := esdb.Open(testContext(t), "esdb://admin:s3cret-pw@local host:2113", nil); err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("bad URL: %v", err)
	}
	// Nothing listens there any more.
	srv := fakestreams.StartServer(t, fakestreams.Options{})
	srv.Stop()
	start := time.Now()
	if _, err := esdb.Open(testContext(t), srv.ConnString()+"&maxDiscoverAttempts=2&discoveryInterval=20", nil); err == nil {
		t.Fatal("opened with nothing listening")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("open took %v to fail", d)
	}
}

// TestClientPanicBecomesError has the test double end reads with a reply
// the client does not expect, on which it panics; the adapter must return
// an error and go on serving.
func TestClientPanicBecomesError(t *testing.T) {
	store, _ := openFake(t, fakestreams.Options{UnexpectedReadReplies: true})
	ctx := testContext(t)
	mustAppend(t, store, "Postbox-a", eventstore.NoStream(), event("T", "0"))
	_, err := store.ReadStream(ctx, "Postbox-a", 0, 10)
	if err == nil || !strings.Contains(err.Error(), "panicked") {
		t.Fatalf("read with an unexpected reply: %v", err)
	}
	mustAppend(t, store, "Postbox-a", eventstore.Exact(0), event("T", "1"))
}
