package delivery

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// The README's flags table documents these defaults.
func TestTheDefaultConfiguration(t *testing.T) {
	c := DefaultConfig()
	want := Config{
		PushRetries:         5,
		PushBackoff:         domain.Backoff{First: 100 * time.Millisecond, Max: 2 * time.Second},
		AttemptTimeout:      10 * time.Second,
		ResumeProbe:         true,
		ProbeBackoff:        domain.Backoff{First: 10 * time.Second, Max: 10 * time.Minute},
		MaxConcurrentPushes: 256,
		PushBatchEvents:     256,
		PushBatchBytes:      1 << 20,
		MaxEventBytes:       512 << 10,
		PullReplyMaxBytes:   3 << 20,
		PullReplyMaxEvents:  10000,
		PullInterval:        time.Minute,
		PullTimeout:         30 * time.Second,
		IdempotencyWindow:   24 * time.Hour,
		AuthWindow:          time.Minute,
	}
	if c != want {
		t.Fatalf("DefaultConfig() = %+v\nwant %+v", c, want)
	}
}

var errReadFailed = errors.New("read failed")

// failingReads fails every read of one stream.
type failingReads struct {
	Store
	stream string
}

func (f failingReads) ReadStream(ctx context.Context, stream string, from uint64, limit int) ([]eventstore.RecordedEvent, error) {
	if stream == f.stream {
		return nil, errReadFailed
	}
	return f.Store.ReadStream(ctx, stream, from, limit)
}

func (f failingReads) ReadStreamBackward(ctx context.Context, stream string, limit int) ([]eventstore.RecordedEvent, error) {
	if stream == f.stream {
		return nil, errReadFailed
	}
	return f.Store.ReadStreamBackward(ctx, stream, limit)
}

// Given a server with a peer whose outbox or delivery stream cannot be read,
// when the engine starts,
// then Run fails with the store's error instead of serving that peer from
// an empty state.
func TestRunFailsWhenAPeersStateCannotBeRead(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	w.send(2)
	w.pushedInOrder(2)
	id, _ := w.engine.registry.Lookup(peerB)
	w.close()
	for _, stream := range []string{streams.Outbox(streams.PeerID(id)), streams.Delivery(streams.PeerID(id))} {
		t.Run(strings.SplitN(stream, "-", 2)[0], func(t *testing.T) {
			ctx := context.Background()
			store, err := embedded.Open(ctx, w.dir, embedded.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			codec := streams.NewCodec(rand.Reader)
			reg, err := registry.Load(ctx, store, codec, rand.Reader, nil)
			if err != nil {
				t.Fatal(err)
			}
			e := New(testConfig(), failingReads{store, stream}, codec, reg, w.peers, systemClock{}, slog.New(slog.NewTextHandler(io.Discard, nil)), rand.Reader)
			runCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := e.Run(runCtx); !errors.Is(err, errReadFailed) {
				t.Fatalf("Run = %v, want the read's error", err)
			}
		})
	}
}

// Given a push in flight,
// when the engine is stopped,
// then Run returns only once that push has ended, so nothing it started
// still writes to the store after it.
func TestRunEndsAfterTheWorkItStarted(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	release := w.holdPushes()
	w.send(1)
	eventually(t, "the push at the peer", func() bool { return w.peers.gate.arrivedIs(1) })
	stopped := make(chan struct{})
	go func() {
		w.stop()
		close(stopped)
	}()
	select {
	case <-stopped:
		t.Fatal("Run returned while its push was in flight")
	case <-time.After(200 * time.Millisecond):
	}
	release()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return once the push ended")
	}
}

// An engine runs once: a second Run, while the first runs or after it
// ended, is refused at once.
func TestAnEngineRunsOnce(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.engine.Run(ctx); err == nil || ctx.Err() != nil {
		t.Fatalf("a second Run while the first runs: %v", err)
	}
	w.stop()
	if err := w.engine.Run(ctx); err == nil || ctx.Err() != nil {
		t.Fatalf("Run after the first ended: %v", err)
	}
}
