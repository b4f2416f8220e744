package delivery

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

func invite(id string) *syncv1.Event {
	return &syncv1.Event{Kind: &syncv1.Event_UserInvited_{UserInvited: &syncv1.Event_UserInvited{UserId: 1, InviteId: id}}}
}

func TestSendRefusesAnEventOverTheLimitBeforeStoringAnything(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.MaxEventBytes = 1000
	w := newWorld(t, cfg)
	_, err := w.engine.Send(context.Background(), peerB, invite(strings.Repeat("x", 1000)))
	var tooLarge *domain.EventTooLargeError
	if !errors.As(err, &tooLarge) || tooLarge.Limit != 1000 || tooLarge.Size <= 1000 || !errors.Is(err, domain.ErrInvalidArgument) {
		t.Fatalf("Send of an event over the limit: %v; want EventTooLargeError naming its size and the limit", err)
	}
	if _, known := w.engine.registry.Lookup(peerB); known {
		t.Fatal("a refused Send registered the peer")
	}
	if seq, err := w.engine.Send(context.Background(), peerB, invite(strings.Repeat("x", 900))); err != nil || seq != 0 {
		t.Fatalf("Send of an event under the limit: %d, %v; want sequence 0", seq, err)
	}
}

func TestAnOversizedOldestEventIsReportedStuckUntilSkipped(t *testing.T) {
	t.Parallel()
	synctest.Test(t, testAnOversizedOldestEventIsReportedStuckUntilSkipped)
}

// testAnOversizedOldestEventIsReportedStuckUntilSkipped runs in a synctest bubble: the retries before queue mode wait on the bubble's clock.
func testAnOversizedOldestEventIsReportedStuckUntilSkipped(t *testing.T) {
	cfg := testConfig()
	cfg.MaxEventBytes = 1 << 20
	w := newWorld(t, cfg)
	w.peers.setDown(true) // the peer refuses it, as a receiver refuses a body over its limit
	if _, err := w.engine.Send(context.Background(), peerB, invite(strings.Repeat("x", 600<<10))); err != nil {
		t.Fatal(err)
	}
	w.send(2)
	eventually(t, "queue mode", func() bool { return w.state().Mode == domain.ModeQueue })
	if stuck := w.engine.Stuck(); len(stuck) != 0 {
		t.Fatalf("stuck %v on an event under the limit", stuck)
	}

	// Lowered, as after an upgrade that brought the limit: now the oldest
	// event is over it, and a Pull reply carrying it shows so.
	w.engine.cfg.MaxEventBytes = 512 << 10
	caller := domain.Caller{ServerID: peerB, Extended: true}
	if _, err := w.engine.ServePull(context.Background(), caller, nil); err != nil {
		t.Fatal(err)
	}
	stuck := w.engine.Stuck()[peerB]
	if stuck.Seq != 0 || !strings.Contains(stuck.Reason, "over the per-event limit of 524288 bytes") {
		t.Fatalf("Stuck = %+v; want event 0 over the limit", w.engine.Stuck())
	}

	skipped, err := w.engine.Skip(context.Background(), peerB, 0, "refused as too large")
	if err != nil || skipped != (domain.EventsSkipped{FromSeq: 0, ThroughSeq: 0, Reason: "refused as too large"}) {
		t.Fatalf("Skip = %+v, %v", skipped, err)
	}
	if stuck := w.engine.Stuck(); len(stuck) != 0 {
		t.Fatalf("still stuck after the skip: %v", stuck)
	}
	// The skip is durable: a restart folds it back.
	w.restart()
	if s := w.state(); s.Delivered != 1 || s.Skipped != 1 {
		t.Fatalf("after a restart: %+v; want event 0 skipped", s)
	}
	// The Pull now starts after the skipped event.
	batch, err := w.engine.ServePull(context.Background(), caller, nil)
	if err != nil || batch.FirstSeq != 1 || len(batch.Events) != 2 {
		t.Fatalf("pull after the skip: %d events from %d, %v; want 2 from 1", len(batch.Events), batch.FirstSeq, err)
	}
}

func TestSkipInPushModeLetsTheNextEventGoAndKnowsNoStrangers(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	if _, err := w.engine.Skip(context.Background(), peerB, 0, "r"); !errors.Is(err, domain.ErrUnknownPeer) {
		t.Fatalf("Skip for a peer never seen: %v; want ErrUnknownPeer", err)
	}
	release := w.holdPushes()
	w.send(3) // event 0 is held in flight; 1 and 2 wait
	eventually(t, "the first push in flight", func() bool { return w.peers.gate.arrivedIs(1) })
	if _, err := w.engine.Skip(context.Background(), peerB, 0, "r"); err != nil {
		t.Fatalf("Skip of the event in flight: %v", err)
	}
	release()
	eventually(t, "everything done", func() bool { return w.state().Pending() == 0 })
	// Event 0 was skipped while its push was in flight: its success is
	// stale and recorded as nothing; 1 and 2 are pushed after it.
	recs := w.deliveryRecords()
	if _, ok := recs[0].(domain.EventsSkipped); !ok {
		t.Fatalf("records %v; want the skip first", recs)
	}
	if s := w.state(); s.Skipped != 1 || s.Delivered != 3 {
		t.Fatalf("state %+v; want 1 skipped of 3", s)
	}
}
