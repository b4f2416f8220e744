package delivery

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/domain"
)

// Given sends waiting whose events make exactly one append's bound, they
// go in one append.
func TestSendsWaitingUpToExactlyOneAppendsBoundGoTogether(t *testing.T) {
	t.Parallel()
	w, spy := newSpiedWorld(t)
	w.peers.setDown(true)
	w.send(1)
	release := make(chan struct{})
	spy.setHook(func(n int, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
		if n == 0 {
			hold(t, release)
		}
		return spy.Store.Append(context.Background(), stream, expected, events...)
	})
	go func() {
		if _, err := w.engine.Send(t.Context(), peerB, added(1)); err != nil {
			t.Error(err)
		}
	}()
	eventually(t, "the first append", func() bool { return len(spy.appends()) == 1 })
	const big, small = maxSendBatch - 100, 100
	outcomes := make(chan []domain.SendOutcome, 2)
	go func() { outcomes <- w.engine.SendBatch(t.Context(), batchOf(2, big)) }()
	eventually(t, "the big batch waiting", func() bool { return w.queuedSends() == 1 })
	go func() { outcomes <- w.engine.SendBatch(t.Context(), batchOf(2+big, small)) }()
	eventually(t, "the small batch waiting", func() bool { return w.queuedSends() == 2 })
	close(release)
	for range 2 {
		select {
		case out := <-outcomes:
			for _, o := range out {
				if o.Err != nil {
					t.Fatal(o.Err)
				}
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a batch was not answered")
		}
	}
	var sizes []int
	for _, c := range spy.appends() {
		sizes = append(sizes, c.events)
	}
	if !slices.Equal(sizes, []int{1, maxSendBatch}) {
		t.Fatalf("events per append: %v, want [1 %d]", sizes, maxSendBatch)
	}
}
