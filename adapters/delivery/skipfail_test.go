package delivery

import (
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// Given a skip whose record cannot be written, it fails: it is not
// reported done.
func TestASkipWhoseRecordFailsFails(t *testing.T) {
	t.Parallel()
	w, f := faultWorld(t, testConfig())
	w.peers.setDown(true)
	w.send(2)
	eventually(t, "queue mode", func() bool { return w.state().Mode == domain.ModeQueue })
	f.fail("append", streams.DeliveryPrefix, 1)
	if _, err := w.engine.Skip(t.Context(), peerB, 0, "test"); !errors.Is(err, errInjected) {
		t.Fatalf("skip whose record fails: %v", err)
	}
	if strings.Contains(w.logs.String(), "events skipped by an operator") {
		t.Fatalf("a failed skip was logged as done:\n%s", w.logs.String())
	}
}

// Given a peer in queue mode whose probes have backed off, a skip probes
// what follows soon, as on entering queue mode.
func TestASkipInQueueModeProbesSoon(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := probeConfig()
		cfg.ProbeBackoff = domain.Backoff{First: 10 * time.Second, Max: 10 * time.Minute}
		w := newWorld(t, cfg)
		w.peers.setDown(true)
		w.send(3)
		eventually(t, "queue mode", func() bool { return w.state().Mode == domain.ModeQueue })
		time.Sleep(5 * time.Minute) // the probes back off past a minute
		synctest.Wait()
		w.peers.setDown(false)
		if _, err := w.engine.Skip(t.Context(), peerB, 0, "test"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(11 * time.Second)
		synctest.Wait()
		if s := w.state(); s.Mode != domain.ModePush || s.Delivered != 3 {
			t.Fatalf("11 s after the skip: %+v", s)
		}
	})
}

// Given an outbox record that cannot be decoded, the push loop logs that
// it cannot read the outbox (and does not push anything in its place).
func TestADamagedOutboxRecordIsLoggedNotPushed(t *testing.T) {
	t.Parallel()
	w, _ := faultWorld(t, testConfig())
	w.send(1)
	eventually(t, "the first delivered", func() bool { return w.state().Delivered == 1 })
	damaged := eventstore.EventData{Type: streams.TypeEventEnqueued, Data: []byte("{not json")}
	if _, err := w.store.Append(t.Context(), w.outboxStream(), eventstore.Exact(0), damaged); err != nil {
		t.Fatal(err)
	}
	w.restart()
	eventually(t, "the failure logged", func() bool { return strings.Contains(w.logs.String(), "reading the outbox failed") })
	if got := w.peers.pushes(); len(got) != 1 {
		t.Fatalf("pushes %v", got)
	}
}
