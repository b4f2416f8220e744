package metrics

import (
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/domain"
)

type fixedPeers []domain.PeerCursor

func (f fixedPeers) Cursors() []domain.PeerCursor { return f }

// PeerIDOf finds the peer by its current server ID, or by "old-" and it,
// a former one.
func (f fixedPeers) PeerIDOf(server domain.ServerID) (string, bool) {
	for _, p := range f {
		if p.ServerID == server || "old-"+p.ServerID.String() == server.String() {
			return p.PeerID, true
		}
	}
	return "", false
}

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	return string(body)
}

func TestMetricsShowWhatHappened(t *testing.T) {
	t.Parallel()
	peers := fixedPeers{
		{PeerID: "pb", ServerID: domain.MustParseServerID("b.example:2289"), Outbox: domain.Outbox{Head: 10, Delivered: 5, Skipped: 1, Mode: domain.ModeQueue}, RetainedFrom: 4},
		{PeerID: "pc", ServerID: domain.MustParseServerID("c.example:2289"), Outbox: domain.Outbox{Head: 3, Delivered: 3}},
	}
	m := New(NewCounters(peers), peers)
	m.ObserveServer(func() string { return "a.example:2289" }, "v1.2.3")
	b := domain.MustParseServerID("b.example:2289")
	// One peer, by its former and its current server ID: one series.
	m.PushAttempted(domain.MustParseServerID("old-b.example:2289"), 3*time.Millisecond, 1, nil)
	m.PushAttempted(b, 3*time.Millisecond, 3, nil)
	m.PushAttempted(b, time.Second, 0, errors.New("refused"))
	m.PushAttempted(b, time.Millisecond, 0, fmt.Errorf("push: %w", &domain.RemoteError{Busy: true, RetryAfter: time.Second}))
	m.PushAttempted(b, time.Millisecond, 0, fmt.Errorf("push: %w", &domain.RemoteError{Busy: true}))
	m.PullServed(b, 5)
	m.PullMade(b, nil)
	m.Received(b, "pull", 7)
	m.AuthFailed("h.bad-token")
	m.AuthFailed("h.bad-token")
	body := scrape(t, m)
	for _, want := range []string{
		`postbox_server_info{server_id="a.example:2289",version="v1.2.3"} 1`,
		`postbox_peer_info{peer="pb",server_id="b.example:2289"} 1`,
		`postbox_peer_info{peer="pc",server_id="c.example:2289"} 1`,
		`postbox_peer_pending{peer="pb"} 5`,
		`postbox_peer_delivered{peer="pb"} 4`,
		`postbox_peer_skipped{peer="pb"} 1`,
		`postbox_peer_outbox_head{peer="pc"} 3`,
		`postbox_peer_outbox_retained{peer="pb"} 6`,
		`postbox_peer_outbox_retained{peer="pc"} 3`,
		`postbox_peers_in_queue_mode 1`,
		`postbox_push_failures_total{peer="pb"} 1`,
		`postbox_push_busy_total{peer="pb"} 2`,
		`postbox_push_duration_seconds_count{outcome="busy"} 2`,
		`postbox_push_duration_seconds_count{outcome="failure"} 1`,
		`postbox_push_duration_seconds_count{outcome="success"} 2`,
		`postbox_delivered_events_total{peer="pb",via="pull"} 5`,
		`postbox_delivered_events_total{peer="pb",via="push"} 4`,
		`postbox_pulls_served_total{peer="pb"} 1`,
		`postbox_pulls_made_total{outcome="ok",peer="pb"} 1`,
		`postbox_inbound_events_total{peer="pb",via="pull"} 7`,
		`postbox_auth_failures_total{reason="h.bad-token"} 2`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func TestIdleConsumersGauge(t *testing.T) {
	t.Parallel()
	m := New(NewCounters(fixedPeers{}), fixedPeers{})
	var idle atomic.Int64
	var failing atomic.Bool
	m.ObserveIdleConsumers(func() (int, error) {
		if failing.Load() {
			return 0, errors.New("store down")
		}
		return int(idle.Load()), nil
	})
	idle.Store(2)
	if body := scrape(t, m); !strings.Contains(body, "\npostbox_consumers_idle 2\n") {
		t.Errorf("/metrics lacks postbox_consumers_idle 2")
	}
	failing.Store(true)
	if body := scrape(t, m); !strings.Contains(body, "\npostbox_consumers_idle NaN\n") {
		t.Errorf("/metrics lacks postbox_consumers_idle NaN while the consumers cannot be read")
	}
}

func TestDiskFullGaugeFollowsTheStore(t *testing.T) {
	t.Parallel()
	m := New(NewCounters(fixedPeers{}), fixedPeers{})
	var full atomic.Bool
	m.ObserveDiskFull(full.Load)
	if body := scrape(t, m); !strings.Contains(body, "\npostbox_store_disk_full 0\n") {
		t.Errorf("/metrics with room on disk lacks postbox_store_disk_full 0")
	}
	full.Store(true)
	if body := scrape(t, m); !strings.Contains(body, "\npostbox_store_disk_full 1\n") {
		t.Errorf("/metrics on a full disk lacks postbox_store_disk_full 1")
	}
}

func TestReplicaNamesItselfInServerInfo(t *testing.T) {
	t.Parallel()
	m := New(NewCounters(fixedPeers{}), fixedPeers{})
	m.ObserveReplica(func() string { return "a.example:2289" }, "v1.2.3", "pod-2")
	body := scrape(t, m)
	if want := `postbox_server_info{replica="pod-2",server_id="a.example:2289",version="v1.2.3"} 1`; !strings.Contains(body, want) {
		t.Errorf("/metrics lacks %s:\n%s", want, body)
	}
}
