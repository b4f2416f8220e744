package metrics

import (
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/domain"
)

type fixedPeers []PeerGauges

func (f fixedPeers) PeerGauges() []PeerGauges { return f }

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	return string(body)
}

func TestMetricsShowWhatHappened(t *testing.T) {
	t.Parallel()
	m := New(fixedPeers{
		{ServerID: "b.example:2289", Head: 10, Delivered: 4, Pending: 6, Queue: true},
		{ServerID: "c.example:2289", Head: 3, Delivered: 3},
	})
	b := domain.MustParseServerID("b.example:2289")
	m.PushAttempted(b, 3*time.Millisecond, 4, nil) // a push of four events
	m.PushAttempted(b, time.Second, 0, errors.New("refused"))
	m.PullServed(b, 5)
	m.PullMade(b, nil)
	m.Received(b, "pull", 7)
	m.AuthFailed("h.bad-token")
	m.AuthFailed("h.bad-token")
	body := scrape(t, m)
	for _, want := range []string{
		`postbox_peer_pending{peer="b.example:2289"} 6`,
		`postbox_peer_outbox_head{peer="c.example:2289"} 3`,
		`postbox_peers_in_queue_mode 1`,
		`postbox_push_failures_total{peer="b.example:2289"} 1`,
		`postbox_push_duration_seconds_count{outcome="success"} 1`,
		`postbox_delivered_events_total{peer="b.example:2289",via="pull"} 5`,
		`postbox_delivered_events_total{peer="b.example:2289",via="push"} 4`,
		`postbox_pulls_served_total{peer="b.example:2289"} 1`,
		`postbox_pulls_made_total{outcome="ok",peer="b.example:2289"} 1`,
		`postbox_inbound_events_total{peer="b.example:2289",via="pull"} 7`,
		`postbox_auth_failures_total{reason="h.bad-token"} 2`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func TestDiskFullGaugeFollowsTheStore(t *testing.T) {
	t.Parallel()
	m := New(fixedPeers{})
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
