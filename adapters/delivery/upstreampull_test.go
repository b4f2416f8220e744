package delivery

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// failingInbox refuses the first appends to inbox streams, as a store that
// is briefly unavailable does.
type failingInbox struct {
	Store
	mu    sync.Mutex
	fails int
}

func (f *failingInbox) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	f.mu.Lock()
	fail := strings.HasPrefix(stream, streams.InboxPrefix) && f.fails > 0
	if fail {
		f.fails--
	}
	f.mu.Unlock()
	if fail {
		return eventstore.AppendResult{}, errors.New("store unavailable")
	}
	return f.Store.Append(ctx, stream, expected, events...)
}

// Events pulled from an upstream peer exist nowhere else once its reply is
// written (it deletes its queue): a store failure does not lose them, even
// past the pull's own deadline.
func TestEventsPulledFromAnUpstreamPeerAreStoredEvenPastThePullsDeadline(t *testing.T) {
	t.Parallel()
	synctest.Test(t, testEventsPulledFromAnUpstreamPeerAreStoredEvenPastThePullsDeadline)
}

// testEventsPulledFromAnUpstreamPeerAreStoredEvenPastThePullsDeadline runs in a synctest bubble: the append's backoff and the pull's deadline pass on the bubble's clock.
func testEventsPulledFromAnUpstreamPeerAreStoredEvenPastThePullsDeadline(t *testing.T) {
	w := newWorld(t, testConfig())
	flaky := &failingInbox{Store: w.engine.store, fails: 3}
	w.engine.store = flaky
	id, err := w.engine.registry.Register(t.Context(), peerB)
	if err != nil {
		t.Fatal(err)
	}
	p := w.engine.peer(id)

	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond) // the pull's deadline
	defer cancel()
	events := []*syncv1.Event{added(1), added(2)}
	if _, err := w.engine.receive(ctx, p, eventsv1.EventReceived_VIA_PULL, events, nil, incoming{}); err != nil {
		t.Fatalf("receive: %v", err)
	}
	if recs := receivedIn(t, flaky, streams.Inbox(id)); len(recs) != 2 {
		t.Fatalf("inbox holds %d events, want both pulled events", len(recs))
	}

	// A Postbox sender keeps what it sent until acknowledged: its events
	// are not held past the caller's deadline.
	flaky.mu.Lock()
	flaky.fails = 1000
	flaky.mu.Unlock()
	ctx2, cancel2 := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel2()
	seq := uint64(0)
	if _, err := w.engine.receive(ctx2, p, eventsv1.EventReceived_VIA_PULL, events, &seq, incoming{}); err == nil {
		t.Fatal("a failed append of a Postbox sender's events reported success")
	}
}
