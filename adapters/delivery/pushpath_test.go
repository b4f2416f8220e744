package delivery

import (
	"crypto/rand"
	"github.com/harmony-postbox/postbox/adapters/eventstore"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
	"regexp"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/seqext"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// Given a push whose events, or whose claim's last given event, cannot be
// read from the outbox, the failure is logged and the push made later.
func TestAPushWhoseOutboxReadFailsIsLoggedAndMadeLater(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		// elsewhere: the event is appended to the outbox by another
		// writer, so the push reads it from the store (an event this
		// server's writer appended is pushed from memory).
		elsewhere bool
	}{{"events", true}, {"claim", false}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				w, f := faultWorld(t, testConfig())
				w.send(1)
				eventually(t, "the first event delivered", func() bool { return w.state().Delivered == 1 })
				w.restart() // the claim's last given event is read from the outbox again
				// The keys' rebuild reads the outbox too: it is done first.
				if err := w.engine.awaitKeys(t.Context()); err != nil {
					t.Fatal(err)
				}
				f.failAfter("read", streams.OutboxPrefix, 0, 1)
				if c.elsewhere {
					appendElsewhere(t, w, added(7))
				}
				w.send(1)
				time.Sleep(3 * time.Second)
				synctest.Wait()
				want := uint64(2)
				if c.elsewhere {
					want = 3
				}
				if s := w.state(); s.Delivered != want {
					t.Fatalf("after a failed outbox read: %+v", s)
				}
				if !strings.Contains(w.logs.String(), "reading the outbox failed") {
					t.Fatalf("log:\n%s", w.logs.String())
				}
				if c.elsewhere && !regexp.MustCompile(`reading the outbox failed.* seq=1 `).MatchString(w.logs.String()) {
					t.Fatalf("the push of event 1 did not read it from the store; log:\n%s", w.logs.String())
				}
			})
		})
	}
}

// Given a peer that does not answer, each failed push is logged before
// the retry, and queue mode is warned of.
func TestFailedPushesAreLogged(t *testing.T) {
	t.Parallel()
	w, _ := faultWorld(t, testConfig())
	w.peers.setDown(true)
	w.send(1)
	eventually(t, "queue mode", func() bool { return w.state().Mode == domain.ModeQueue })
	log := w.logs.String()
	if strings.Count(log, "push failed; retrying") != 2 || !strings.Contains(log, "peer unreachable: queue mode") {
		t.Fatalf("log:\n%s", log)
	}
}

// Given an event stored before the per-event limit was lowered under its
// size, a push of it reports delivery stuck on it.
func TestAPushOfAnEventOverTheLimitReportsItStuck(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	w.peers.setDown(true)
	w.send(1)
	eventually(t, "queue mode", func() bool { return w.state().Mode == domain.ModeQueue })
	w.cfg.MaxEventBytes = 1
	w.cfg.PushRetries = 1 << 20 // it stays in push mode, pushing
	w.restart()
	if err := w.engine.Resume(t.Context(), peerB); err != nil {
		t.Fatal(err)
	}
	eventually(t, "delivery reported stuck", func() bool {
		s, ok := w.engine.Stuck()[peerB]
		return ok && s.Seq == 0
	})
}

// Given a receiver that announced how many bytes a push may carry, a push
// carries the events that fit exactly, and not one more.
func TestAPushCarriesTheEventsThatFitItsBytesExactly(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	first, second := added(1), added(2)
	budget := uint64(proto.Size(first)) + 64 + uint64(seqext.FollowingSize(second))
	w.peers.set(func(f *fakePeers) { f.batchBytes = budget })
	w.send(1) // learns the budget
	eventually(t, "the first push", func() bool { return w.state().Delivered == 1 })
	// The first of three sends is pushed alone (held), the two after it
	// wait and go together.
	release := w.peers.gate.holdPushes()
	w.send(1)
	eventually(t, "the second push held", func() bool { return w.peers.gate.arrivedIs(2) })
	for u := range uint64(2) {
		if _, err := w.engine.Send(t.Context(), peerB, added(2+u)); err != nil {
			t.Fatal(err)
		}
	}
	release()
	eventually(t, "every event delivered", func() bool { return w.state().Delivered == 4 })
	sizes, _ := w.peers.pushSizes()
	if !slices.Equal(sizes, []int{1, 1, 2}) {
		t.Fatalf("events per push %v, want [1 1 2]: two events fit exactly %d bytes", sizes, budget)
	}
}

// appendElsewhere appends ev to peer B's outbox as another writer would
// (another replica): this engine's writer learns of it at its next append.
func appendElsewhere(t *testing.T, w *world, ev *syncv1.Event) {
	t.Helper()
	data, err := streams.NewCodec(rand.Reader).EncodeEnqueued(ev)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.store.Append(t.Context(), streams.Outbox(mustLookup(t, w, peerB)), eventstore.Any(), data); err != nil {
		t.Fatal(err)
	}
}
