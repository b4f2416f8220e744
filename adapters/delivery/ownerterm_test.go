package delivery

import (
	"context"
	"errors"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// A receiver refuses a push under a lower owner term than one it has seen
// from the sender, even one of events it has not applied (they are the
// current owner's to push); it remembers the term in its inbox records, so
// across a restart; a new term that carried nothing new counts at once;
// and a Pull reply, which carries no term, is never refused for one.
func TestAReceiverRefusesAPushUnderAnEarlierOwnerTerm(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	ctx := context.Background()
	sender := domain.Caller{ServerID: domain.MustParseServerID("s.example:2289"), Extended: true}
	// push claims what the receiver holds (so continuity never refuses)
	// and fails on a refusal of any other kind.
	held := -1
	push := func(first, n, term uint64) error {
		t.Helper()
		var events []*syncv1.Event
		for i := range n {
			events = append(events, added(first+i))
		}
		claim := &domain.PushClaim{Term: term}
		if held >= 0 {
			claim.Prev = &domain.EventRef{Seq: uint64(held)}
		}
		answer, err := w.engine.AcceptClaimedPush(ctx, sender, events, &first, claim)
		if answer.Refused {
			t.Fatalf("push %d refused for continuity: %+v", first, answer)
		}
		if err == nil && answer.Applied != nil {
			held = int(answer.Applied.Seq)
		}
		return err
	}
	inboxLen := func() int {
		id, _ := w.engine.registry.Lookup(sender.ServerID)
		return len(receivedIn(t, w.store, streams.Inbox(id)))
	}
	if err := push(0, 2, 1); err != nil {
		t.Fatal(err)
	}
	if err := push(2, 1, 2); err != nil {
		t.Fatal(err)
	}
	// The replica of term 1 lost the peer; its next push, of an event not
	// applied yet, is refused whole.
	if err := push(3, 2, 1); !errors.Is(err, domain.ErrStaleTerm) {
		t.Fatalf("a push under term 1 after term 2: %v, want ErrStaleTerm", err)
	}
	if n := inboxLen(); n != 3 {
		t.Fatalf("inbox holds %d events after the stale push, want 3", n)
	}

	w.restart()
	if err := push(3, 1, 1); !errors.Is(err, domain.ErrStaleTerm) {
		t.Fatalf("after a restart, a push under term 1: %v, want ErrStaleTerm", err)
	}
	// Term 3 repeats the last push (nothing new), then term 2 is stale.
	if err := push(uint64(held), 1, 3); err != nil {
		t.Fatal(err)
	}
	if err := push(3, 1, 2); !errors.Is(err, domain.ErrStaleTerm) {
		t.Fatalf("a push under term 2 after term 3 repeated an event: %v, want ErrStaleTerm", err)
	}
	if err := push(3, 1, 3); err != nil {
		t.Fatalf("the current owner's push: %v", err)
	}
	// A pulled event keeps the term in its record.
	first := uint64(4)
	if _, err := w.engine.receive(ctx, w.engine.peer(mustLookup(t, w, sender.ServerID)), eventsv1.EventReceived_VIA_PULL, []*syncv1.Event{added(4)}, &first, incoming{}); err != nil {
		t.Fatalf("a pulled event: %v", err)
	}
	held = 4
	w.restart()
	if err := push(5, 1, 2); !errors.Is(err, domain.ErrStaleTerm) {
		t.Fatalf("after pulled events and a restart, a push under term 2: %v, want ErrStaleTerm", err)
	}
	if err := push(5, 1, 3); err != nil {
		t.Fatal(err)
	}
	if n := inboxLen(); n != 6 {
		t.Fatalf("inbox holds %d events, want 6", n)
	}
	// A sender that sends no term (a single process, an older build) after
	// terms: refused too, as its term reads 0.
	if err := push(6, 1, 0); !errors.Is(err, domain.ErrStaleTerm) {
		t.Fatalf("a push without a term after term 3: %v, want ErrStaleTerm", err)
	}
}
