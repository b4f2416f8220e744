package delivery

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// inboxRecords returns the events of server's inbox, decoded.
func inboxRecords(t *testing.T, w *world, server domain.ServerID) []streams.Received {
	t.Helper()
	return receivedIn(t, w.store, streams.Inbox(mustLookup(t, w, server)))
}

// receivedIn returns the events of an inbox stream, in order, runs
// expanded.
func receivedIn(t testing.TB, s Store, stream string) []streams.Received {
	t.Helper()
	var out []streams.Received
	_, err := readAll(context.Background(), s, stream, func(r eventstore.RecordedEvent) error {
		run, err := streams.DecodeReceivedRecord(r)
		out = append(out, run...)
		return err
	})
	if err != nil && !errors.Is(err, eventstore.ErrStreamNotFound) {
		t.Fatal(err)
	}
	return out
}

func events(users ...uint64) []*syncv1.Event {
	var out []*syncv1.Event
	for _, u := range users {
		out = append(out, added(u))
	}
	return out
}

// Given a Postbox sender's checked pushes in one epoch,
// when it pushes from 0 again in a new epoch (its store was restored),
// then the events are taken anew, the operator is warned (not at the
// first contact, which is in an epoch too), and each record
// carries the epoch and, on the last event of a push, its outbox ID: after
// a restart the next push continuing the new epoch is taken.
func TestASendersNewEpochIsTakenAnewAndWarnedOf(t *testing.T) {
	t.Parallel()
	w, _ := faultWorld(t, testConfig())
	caller := domain.Caller{ServerID: sender, Extended: true}
	push := func(epoch uint64, first uint64, prev *domain.EventRef, lastID string, users ...uint64) domain.PushAnswer {
		t.Helper()
		answer, err := w.engine.AcceptClaimedPush(t.Context(), caller, events(users...), &first,
			&domain.PushClaim{Epoch: epoch, Prev: prev, LastID: []byte(lastID)})
		if err != nil || answer.Refused {
			t.Fatalf("push %d of epoch %d: %+v, %v", first, epoch, answer, err)
		}
		return answer
	}
	push(7, 0, nil, "id-2", 0, 1, 2)
	if strings.Contains(w.logs.String(), "new epoch") {
		t.Fatalf("a first push warned of a new epoch:\n%s", w.logs.String())
	}
	push(8, 0, nil, "id-0", 10)
	if !strings.Contains(w.logs.String(), "the sender started a new epoch") {
		t.Fatalf("no warning of the new epoch:\n%s", w.logs.String())
	}
	recs := inboxRecords(t, w, sender)
	if len(recs) != 4 {
		t.Fatalf("inbox holds %d records, want 4", len(recs))
	}
	for i, want := range []struct {
		epoch uint64
		id    string
	}{{7, ""}, {7, ""}, {7, "id-2"}, {8, "id-0"}} {
		if recs[i].SenderEpoch != want.epoch || string(recs[i].SenderEventID) != want.id {
			t.Fatalf("record %d: epoch %d, id %q; want %d, %q", i, recs[i].SenderEpoch, recs[i].SenderEventID, want.epoch, want.id)
		}
	}
	w.restart()
	answer := push(8, 1, &domain.EventRef{Seq: 0, ID: []byte("id-0")}, "id-1", 11)
	if answer.Applied == nil || answer.Applied.Seq != 1 {
		t.Fatalf("push after a restart: %+v", answer)
	}
}

// Given a receiver holding nothing from a sender,
// when a checked push claims the receiver holds an event,
// then it is refused whole, saying it holds nothing, and the operator is
// warned.
func TestAPushClaimingWhatTheReceiverLacksIsRefused(t *testing.T) {
	t.Parallel()
	w, _ := faultWorld(t, testConfig())
	caller := domain.Caller{ServerID: sender, Extended: true}
	first := uint64(5)
	answer, err := w.engine.AcceptClaimedPush(t.Context(), caller, events(5), &first,
		&domain.PushClaim{Epoch: 1, Prev: &domain.EventRef{Seq: 4, ID: []byte("x")}, LastID: []byte("y")})
	if err != nil || !answer.Refused || answer.Applied != nil {
		t.Fatalf("push claiming event 4: %+v, %v", answer, err)
	}
	if got := inboxOf(t, w, sender); len(got) != 0 {
		t.Fatalf("inbox after a refused push: %v", got)
	}
	if log := w.logs.String(); !strings.Contains(log, "push refused: it does not continue") || !strings.Contains(log, "held=nothing") {
		t.Fatalf("log:\n%s", log)
	}
}

// Given a receiver whose inbox another writer appended to,
// when a push conflicts with it,
// then the push fails, and the same push again is taken after the other
// writer's record: the receiver reread its inbox.
func TestAPushAfterAnotherWritersInboxAppendIsTakenWhenRetried(t *testing.T) {
	t.Parallel()
	w, _ := faultWorld(t, testConfig())
	caller := domain.Caller{ServerID: sender, Extended: true}
	if err := w.engine.AcceptPush(t.Context(), caller, events(0), seqOf(0)); err != nil {
		t.Fatal(err)
	}
	rec, err := w.engine.codec.EncodeReceived(streams.Received{Event: added(50)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.store.Append(t.Context(), streams.Inbox(mustLookup(t, w, sender)), eventstore.Exact(0), rec); err != nil {
		t.Fatal(err)
	}
	if err := w.engine.AcceptPush(t.Context(), caller, events(1), seqOf(1)); !errors.Is(err, eventstore.ErrWrongExpectedRevision) {
		t.Fatalf("push conflicting with another writer: %v", err)
	}
	if err := w.engine.AcceptPush(t.Context(), caller, events(1), seqOf(1)); err != nil {
		t.Fatalf("the same push again: %v", err)
	}
	if got := inboxOf(t, w, sender); !slices.Equal(got, []uint64{0, 50, 1}) {
		t.Fatalf("inbox: %v", got)
	}
}

// Given a sender that is not registered yet, and a peers stream that
// cannot be written,
// when it pushes,
// then the push fails with the store's error: nothing was stored.
func TestAPushFromASenderThatCannotBeRegisteredFails(t *testing.T) {
	t.Parallel()
	f := &faultyStore{}
	w := newRegistryWorld(t, testConfig(), f)
	f.failPeers.Store(true)
	caller := domain.Caller{ServerID: sender, Extended: true}
	if err := w.engine.AcceptPush(t.Context(), caller, events(0), seqOf(0)); !errors.Is(err, errAppendFailed) {
		t.Fatalf("push whose sender cannot be registered: %v", err)
	}
}

// Given an event whose encoding fails (a string that is not UTF-8, which
// protobuf refuses to marshal),
// when it is pushed,
// then the push fails: it is not answered as applied.
func TestAPushOfAnEventThatCannotBeEncodedFails(t *testing.T) {
	t.Parallel()
	w, _ := faultWorld(t, testConfig())
	caller := domain.Caller{ServerID: sender, Extended: true}
	bad := &syncv1.Event{Kind: &syncv1.Event_UserInvited_{UserInvited: &syncv1.Event_UserInvited{InviteId: "\xff\xfe"}}}
	if err := w.engine.AcceptPush(t.Context(), caller, []*syncv1.Event{bad}, seqOf(0)); err == nil {
		t.Fatal("a push whose event cannot be encoded was accepted")
	}
	if got := inboxOf(t, w, sender); len(got) != 0 {
		t.Fatalf("inbox: %v", got)
	}
}

// Given a receiver, the observer is told how many events it received from
// whom, and by which way: push or pull.
func TestReceivedEventsAreObservedByWay(t *testing.T) {
	t.Parallel()
	obs := &callObserver{}
	cfg := testConfig()
	cfg.Observer = obs
	w, _ := faultWorld(t, cfg)
	caller := domain.Caller{ServerID: sender, Extended: true}
	if err := w.engine.AcceptPush(t.Context(), caller, events(0, 1), seqOf(0)); err != nil {
		t.Fatal(err)
	}
	w.peers.set(func(f *fakePeers) {
		f.pullFn = func(ack *uint64) (peerclient.PullResult, error) {
			if ack != nil && *ack >= 2 {
				return peerclient.PullResult{}, nil
			}
			return peerclient.PullResult{Events: events(2), FirstSeq: 2, HasSeq: true}, nil
		}
	})
	if err := w.engine.PullFrom(t.Context(), sender); err != nil {
		t.Fatal(err)
	}
	want := []string{"received " + sender.String() + " push 2", "received " + sender.String() + " pull 1"}
	if got := obs.seen("received"); !slices.Equal(got, want) {
		t.Fatalf("observed %v, want %v", got, want)
	}
}

// Given a sender this server never sends to,
// when it pushes,
// then it is pulled periodically from then on (a Pull carries this
// server's account of what it holds from the sender).
func TestASenderIsPulledPeriodicallyAfterItsPush(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.PullInterval = 20 * time.Millisecond
	w, _ := faultWorld(t, cfg)
	pulled := make(chan struct{}, 1)
	w.peers.set(func(f *fakePeers) {
		f.pullFn = func(*uint64) (peerclient.PullResult, error) {
			select {
			case pulled <- struct{}{}:
			default:
			}
			return peerclient.PullResult{}, nil
		}
	})
	caller := domain.Caller{ServerID: sender, Extended: true}
	if err := w.engine.AcceptPush(t.Context(), caller, events(0), seqOf(0)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-pulled:
	case <-time.After(5 * time.Second):
		t.Fatal("the sender was not pulled within 5 s of its push")
	}
}

// Given a sender's replica pushing under an owner term earlier than one
// seen, the push is refused and the refusal logged.
func TestAStaleTermPushIsLogged(t *testing.T) {
	t.Parallel()
	w, _ := faultWorld(t, testConfig())
	caller := domain.Caller{ServerID: sender, Extended: true}
	first := uint64(0)
	if _, err := w.engine.AcceptClaimedPush(t.Context(), caller, events(0), &first, &domain.PushClaim{Term: 2}); err != nil {
		t.Fatal(err)
	}
	next := uint64(1)
	_, err := w.engine.AcceptClaimedPush(t.Context(), caller, events(1), &next, &domain.PushClaim{Term: 1, Prev: &domain.EventRef{Seq: 0}})
	if !errors.Is(err, domain.ErrStaleTerm) {
		t.Fatalf("a push under an earlier term: %v", err)
	}
	if !strings.Contains(w.logs.String(), "push refused: the sender's replica pushed under an earlier owner term") {
		t.Fatalf("log:\n%s", w.logs.String())
	}
}

// Given events pulled from an upstream sender (they exist nowhere else)
// whose append keeps failing, each failure is logged as an error, and once
// the engine stops the pull fails: it never reports them stored.
func TestPulledEventsThatCannotBeStoredFailWhenTheEngineStops(t *testing.T) {
	t.Parallel()
	w, f := faultWorld(t, testConfig())
	registerSender(t, w)
	p := w.engine.peer(mustLookup(t, w, sender))
	f.fail("append", streams.InboxPrefix, -1)
	done := make(chan error, 1)
	go func() {
		_, err := w.engine.receive(context.Background(), p, eventsv1.EventReceived_VIA_PULL, events(1), nil, incoming{})
		done <- err
	}()
	eventually(t, "the failure logged", func() bool {
		return strings.Contains(w.logs.String(), "storing events pulled from an upstream peer failed")
	})
	go w.stop()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("pulled events never stored were reported stored")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the pull did not end with the engine")
	}
}
