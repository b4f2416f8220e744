package projector

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/domain"
	"github.com/harmony-postbox/postbox/projections"
)

// startLive runs l until the test ends; stop ends it early and returns
// Run's error.
func startLive(t *testing.T, l *Live) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	stopped := false
	var err error
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			err = <-done
		}
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func TestProjectionLiveCurrent(t *testing.T) {
	t.Parallel()
	h := newHistory(t).seen("p1", "a.example:2289").enqueueN("p1", 2)
	store := h.store()
	l := NewLive(store, "", testLogger(t))
	startLive(t, l)

	for i := range 20 {
		// Given a running projection, when an event is appended just
		// before Current, then Current includes it.
		h.enqueueN("p1", 1).delivery("p1", domain.EventPushed{Seq: uint64(i), Attempts: 1}).appendTo(store)
		s, err := l.Current(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		v, ok := s.Peer("a.example:2289")
		if !ok || v.Head != uint64(3+i) || v.Delivered != uint64(i+1) {
			t.Fatalf("round %d: Current = %+v, want head %d, delivered %d", i, v, 3+i, i+1)
		}
		if l.Applied().Less(pos(s)) {
			t.Fatalf("Applied %v is behind the state handed out at %v", l.Applied(), pos(s))
		}
	}
}

func TestProjectionLiveCurrentWaitsForRun(t *testing.T) {
	t.Parallel()
	store := newHistory(t).seen("p1", "a.example:2289").store()
	l := NewLive(store, "", testLogger(t))
	// Without Run, nothing is applied: Current waits, bounded by ctx.
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := l.Current(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Current without Run: %v, want a deadline error", err)
	}
	startLive(t, l)
	s, err := l.Current(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Peers()) != 1 {
		t.Fatalf("peers %+v", s.Peers())
	}
}

func TestProjectionLiveCheckpoint(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "projections.checkpoint")
	h := mixedHistory(t)
	store := h.store()

	// Given a projection that ran over the first events and stopped,
	l := NewLive(store, path, testLogger(t))
	l.checkpointEvery = 10 * time.Millisecond
	stop := startLive(t, l)
	first, err := l.Current(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// Current covers the store's end when it was called; Run may apply the
	// database identity it writes after that, so the checkpoint may be later.
	eventually(t, "a periodic checkpoint", func() bool {
		s, err := ReadCheckpoint(path)
		return err == nil && !pos(s).Less(pos(first))
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	written, err := ReadCheckpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	// Stopped, with nothing stored after its state, Current answers at once.
	last, err := l.Current(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if same, diff := projections.Equal(last, written); !same {
		t.Fatalf("the checkpoint on exit differs from the state: %s", diff)
	}

	// when more events are appended and a new projection resumes from the
	// checkpoint,
	mixedHistory(t).appendTo(store)
	resumed := NewLive(store, path, testLogger(t))
	stop = startLive(t, resumed)
	got, err := resumed.Current(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// then it equals a replay of everything.
	replay := given(t, readAll(t, store)...)
	if same, diff := projections.Equal(replay, got); !same {
		t.Fatalf("resumed projection differs from a replay: %s", diff)
	}
	if !reflect.DeepEqual(replay.Peers(), got.Peers()) {
		t.Fatal("the peer views differ")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	final, err := ReadCheckpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	if pos(final) != pos(replay) {
		t.Fatalf("final checkpoint at %v, want %v", pos(final), pos(replay))
	}
	// No temporary file is left behind.
	left, _ := filepath.Glob(path + ".tmp-*")
	if len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
}

func TestProjectionLiveIgnoresABadCheckpoint(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "projections.checkpoint")
	if err := writeFileAtomic(path, []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	store := mixedHistory(t).store()
	l := NewLive(store, path, testLogger(t))
	startLive(t, l)
	got, err := l.Current(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if same, diff := projections.Equal(given(t, readAll(t, store)...), got); !same {
		t.Fatalf("rebuilt state differs from a replay: %s", diff)
	}
}

// failingStore fails its first subscriptions, to exercise the retry.
type failingStore struct {
	LiveStore
	failures chan struct{}
}

func (f *failingStore) Subscribe(ctx context.Context, filter eventstore.Filter, from eventstore.SubscribeFrom) (eventstore.Subscription, error) {
	select {
	case <-f.failures:
		return nil, errors.New("store unavailable")
	default:
		return f.LiveStore.Subscribe(ctx, filter, from)
	}
}

func TestProjectionLiveRetries(t *testing.T) {
	t.Parallel()
	store := mixedHistory(t).store()
	flaky := &failingStore{LiveStore: store, failures: make(chan struct{}, 3)}
	for range 3 {
		flaky.failures <- struct{}{}
	}
	l := NewLive(flaky, "", testLogger(t))
	l.backoffFirst = time.Millisecond
	startLive(t, l)
	eventually(t, "the projection to catch up after failures", func() bool {
		return l.Applied() == pos(given(t, readAll(t, store)...))
	})
}

func TestProjectionLiveWithoutCheckpointWritesNone(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "projections.checkpoint")
	store := newHistory(t).store() // empty
	l := NewLive(store, path, testLogger(t))
	stop := startLive(t, l)
	if _, err := l.Current(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// Nothing applied: nothing worth a checkpoint.
	if _, err := ReadCheckpoint(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("checkpoint of an empty store: %v", err)
	}
}
