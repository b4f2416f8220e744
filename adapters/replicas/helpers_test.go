package replicas

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb/fakestreams"
	"github.com/harmony-postbox/postbox/adapters/streams"
)

// eachStore runs f on the embedded store and on the EventStoreDB adapter
// talking to the stand-in (24.10 profile).
func eachStore(t *testing.T, f func(t *testing.T, store eventstore.Store)) {
	t.Run("embedded", func(t *testing.T) {
		t.Parallel()
		s, err := embedded.Open(t.Context(), t.TempDir(), embedded.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		f(t, s)
	})
	t.Run("esdb-standin", func(t *testing.T) {
		t.Parallel()
		srv := fakestreams.StartServer(t, fakestreams.Options{Profile: "24.10"})
		s, err := esdb.Open(t.Context(), srv.ConnString()+"&maxDiscoverAttempts=2&discoveryInterval=20", slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		f(t, s)
	})
}

// fakeClock is virtual time: Now moves only with Advance, and After's
// channels fire when Advance passes their time.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []waiter
	cond    *sync.Cond
}

type waiter struct {
	at  time.Time
	ch  chan time.Time
	tag string // who waits, for forget
}

func newFakeClock() *fakeClock {
	c := &fakeClock{now: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)}
	c.cond = sync.NewCond(&c.mu)
	return c
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time { return c.after(d, "") }

// afterAs is After for a loop named tag, whose waits forget can drop.
func (c *fakeClock) afterAs(tag string) func(time.Duration) <-chan time.Time {
	return func(d time.Duration) <-chan time.Time { return c.after(d, tag) }
}

// forget drops the waits of a loop that has stopped, so waitForWaiters
// counts only the loops still running.
func (c *fakeClock) forget(tag string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.waiters = slices.DeleteFunc(c.waiters, func(w waiter) bool { return w.tag == tag })
}

func (c *fakeClock) after(d time.Duration, tag string) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, waiter{at: c.now.Add(d), ch: ch, tag: tag})
	c.cond.Broadcast()
	return ch
}

// Advance moves time on by d and fires the waits it passes.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if w.at.After(c.now) {
			kept = append(kept, w)
			continue
		}
		w.ch <- c.now
	}
	c.waiters = kept
}

// waitForWaiters blocks until n waits are pending: the loops have done
// their work and sleep again.
func (c *fakeClock) waitForWaiters(t *testing.T, n int) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		for len(c.waiters) < n {
			c.cond.Wait()
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("the loops did not come back to wait (want %d waiting)", n)
	}
}

var (
	testServerID = "chat.example.org:2289"
	testKey      = ed25519.NewKeyFromSeed(make([]byte, 32)).Public().(ed25519.PublicKey)
)

func newReplica(t *testing.T, store Store, clock *fakeClock, name string, edit ...func(*Config)) *Replicas {
	t.Helper()
	cfg := Config{Name: name, ServerID: testServerID, PublicKey: testKey, Lease: 10 * time.Second}
	for _, e := range edit {
		e(&cfg)
	}
	r, err := New(cfg, store, streams.NewCodec(rand.Reader), clock, rand.Reader, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func mustStart(t *testing.T, rs ...*Replicas) {
	t.Helper()
	for _, r := range rs {
		if err := r.Start(t.Context(), noWait(t)); err != nil {
			t.Fatal(err)
		}
	}
}

func refreshAll(t *testing.T, rs ...*Replicas) {
	t.Helper()
	for _, r := range rs {
		if err := r.Refresh(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
}

// failingStore fails every call while fail is set.
type failingStore struct {
	Store
	mu   sync.Mutex
	fail bool
	// reads counts ReadStream and ReadStreamBackward calls.
	reads int
}

func (s *failingStore) set(fail bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = fail
}

func (s *failingStore) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail {
		return eventstore.ErrClosed
	}
	return nil
}

func (s *failingStore) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	if err := s.err(); err != nil {
		return eventstore.AppendResult{}, err
	}
	return s.Store.Append(ctx, stream, expected, events...)
}

func (s *failingStore) ReadStream(ctx context.Context, stream string, from uint64, limit int) ([]eventstore.RecordedEvent, error) {
	s.mu.Lock()
	s.reads++
	s.mu.Unlock()
	if err := s.err(); err != nil {
		return nil, err
	}
	return s.Store.ReadStream(ctx, stream, from, limit)
}

func (s *failingStore) ReadStreamBackward(ctx context.Context, stream string, limit int) ([]eventstore.RecordedEvent, error) {
	s.mu.Lock()
	s.reads++
	s.mu.Unlock()
	if err := s.err(); err != nil {
		return nil, err
	}
	return s.Store.ReadStreamBackward(ctx, stream, limit)
}

// noWait is an after for a Start that must not wait.
func noWait(t *testing.T) func(time.Duration) <-chan time.Time {
	return func(d time.Duration) <-chan time.Time {
		t.Errorf("Start waited %s", d)
		ch := make(chan time.Time, 1)
		ch <- time.Time{}
		return ch
	}
}
