package delivery

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/harmony-postbox/postbox/adapters/hrpc"
	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// pullCounter answers every Pull with fn and counts them.
type pullCounter struct {
	n  atomic.Int64
	fn func(n int64, ack *uint64) (peerclient.PullResult, error)
}

func (c *pullCounter) install(w *world) {
	w.peers.set(func(f *fakePeers) {
		f.pullFn = func(ack *uint64) (peerclient.PullResult, error) {
			n := c.n.Add(1)
			if c.fn == nil {
				return peerclient.PullResult{}, nil
			}
			return c.fn(n, ack)
		}
	})
}

// registerSender makes sender a peer of w's engine.
func registerSender(t *testing.T, w *world) {
	t.Helper()
	if _, err := w.engine.registry.Register(t.Context(), sender); err != nil {
		t.Fatal(err)
	}
}

// Given a stopped engine, PullFrom is refused.
func TestPullFromAfterTheEngineStoppedIsRefused(t *testing.T) {
	t.Parallel()
	w, _ := faultWorld(t, testConfig())
	registerSender(t, w)
	w.stop()
	if err := w.engine.PullFrom(context.Background(), sender); !errors.Is(err, domain.ErrUnavailable) {
		t.Fatalf("PullFrom after the stop: %v", err)
	}
}

// Given a sender whose inbox cannot be read, or whose pulled events cannot
// be stored, PullFrom fails with the store's error, and the observer is
// told the pull failed; a pull that works is observed as such.
func TestAPullFromThatCannotApplyFails(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ name, op string }{{"inbox unreadable", "readBackward"}, {"inbox unwritable", "append"}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			obs := &callObserver{}
			cfg := testConfig()
			cfg.Observer = obs
			w, f := faultWorld(t, cfg)
			registerSender(t, w)
			pulls := &pullCounter{fn: func(n int64, _ *uint64) (peerclient.PullResult, error) {
				if n > 1 {
					return peerclient.PullResult{}, nil
				}
				return peerclient.PullResult{Events: events(0), FirstSeq: 0, HasSeq: true}, nil
			}}
			pulls.install(w)
			f.fail(c.op, streams.InboxPrefix, 1)
			if err := w.engine.PullFrom(t.Context(), sender); !errors.Is(err, errInjected) {
				t.Fatalf("PullFrom: %v", err)
			}
			pulls.n.Store(0)
			if err := w.engine.PullFrom(t.Context(), sender); err != nil {
				t.Fatal(err)
			}
			if got := inboxOf(t, w, sender); !slices.Equal(got, []uint64{0}) {
				t.Fatalf("inbox: %v", got)
			}
			want := []string{"pulled " + sender.String() + " true", "pulled " + sender.String() + " false"}
			if got := obs.seen("pulled"); !slices.Equal(got, want) {
				t.Fatalf("observed %v, want %v", got, want)
			}
		})
	}
}

// Given a pull from a sender under way, a second PullFrom waits for it
// rather than pull too, and both return once it is done.
func TestAPullFromWaitsForTheOneUnderWay(t *testing.T) {
	t.Parallel()
	w, _ := faultWorld(t, testConfig())
	registerSender(t, w)
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	pulls := &pullCounter{fn: func(n int64, _ *uint64) (peerclient.PullResult, error) {
		if n == 1 {
			started <- struct{}{}
			<-release
		}
		return peerclient.PullResult{}, nil
	}}
	pulls.install(w)
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Go(func() { errs <- w.engine.PullFrom(t.Context(), sender) })
	<-started
	wg.Go(func() { errs <- w.engine.PullFrom(t.Context(), sender) })
	time.Sleep(20 * time.Millisecond)
	close(release)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the pulls did not return")
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := pulls.n.Load(); n != 1 {
		t.Fatalf("%d pulls made, want 1", n)
	}
}

// Given a sender whose replies never end (it answers the same event again
// and again), PullFrom stops after a bounded number of rounds.
func TestAPullFromEndsAfterItsRounds(t *testing.T) {
	t.Parallel()
	w, _ := faultWorld(t, testConfig())
	registerSender(t, w)
	pulls := &pullCounter{fn: func(int64, *uint64) (peerclient.PullResult, error) {
		return peerclient.PullResult{Events: events(0), FirstSeq: 0, HasSeq: true}, nil
	}}
	pulls.install(w)
	if err := w.engine.PullFrom(t.Context(), sender); err != nil {
		t.Fatal(err)
	}
	if n := pulls.n.Load(); n != 1000 {
		t.Fatalf("%d pulls made, want 1000", n)
	}
}

// Given a sender that keeps refusing the pull's token as stamped before it
// started, PullFrom tries it three more times, a second apart, and fails.
func TestAPullRefusedAsPredatingThePeersStartIsRetriedThreeTimes(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t, testConfig())
		registerSender(t, w)
		pulls := &pullCounter{fn: func(int64, *uint64) (peerclient.PullResult, error) {
			return peerclient.PullResult{}, fromPeer(&hrpc.RemoteError{HTTPStatus: 400, Identifier: "postbox.token-replayed"})
		}}
		pulls.install(w)
		if err := w.engine.PullFrom(t.Context(), sender); err == nil {
			t.Fatal("PullFrom refused every time succeeded")
		}
		if n := pulls.n.Load(); n != 4 {
			t.Fatalf("%d pulls made, want 4", n)
		}
	})
}

// Periodic pulls: none with a zero interval; after a success the next is
// an interval later; a failure is logged (and one that works is not).
func TestPeriodicPullsFollowTheInterval(t *testing.T) {
	t.Parallel()
	t.Run("zero interval", func(t *testing.T) {
		t.Parallel()
		cfg := testConfig()
		cfg.PullInterval = 0
		w, _ := faultWorld(t, cfg)
		pulls := &pullCounter{}
		pulls.install(w)
		pushSeqs(t, w, seqOf(0))
		time.Sleep(50 * time.Millisecond)
		if n := pulls.n.Load(); n != 0 {
			t.Fatalf("%d periodic pulls with a zero interval", n)
		}
	})
	t.Run("after a success", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			cfg := testConfig()
			cfg.PullInterval = 10 * time.Minute
			w := newWorld(t, cfg)
			registerSender(t, w)
			pulls := &pullCounter{}
			pulls.install(w)
			w.restart() // a startup pull, then one an interval later
			if n := pulls.n.Load(); n != 1 {
				t.Fatalf("%d startup pulls, want 1", n)
			}
			time.Sleep(9 * time.Minute)
			synctest.Wait()
			if n := pulls.n.Load(); n != 1 {
				t.Fatalf("%d pulls within the interval after a success, want 1", n)
			}
			time.Sleep(2 * time.Minute)
			synctest.Wait()
			if n := pulls.n.Load(); n != 2 {
				t.Fatalf("%d pulls after the interval, want 2", n)
			}
		})
	})
	t.Run("failures logged", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			cfg := testConfig()
			cfg.PullInterval = time.Minute
			w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: cfg, logs: &logBuffer{}}
			w.open()
			pulls := &pullCounter{}
			pulls.install(w)
			pushSeqs(t, w, seqOf(0))
			time.Sleep(90 * time.Second)
			synctest.Wait()
			if n := pulls.n.Load(); n != 1 || strings.Contains(w.logs.String(), "periodic pull failed") {
				t.Fatalf("%d pulls; log:\n%s", n, w.logs.String())
			}
			failing := &pullCounter{fn: func(int64, *uint64) (peerclient.PullResult, error) {
				return peerclient.PullResult{}, errors.New("connection refused")
			}}
			failing.install(w)
			time.Sleep(time.Minute)
			synctest.Wait()
			if !strings.Contains(w.logs.String(), "periodic pull failed") {
				t.Fatalf("a failed periodic pull was not logged:\n%s", w.logs.String())
			}
		})
	})
}

// Given renames attached and no notice under way, a pull does not wait
// for one.
func TestAPullFromWaitsForNoNoticeWhenNoneIsUnderWay(t *testing.T) {
	t.Parallel()
	w, _ := faultWorld(t, testConfig())
	registerSender(t, w)
	attachRenames(w, &fakeKeys{}, &fakeNotifier{}, serverA)
	start := time.Now()
	if err := w.engine.PullFrom(t.Context(), sender); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the pull took %s", took)
	}
}

// Given a sender whose pull fails for any other reason, PullFrom fails at
// once: only a token refused as predating the peer's start is retried.
func TestAFailedPullFromIsNotRetriedAtOnce(t *testing.T) {
	t.Parallel()
	w, _ := faultWorld(t, testConfig())
	registerSender(t, w)
	pulls := &pullCounter{fn: func(int64, *uint64) (peerclient.PullResult, error) {
		return peerclient.PullResult{}, errors.New("connection refused")
	}}
	pulls.install(w)
	if err := w.engine.PullFrom(t.Context(), sender); err == nil {
		t.Fatal("a failing pull succeeded")
	}
	if n := pulls.n.Load(); n != 1 {
		t.Fatalf("%d pulls made, want 1", n)
	}
}

// Given this server's rename being told to a peer, a pull from that peer
// waits for the notice to end (the peer would refuse a pull signed with
// the old ID once it accepts the new one).
func TestAPullFromWaitsForARenameNoticeUnderWay(t *testing.T) {
	t.Parallel()
	w, _ := faultWorld(t, testConfig())
	ctx := t.Context()
	if err := w.engine.registry.RecordOwnID(ctx, serverA, time.Now()); err != nil {
		t.Fatal(err)
	}
	registerSender(t, w)
	release := make(chan struct{})
	notifier := &blockingNotifier{release: release}
	pulls := &pullCounter{}
	pulls.install(w)
	r := loggedRenames(w, &fakeKeys{}, notifier, serverA)
	if err := r.Rename(ctx, domain.MustParseServerID("a2.example:2289")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the notice under way", func() bool { return notifier.calls.Load() == 1 })
	done := make(chan error, 1)
	go func() { done <- w.engine.PullFrom(context.Background(), sender) }()
	time.Sleep(50 * time.Millisecond)
	if n := pulls.n.Load(); n != 0 {
		t.Fatalf("%d pulls made while the notice was under way", n)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := pulls.n.Load(); n != 1 {
		t.Fatalf("%d pulls, want 1 after the notice", n)
	}
}

// blockingNotifier holds each notice until release is closed, then
// accepts it.
type blockingNotifier struct {
	release chan struct{}
	calls   atomic.Int64
}

func (n *blockingNotifier) NotifyNewID(ctx context.Context, _, _ domain.ServerID) error {
	n.calls.Add(1)
	select {
	case <-n.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
