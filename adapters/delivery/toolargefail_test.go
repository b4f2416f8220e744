package delivery

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// tooLargeInbox refuses the next inbox appends as too large for the store
// (each event over a budget of limit bytes), as many as refuse says, and
// then fails as many as fail says.
type tooLargeInbox struct {
	Store
	limit  atomic.Int32
	refuse atomic.Int32
	fail   atomic.Int32
}

func (s *tooLargeInbox) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	if strings.HasPrefix(stream, streams.InboxPrefix) {
		if s.refuse.Add(-1) >= 0 {
			tooLarge := &eventstore.EventTooLargeError{Stream: stream, Limit: int(s.limit.Load())}
			for _, ev := range events {
				tooLarge.IDs = append(tooLarge.IDs, ev.ID)
			}
			return eventstore.AppendResult{}, tooLarge
		}
		if s.fail.Add(-1) >= 0 {
			return eventstore.AppendResult{}, errAppendFailed
		}
	}
	return s.Store.Append(ctx, stream, expected, events...)
}

// Given a store that refuses a received event as too large, when its
// marker is stored, then an operator is told the event is lost; and when
// its wire bytes are refused too and the marker's append fails, then the
// push is refused (not answered as applied) and a retry is stored.
func TestAReceivedEventTooLargeIsLoggedAndItsMarkerMustBeStored(t *testing.T) {
	t.Parallel()
	inbox := &tooLargeInbox{}
	w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: testConfig(), logs: &logBuffer{},
		wrap: func(s Store) Store { inbox.Store = s; return inbox }}
	w.open()
	sender := domain.Caller{ServerID: domain.MustParseServerID("s.example:2289"), Extended: true}
	seq := func(v uint64) *uint64 { return &v }

	inbox.limit.Store(8) // not even the event's wire bytes fit
	inbox.refuse.Store(1)
	if err := w.engine.AcceptPush(t.Context(), sender, []*syncv1.Event{added(0)}, seq(0)); err != nil {
		t.Fatalf("a push refused by the store as too large: %v", err)
	}
	if !strings.Contains(w.logs.String(), "a received event is too large for the event store") {
		t.Fatalf("log:\n%s", w.logs.String())
	}

	// Its wire bytes seem to fit but are refused too; the marker's append
	// then fails.
	inbox.limit.Store(1000)
	inbox.refuse.Store(2)
	inbox.fail.Store(1)
	if err := w.engine.AcceptPush(t.Context(), sender, []*syncv1.Event{added(1)}, seq(1)); !errors.Is(err, errAppendFailed) {
		t.Fatalf("a push whose marker could not be stored: %v, want the store's failure", err)
	}
	if err := w.engine.AcceptPush(t.Context(), sender, []*syncv1.Event{added(1)}, seq(1)); err != nil {
		t.Fatalf("the push again: %v", err)
	}
	id := mustLookup(t, w, sender.ServerID)
	var got []string
	for _, rec := range receivedIn(t, w.store, streams.Inbox(id)) {
		if rec.TooLargeBytes != nil {
			got = append(got, "marker")
		} else {
			got = append(got, "event")
		}
	}
	if strings.Join(got, " ") != "marker event" {
		t.Fatalf("inbox holds %v, want [marker event]", got)
	}
}
