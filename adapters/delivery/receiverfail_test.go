package delivery

import (
	"errors"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

var sender = domain.MustParseServerID("s.example:2289")

func seqOf(v uint64) *uint64 { return &v }

// inboxOf returns the users of the events in server's inbox, in order.
func inboxOf(t *testing.T, w *world, server domain.ServerID) []uint64 {
	t.Helper()
	id, ok := w.engine.registry.Lookup(server)
	if !ok {
		return nil
	}
	var out []uint64
	for _, rec := range receivedIn(t, w.store, streams.Inbox(id)) {
		out = append(out, rec.Event.GetUserAddedToGuild().GetUserId())
	}
	return out
}

// Given a sender whose inbox cannot be read,
// when it pushes,
// then the push fails with the store's error and nothing is stored: the
// receiver does not decide what it holds from an empty view. Once the
// store reads again, the push is taken.
func TestAPushWhoseInboxCannotBeReadIsRefused(t *testing.T) {
	t.Parallel()
	w, f := faultWorld(t, testConfig())
	caller := domain.Caller{ServerID: sender, Extended: true}
	f.fail("readBackward", streams.InboxPrefix, -1)
	if err := w.engine.AcceptPush(t.Context(), caller, []*syncv1.Event{added(1)}, seqOf(0)); !errors.Is(err, errInjected) {
		t.Fatalf("push while the inbox cannot be read: %v", err)
	}
	if got := inboxOf(t, w, sender); len(got) != 0 {
		t.Fatalf("inbox after a refused push: %v", got)
	}
	f.clear()
	if err := w.engine.AcceptPush(t.Context(), caller, []*syncv1.Event{added(1)}, seqOf(0)); err != nil {
		t.Fatal(err)
	}
	if got := inboxOf(t, w, sender); len(got) != 1 || got[0] != 1 {
		t.Fatalf("inbox: %v", got)
	}
}

// Given a sender whose inbox append fails,
// when it pushes again the same events,
// then they are stored once: the failed push did not count as applied.
func TestAPushWhoseAppendFailedIsTakenWhenRetried(t *testing.T) {
	t.Parallel()
	w, f := faultWorld(t, testConfig())
	caller := domain.Caller{ServerID: sender, Extended: true}
	if err := w.engine.AcceptPush(t.Context(), caller, []*syncv1.Event{added(0)}, seqOf(0)); err != nil {
		t.Fatal(err)
	}
	f.fail("append", streams.InboxPrefix, 1)
	if err := w.engine.AcceptPush(t.Context(), caller, []*syncv1.Event{added(1), added(2)}, seqOf(1)); !errors.Is(err, errInjected) {
		t.Fatalf("push whose append fails: %v", err)
	}
	if err := w.engine.AcceptPush(t.Context(), caller, []*syncv1.Event{added(1), added(2)}, seqOf(1)); err != nil {
		t.Fatal(err)
	}
	if got := inboxOf(t, w, sender); !slicesEqual(got, []uint64{0, 1, 2}) {
		t.Fatalf("inbox: %v", got)
	}
}

func slicesEqual(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Given events pulled from a peer whose inbox appends keep conflicting
// (another writer, always ahead),
// when the pull applies them,
// then the append is tried again a bounded number of times, and the pull
// fails with the conflict; a pushed batch that conflicts is not tried
// again at all (the pusher retries it).
func TestConflictingInboxAppendsAreRetriedBoundedOnlyForPulls(t *testing.T) {
	t.Parallel()
	w, f := faultWorld(t, testConfig())
	id, err := w.engine.registry.Register(t.Context(), sender)
	if err != nil {
		t.Fatal(err)
	}
	p := w.engine.peer(id)
	conflicts := f.failWith("append", streams.InboxPrefix, -1, eventstore.ErrWrongExpectedRevision)
	_, err = w.engine.receive(t.Context(), p, eventsv1.EventReceived_VIA_PULL, []*syncv1.Event{added(1)}, seqOf(0), incoming{})
	if !errors.Is(err, eventstore.ErrWrongExpectedRevision) {
		t.Fatalf("pull whose appends always conflict: %v", err)
	}
	if n := conflicts.count(f); n != maxInboxConflicts+1 {
		t.Fatalf("pulled events appended %d times, want %d", n, maxInboxConflicts+1)
	}
	_, err = w.engine.receive(t.Context(), p, eventsv1.EventReceived_VIA_PUSH, []*syncv1.Event{added(1)}, seqOf(0), incoming{})
	if !errors.Is(err, eventstore.ErrWrongExpectedRevision) {
		t.Fatalf("push whose append conflicts: %v", err)
	}
	if n := conflicts.count(f); n != maxInboxConflicts+2 {
		t.Fatalf("a conflicting push was appended %d times, want once", n-maxInboxConflicts-1)
	}
}
