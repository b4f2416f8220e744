package delivery

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/eventstore"

	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// callObserver writes down the Observer calls it gets, as strings.
type callObserver struct {
	mu    sync.Mutex
	calls []string
}

func (o *callObserver) add(s string) { o.mu.Lock(); o.calls = append(o.calls, s); o.mu.Unlock() }

func (o *callObserver) PushAttempted(peer domain.ServerID, _ time.Duration, events int, err error) {
	o.add(fmt.Sprintf("push %s %d %v", peer, events, err != nil))
}
func (o *callObserver) PullServed(peer domain.ServerID, events int) {
	o.add(fmt.Sprintf("served %s %d", peer, events))
}
func (o *callObserver) PullMade(peer domain.ServerID, err error) {
	o.add(fmt.Sprintf("pulled %s %v", peer, err != nil))
}
func (o *callObserver) Received(peer domain.ServerID, via string, n int) {
	o.add(fmt.Sprintf("received %s %s %d", peer, via, n))
}
func (o *callObserver) Continuity(peer domain.ServerID, kind string) {
	o.add(fmt.Sprintf("continuity %s %s", peer, kind))
}

// seen returns the calls whose text starts with prefix.
func (o *callObserver) seen(prefix string) []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []string
	for _, c := range o.calls {
		if len(c) >= len(prefix) && c[:len(prefix)] == prefix {
			out = append(out, c)
		}
	}
	return out
}

// queuedFaultWorld is a fault world whose Postbox peer is down with n
// events queued, reporting to the returned observer.
func queuedFaultWorld(t *testing.T, n int) (*world, *faults, *callObserver) {
	t.Helper()
	obs := &callObserver{}
	cfg := testConfig()
	cfg.Observer = obs
	w, f := faultWorld(t, cfg)
	w.peers.setDown(true)
	w.send(n)
	eventually(t, "queue mode", func() bool { return w.state().Mode == domain.ModeQueue })
	return w, f, obs
}

var callerB = domain.Caller{ServerID: peerB, Extended: true}

// Given a peer in queue mode whose outbox cannot be read,
// when it pulls,
// then the Pull fails with the store's error (not an empty reply, which
// would tell the peer nothing waits), and the next Pull gets the events.
func TestAPullWhoseOutboxCannotBeReadFails(t *testing.T) {
	t.Parallel()
	w, f, obs := queuedFaultWorld(t, 3)
	f.fail("read", streams.OutboxPrefix, 1)
	if batch, err := w.engine.ServePull(t.Context(), callerB, nil); !errors.Is(err, errInjected) {
		t.Fatalf("pull while the outbox cannot be read: %d events, %v", len(batch.Events), err)
	}
	if got := obs.seen("served"); len(got) != 0 {
		t.Fatalf("a failed pull reported served: %v", got)
	}
	batch, err := w.engine.ServePull(t.Context(), callerB, nil)
	if err != nil || len(batch.Events) != 3 || batch.FirstSeq != 0 || !batch.HasSeq {
		t.Fatalf("pull after: %d events from %d, %v", len(batch.Events), batch.FirstSeq, err)
	}
	if got := obs.seen("served"); !slices.Equal(got, []string{"served " + peerB.String() + " 3"}) {
		t.Fatalf("served reported: %v", got)
	}
}

// Given a Postbox peer that acknowledges part of its queue with the ID of
// the event, and whose outbox cannot be read to compare that ID,
// when it pulls,
// then the Pull fails with the store's error and nothing is decided: the
// epoch stays, and the same Pull after is answered from the event after
// the acknowledged one.
func TestAnAccountedPullWhoseAckCannotBeCheckedFails(t *testing.T) {
	t.Parallel()
	w, f, _ := queuedFaultWorld(t, 4)
	first, err := w.engine.ServePull(t.Context(), callerB, nil)
	if err != nil || len(first.Events) != 4 {
		t.Fatalf("first pull: %d events, %v", len(first.Events), err)
	}
	ids, err := w.outboxIDs()
	if err != nil {
		t.Fatal(err)
	}
	epoch := w.state().Epoch
	ack := uint64(1)
	account := domain.PullAccount{Epoch: epoch, AckID: ids[1]}
	f.fail("read", streams.OutboxPrefix, 1)
	if _, err := w.engine.ServeAccountedPull(t.Context(), callerB, &ack, &account); !errors.Is(err, errInjected) {
		t.Fatalf("accounted pull whose ack cannot be checked: %v", err)
	}
	if s := w.state(); s.Epoch != epoch {
		t.Fatalf("epoch %d after a failed check, was %d", s.Epoch, epoch)
	}
	batch := w.accountedPull(&ack, account)
	if batch.Epoch != epoch || batch.FirstSeq != 2 || len(batch.Events) != 2 {
		t.Fatalf("pull after: epoch %d (was %d), %d events from %d", batch.Epoch, epoch, len(batch.Events), batch.FirstSeq)
	}
}

// Given a Postbox peer whose account names no event ID (it holds nothing
// that says which event it applied last),
// when it acknowledges part of its queue,
// then the acknowledgement is taken as it is: no new epoch.
func TestAnAccountWithoutAnEventIDIsNotADivergence(t *testing.T) {
	t.Parallel()
	w, _, obs := queuedFaultWorld(t, 4)
	if _, err := w.engine.ServePull(t.Context(), callerB, nil); err != nil {
		t.Fatal(err)
	}
	epoch := w.state().Epoch
	ack := uint64(1)
	batch := w.accountedPull(&ack, domain.PullAccount{Epoch: epoch})
	if batch.Epoch != epoch || batch.FirstSeq != 2 || len(batch.Events) != 2 {
		t.Fatalf("pull: epoch %d (was %d), %d events from %d", batch.Epoch, epoch, len(batch.Events), batch.FirstSeq)
	}
	if got := obs.seen("continuity"); len(got) != 0 {
		t.Fatalf("continuity reported: %v", got)
	}
}

// outboxIDs returns the event IDs of peerB's outbox, by sequence number.
func (w *world) outboxIDs() ([][]byte, error) {
	recs, err := w.store.ReadStream(context.Background(), streams.Outbox(mustLookup(w.t, w, peerB)), 0, 1000)
	if err != nil {
		return nil, err
	}
	out := make([][]byte, len(recs))
	for i, r := range recs {
		out[i] = slices.Clone(r.ID[:])
	}
	return out, nil
}

// Given a stopped engine, a Pull is refused as unavailable.
func TestAPullAfterTheEngineStoppedIsRefused(t *testing.T) {
	t.Parallel()
	w, _, _ := queuedFaultWorld(t, 1)
	w.stop()
	if batch, err := w.engine.ServePull(context.Background(), callerB, nil); !errors.Is(err, domain.ErrUnavailable) {
		t.Fatalf("pull after the stop: %d events, %v", len(batch.Events), err)
	}
}

// Given a peer known only as a sender (its delivery state not read yet),
// whose outbox cannot be read,
// when it pulls,
// then the Pull fails with the store's error rather than answer from a
// state never read.
func TestAPullWhoseStateCannotBeReadFails(t *testing.T) {
	t.Parallel()
	w, f := faultWorld(t, testConfig())
	caller := domain.Caller{ServerID: sender, Extended: true}
	if err := w.engine.AcceptPush(t.Context(), caller, events(0), seqOf(0)); err != nil {
		t.Fatal(err)
	}
	f.fail("readBackward", streams.OutboxPrefix, 1)
	if _, err := w.engine.ServePull(t.Context(), caller, nil); !errors.Is(err, errInjected) {
		t.Fatalf("pull whose state cannot be read: %v", err)
	}
}

// Given a peer in queue mode with 4 events, a Pull acknowledging past the
// outbox is refused as an invalid argument (with no account to say the
// history diverged).
func TestAnAcknowledgementPastTheOutboxIsRefused(t *testing.T) {
	t.Parallel()
	w, _, _ := queuedFaultWorld(t, 4)
	ack := uint64(4)
	if _, err := w.engine.ServePull(t.Context(), callerB, &ack); !errors.Is(err, domain.ErrInvalidArgument) {
		t.Fatalf("pull acknowledging event 4 of 4: %v", err)
	}
}

// Given records that cannot be written, a Pull whose records are needed
// before the reply fails: an accounted Pull that starts a new epoch, and a
// Pull acknowledging part of the queue.
func TestAPullWhoseRecordsFailFails(t *testing.T) {
	t.Parallel()
	t.Run("new epoch", func(t *testing.T) {
		t.Parallel()
		w, f, _ := queuedFaultWorld(t, 4)
		epoch := w.state().Epoch
		f.fail("append", streams.DeliveryPrefix, 1)
		ack := uint64(1)
		if _, err := w.engine.ServeAccountedPull(t.Context(), callerB, &ack, &domain.PullAccount{Epoch: epoch + 99}); !errors.Is(err, errInjected) {
			t.Fatalf("accounted pull whose records fail: %v", err)
		}
	})
	t.Run("acknowledgement", func(t *testing.T) {
		t.Parallel()
		w, f, _ := queuedFaultWorld(t, 4)
		if _, err := w.engine.ServePull(t.Context(), callerB, nil); err != nil {
			t.Fatal(err)
		}
		f.fail("append", streams.DeliveryPrefix, 1)
		ack := uint64(1)
		if _, err := w.engine.ServePull(t.Context(), callerB, &ack); !errors.Is(err, errInjected) {
			t.Fatalf("acknowledging pull whose records fail: %v", err)
		}
	})
}

// Given delivery records that are written only after a delay, a Pull
// whose account starts a new epoch returns once that record is durable:
// the reply is in the new epoch, which a restart must know.
func TestANewEpochIsDurableBeforeThePullReplies(t *testing.T) {
	t.Parallel()
	w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: testConfig(), clock: heldBatchClock{}}
	w.open()
	w.peers.setDown(true)
	w.send(2)
	eventually(t, "queue mode", func() bool { return w.state().Mode == domain.ModeQueue })
	epoch := w.state().Epoch
	ack := uint64(1)
	batch := w.accountedPull(&ack, domain.PullAccount{Epoch: epoch + 99})
	if batch.Epoch == epoch {
		t.Fatalf("no new epoch: %+v", batch)
	}
	found := false
	for _, r := range w.deliveryRecords() {
		if e, ok := r.(domain.EpochStarted); ok && e.Epoch == batch.Epoch {
			found = true
		}
	}
	if !found {
		t.Fatalf("the reply's epoch %d is not recorded: %v", batch.Epoch, w.deliveryRecords())
	}
}

// A Pull reply holds as many events as fit its byte cap, counting each
// event's bytes and 6 more, and at least one however large.
func TestAPullReplyFillsItsByteCapAndHoldsAtLeastOne(t *testing.T) {
	t.Parallel()
	cost := proto.Size(added(1)) + 6
	for _, c := range []struct {
		maxBytes int
		want     int
	}{{2 * cost, 2}, {2*cost - 1, 1}, {1, 1}} {
		t.Run(fmt.Sprint(c.maxBytes), func(t *testing.T) {
			t.Parallel()
			cfg := testConfig()
			cfg.PullReplyMaxBytes = c.maxBytes
			w := newWorld(t, cfg)
			w.peers.setDown(true)
			for u := range uint64(4) {
				if _, err := w.engine.Send(t.Context(), peerB, added(1+u)); err != nil {
					t.Fatal(err)
				}
			}
			eventually(t, "queue mode", func() bool { return w.state().Mode == domain.ModeQueue })
			batch, err := w.engine.ServePull(t.Context(), callerB, nil)
			if err != nil || len(batch.Events) != c.want || !batch.HasSeq {
				t.Fatalf("reply within %d bytes: %d events (has seq %v), %v; want %d", c.maxBytes, len(batch.Events), batch.HasSeq, err, c.want)
			}
		})
	}
}

// Given a peer draining its queue two events a reply, the next reply is
// read ahead while it applies the last: its next Pull reads nothing more
// from the outbox. If the read ahead failed, the Pull reads the store.
func TestTheNextPullTakesTheReplyReadAhead(t *testing.T) {
	t.Parallel()
	for _, aheadFails := range []bool{false, true} {
		t.Run(fmt.Sprint("ahead fails ", aheadFails), func(t *testing.T) {
			t.Parallel()
			cfg := testConfig()
			cfg.PullReplyMaxEvents = 2
			w, f := faultWorld(t, cfg)
			w.peers.setDown(true)
			w.send(4)
			eventually(t, "queue mode", func() bool { return w.state().Mode == domain.ModeQueue })
			if aheadFails {
				f.failAfter("read", streams.OutboxPrefix, 1, 1)
			}
			first, err := w.engine.ServePull(t.Context(), callerB, nil)
			if err != nil || len(first.Events) != 2 {
				t.Fatalf("first pull: %d events, %v", len(first.Events), err)
			}
			p := w.engine.peer(mustLookup(t, w, peerB))
			eventually(t, "the read ahead", func() bool {
				p.mu.Lock()
				defer p.mu.Unlock()
				if p.ahead == nil {
					return false
				}
				select {
				case <-p.ahead.done:
					return true
				default:
					return false
				}
			})
			reads := f.callCount("read", streams.OutboxPrefix)
			ack := uint64(1)
			next, err := w.engine.ServePull(t.Context(), callerB, &ack)
			if err != nil || len(next.Events) != 2 || next.FirstSeq != 2 {
				t.Fatalf("next pull: %d events from %d, %v", len(next.Events), next.FirstSeq, err)
			}
			if n := f.callCount("read", streams.OutboxPrefix) - reads; !aheadFails && n != 0 {
				t.Fatalf("the next pull read the outbox %d times: the read ahead was not taken", n)
			}
		})
	}
}

// Given an outbox that started a new epoch, a peer whose account is of the
// epoch before (one this outbox had) holds nothing of the current one: it
// gets the queue in the current epoch, and no other epoch starts.
func TestAnAccountOfAPastEpochStartsNoOther(t *testing.T) {
	t.Parallel()
	w, _, _ := queuedFaultWorld(t, 2)
	old := w.state().Epoch
	ack := uint64(1)
	current := w.accountedPull(&ack, domain.PullAccount{Epoch: old + 12345}).Epoch
	if current == old {
		t.Fatal("no new epoch")
	}
	batch := w.accountedPull(nil, domain.PullAccount{Epoch: old})
	if batch.Epoch != current || len(batch.Events) != 2 || batch.FirstSeq != 0 {
		t.Fatalf("pull with an account of the past epoch: epoch %d (current %d), %d events from %d", batch.Epoch, current, len(batch.Events), batch.FirstSeq)
	}
}

// Given a damaged outbox record, a Pull that reaches it fails.
func TestAPullReachingADamagedOutboxRecordFails(t *testing.T) {
	t.Parallel()
	w, _, _ := queuedFaultWorld(t, 1)
	damaged := eventstore.EventData{Type: streams.TypeEventEnqueued, Data: []byte("{not json")}
	if _, err := w.store.Append(t.Context(), w.outboxStream(), eventstore.Exact(0), damaged); err != nil {
		t.Fatal(err)
	}
	w.restart()
	if batch, err := w.engine.ServePull(t.Context(), callerB, nil); err == nil {
		t.Fatalf("a pull over a damaged record: %d events", len(batch.Events))
	}
}

// Given a Pull being served, a second one from the same peer meanwhile is
// answered empty at once (one Pull at a time per peer).
func TestASecondPullMeanwhileIsAnsweredEmpty(t *testing.T) {
	t.Parallel()
	w, f, _ := queuedFaultWorld(t, 2)
	hold := f.holdNext("read", streams.OutboxPrefix)
	first := make(chan int, 1)
	go func() {
		batch, _ := w.engine.ServePull(context.Background(), callerB, nil)
		first <- len(batch.Events)
	}()
	p := w.engine.peer(mustLookup(t, w, peerB))
	eventually(t, "the first pull being served", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.serving
	})
	batch, err := w.engine.ServePull(t.Context(), callerB, nil)
	close(hold)
	if err != nil || len(batch.Events) != 0 {
		t.Fatalf("a second pull meanwhile: %d events, %v", len(batch.Events), err)
	}
	if n := <-first; n != 2 {
		t.Fatalf("the first pull got %d events", n)
	}
}

// Given a peer in queue mode with a probe pending, its Pull stops the
// probe: no timer is left for a peer that pulls.
func TestAPullInQueueModeStopsTheProbe(t *testing.T) {
	t.Parallel()
	w := newWorld(t, probeConfig())
	w.peers.setDown(true)
	w.send(2)
	eventually(t, "queue mode", func() bool { return w.state().Mode == domain.ModeQueue })
	p := w.engine.peer(mustLookup(t, w, peerB))
	probing := func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.probeTimer != nil
	}
	if !probing() {
		t.Fatal("no probe pending in queue mode")
	}
	if _, err := w.engine.ServePull(t.Context(), callerB, nil); err != nil {
		t.Fatal(err)
	}
	if probing() {
		t.Fatal("a probe is still pending after the peer pulled")
	}
}

// Given a Postbox peer acknowledging exactly up to the outbox's head with
// an event ID (it holds one more event than the outbox: the store went
// back), a new epoch starts; nothing fails.
func TestAnAcknowledgementAtTheHeadWithAnIDStartsANewEpoch(t *testing.T) {
	t.Parallel()
	w, _, _ := queuedFaultWorld(t, 2)
	epoch := w.state().Epoch
	ack := uint64(2)
	batch := w.accountedPull(&ack, domain.PullAccount{Epoch: epoch, AckID: []byte("an event this outbox lost")})
	if batch.Epoch == epoch || len(batch.Events) != 2 {
		t.Fatalf("reply: epoch %d (was %d), %d events", batch.Epoch, epoch, len(batch.Events))
	}
}

// Given a peer in push mode, an accounted Pull that starts a new epoch
// fails when that record cannot be written, though its reply is empty.
func TestAnEmptyPullWhoseEpochRecordFailsFails(t *testing.T) {
	t.Parallel()
	w, f := faultWorld(t, testConfig())
	w.send(1)
	eventually(t, "delivered", func() bool { return w.state().Delivered == 1 })
	eventually(t, "its record written", func() bool { return len(w.deliveryRecords()) == 1 })
	f.fail("append", streams.DeliveryPrefix, 1)
	epoch := w.state().Epoch
	if _, err := w.engine.ServeAccountedPull(t.Context(), callerB, nil, &domain.PullAccount{Epoch: epoch + 99}); !errors.Is(err, errInjected) {
		t.Fatalf("an empty pull whose epoch record fails: %v", err)
	}
}
