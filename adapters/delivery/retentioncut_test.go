package delivery

import (
	"strings"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// Given every event skipped (delivered with nothing given to the peer),
// when retention runs, the last event stays in the outbox: a push's claim
// names it.
func TestRetentionKeepsTheLastEventOfASkippedOutbox(t *testing.T) {
	t.Parallel()
	w := newWorld(t, retainConfig(20*time.Millisecond))
	w.peers.setDown(true)
	w.send(3)
	if _, err := w.engine.Skip(t.Context(), peerB, 2, "test"); err != nil {
		t.Fatal(err)
	}
	if s := w.state(); s.Delivered != 3 || s.HasGiven {
		t.Fatalf("after the skip: %+v", s)
	}
	eventually(t, "the outbox cut", func() bool { return w.truncatedBefore(w.outboxStream()) > 0 })
	time.Sleep(100 * time.Millisecond) // more retention rounds
	if tb := w.truncatedBefore(w.outboxStream()); tb != 2 {
		t.Fatalf("the outbox was truncated before %d, want 2 (its last event kept)", tb)
	}
}

// Given delivery records behind a snapshot, retention cuts them just
// behind it, keeping the last record the snapshot covers, and once only;
// a cut that fails is logged and made again later.
func TestDeliveryRecordsAreCutJustBehindTheSnapshotOnce(t *testing.T) {
	t.Parallel()
	w, f := faultWorld(t, retainConfig(20*time.Millisecond))
	failed := f.fail("truncate", streams.DeliveryPrefix, 1)
	w.deliverOneByOne(snapshotEvery + 10)
	p := w.engine.peer(mustLookup(t, w, peerB))
	snapshot := func() uint64 {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.snapshotWritten
	}
	eventually(t, "a snapshot", func() bool { return snapshot() > 1 })
	eventually(t, "the delivery records cut", func() bool { return w.truncatedBefore(w.deliveryStream()) > 0 })
	if tb, s := w.truncatedBefore(w.deliveryStream()), snapshot(); tb != s-1 {
		t.Fatalf("delivery records truncated before %d, snapshot at %d: want %d", tb, s, s-1)
	}
	if failed.count(f) != 1 || !strings.Contains(w.logs.String(), "compacting delivery records failed") {
		t.Fatalf("the failed cut (%d) was not logged:\n%s", failed.count(f), w.logs.String())
	}
	cuts := f.callCount("truncate", streams.DeliveryPrefix)
	time.Sleep(100 * time.Millisecond) // more retention rounds
	if n := f.callCount("truncate", streams.DeliveryPrefix) - cuts; n != 0 {
		t.Fatalf("the same cut made %d more times", n)
	}
	if s := w.state(); s.Mode != domain.ModePush {
		t.Fatalf("state: %+v", s)
	}
}
