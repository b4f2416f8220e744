package delivery

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

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
	if err != nil || len(batch.Events) != 3 || batch.FirstSeq != 0 {
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
