// Package metrics exposes Postbox's Prometheus metrics on the admin
// listener's /metrics. The registry is Postbox's own (no global one); the
// per-peer gauges are read from the engine at scrape time, the rest
// are counted by the engine and the federation handlers as things happen.
//
// Every per-peer series is labelled peer="<stable peer ID>", the ID that
// names the peer's streams and that a rename keeps, so that a rename does
// not split a series; postbox_peer_info maps it to the peer's current
// server ID, and postbox_server_info names this server.
package metrics

import (
	"math"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/harmony-postbox/postbox/domain"
)

// Counters counts what happens, as it happens: it implements
// delivery.Observer and federation.AuthObserver. It needs nothing of the
// engine, which reports to it, so it is built before the engine.
type Counters struct {
	registry     *prometheus.Registry
	pushLatency  *prometheus.HistogramVec
	pushFailures *prometheus.CounterVec
	pushBusy     *prometheus.CounterVec
	pullsServed  *prometheus.CounterVec
	pullsMade    *prometheus.CounterVec
	inbound      *prometheus.CounterVec
	tooLarge     *prometheus.CounterVec
	delivered    *prometheus.CounterVec
	authFailures *prometheus.CounterVec
	continuity   *prometheus.CounterVec
	ids          PeerIDs
}

// Metrics is every metric: the counters, and the per-peer gauges read
// from the engine at scrape time. It is built after the engine.
type Metrics struct {
	*Counters
}

// PeerIDs finds a peer's stable peer ID by its server ID (current or
// former).
type PeerIDs interface {
	PeerIDOf(server domain.ServerID) (string, bool)
}

// peer is the label value for a peer: its stable ID, or, for a server
// not registered as a peer (yet), its server ID.
func (m *Counters) peer(server domain.ServerID) string {
	if id, ok := m.ids.PeerIDOf(server); ok {
		return id
	}
	return server.String()
}

// PeerSource reads every peer's cursors as the engine holds them now,
// without waiting.
type PeerSource interface {
	Cursors() []domain.PeerCursor
}

// NewCounters registers the counters on a fresh registry.
func NewCounters(ids PeerIDs) *Counters {
	m := &Counters{
		ids:      ids,
		registry: prometheus.NewRegistry(),
		pushLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "postbox_push_duration_seconds",
			Help:    "Time of one push attempt to a peer, by outcome.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"outcome"}),
		pushFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postbox_push_failures_total", Help: "Failed push attempts, by peer; a peer's busy answers are counted apart.",
		}, []string{"peer"}),
		pushBusy: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postbox_push_busy_total", Help: "Push attempts the peer answered busy (it asked to be tried later), by peer.",
		}, []string{"peer"}),
		pullsServed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postbox_pulls_served_total", Help: "Pull requests served to peers that carried events, by peer.",
		}, []string{"peer"}),
		pullsMade: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postbox_pulls_made_total", Help: "Pulls this server made from peers, by peer and outcome.",
		}, []string{"peer", "outcome"}),
		inbound: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postbox_inbound_events_total", Help: "Events received and applied, by peer and how they came.",
		}, []string{"peer", "via"}),
		tooLarge: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postbox_inbound_too_large_total",
			Help: "Received events too large for the event store, stored only as a marker of their size and sequence number, by peer.",
		}, []string{"peer"}),
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postbox_delivered_events_total", Help: "Events handed to peers by push or pull, by peer.",
		}, []string{"peer", "via"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postbox_auth_failures_total", Help: "Refused federation requests, by reason (the error identifier).",
		}, []string{"reason"}),
		continuity: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postbox_continuity_breaks_total",
			Help: "Peers' accounts that contradicted an outbox, by kind: epoch_started (this server's store went back), receiver_behind (the peer's did), receiver_ahead (a lost reply or record).",
		}, []string{"peer", "kind"}),
	}
	m.registry.MustRegister(m.pushLatency, m.pushFailures, m.pushBusy, m.pullsServed, m.pullsMade, m.inbound, m.tooLarge, m.delivered, m.authFailures, m.continuity,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// New is every metric: the counters, and the per-peer gauges read from
// peers at scrape time.
func New(counters *Counters, peers PeerSource) *Metrics {
	counters.registry.MustRegister(&peerCollector{source: peers})
	return &Metrics{Counters: counters}
}

// ObserveDiskFull exports full, read at scrape time, as the gauge
// postbox_store_disk_full: 1 while the event store refuses writes for want
// of disk space.
func (m *Metrics) ObserveDiskFull(full func() bool) {
	m.registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "postbox_store_disk_full",
		Help: "1 while the event store refuses writes because its disk is full, else 0.",
	}, func() float64 {
		if full() {
			return 1
		}
		return 0
	}))
}

// ObserveIdleConsumers exports idle, read at scrape time, as the gauge
// postbox_consumers_idle: durable consumers that acknowledged nothing for
// longer than --consumer-idle-after (NaN when they cannot be read).
func (m *Metrics) ObserveIdleConsumers(idle func() (int, error)) {
	m.registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "postbox_consumers_idle",
		Help: "Durable consumers that acknowledged nothing for longer than --consumer-idle-after.",
	}, func() float64 {
		n, err := idle()
		if err != nil {
			return math.NaN()
		}
		return float64(n)
	}))
}

// ObserveServer exports postbox_server_info{server_id, version} 1, the
// server ID read at scrape time (a rename changes it).
func (m *Metrics) ObserveServer(serverID func() string, version string) {
	m.registry.MustRegister(&serverCollector{serverID: serverID, version: version})
}

// ObserveReplica is ObserveServer for one of several replicas of the
// server: postbox_server_info{server_id, version, replica} 1, so that each
// replica's series stay apart.
func (m *Metrics) ObserveReplica(serverID func() string, version, replica string) {
	m.registry.MustRegister(&serverCollector{serverID: serverID, version: version, replica: replica})
}

var (
	serverDesc        = prometheus.NewDesc("postbox_server_info", "This server: its current server ID and its version.", []string{"server_id", "version"}, nil)
	serverReplicaDesc = prometheus.NewDesc("postbox_server_info", "This server: its current server ID, its version and this replica's name.", []string{"server_id", "version", "replica"}, nil)
)

type serverCollector struct {
	serverID func() string
	version  string
	replica  string // "": a single process
}

func (c *serverCollector) Describe(ch chan<- *prometheus.Desc) {
	if c.replica != "" {
		ch <- serverReplicaDesc
		return
	}
	ch <- serverDesc
}

func (c *serverCollector) Collect(ch chan<- prometheus.Metric) {
	if c.replica != "" {
		ch <- prometheus.MustNewConstMetric(serverReplicaDesc, prometheus.GaugeValue, 1, c.serverID(), c.version, c.replica)
		return
	}
	ch <- prometheus.MustNewConstMetric(serverDesc, prometheus.GaugeValue, 1, c.serverID(), c.version)
}

// Handler serves /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{Registry: m.registry})
}

// PushAttempted counts one push attempt, which delivered events events
// when it succeeded. A busy answer is counted apart from failures: a peer
// shedding load is working as meant, and an alert on failures should not
// fire for it.
func (m *Counters) PushAttempted(peer domain.ServerID, took time.Duration, events int, err error) {
	if _, busy := domain.PeerBusy(err); busy {
		m.pushLatency.WithLabelValues("busy").Observe(took.Seconds())
		m.pushBusy.WithLabelValues(m.peer(peer)).Inc()
		return
	}
	if err != nil {
		m.pushLatency.WithLabelValues("failure").Observe(took.Seconds())
		m.pushFailures.WithLabelValues(m.peer(peer)).Inc()
		return
	}
	m.pushLatency.WithLabelValues("success").Observe(took.Seconds())
	m.delivered.WithLabelValues(m.peer(peer), "push").Add(float64(events))
}

// PullServed counts a Pull reply that carried events.
func (m *Counters) PullServed(peer domain.ServerID, events int) {
	m.pullsServed.WithLabelValues(m.peer(peer)).Inc()
	m.delivered.WithLabelValues(m.peer(peer), "pull").Add(float64(events))
}

// PullMade counts one pull from a peer.
func (m *Counters) PullMade(peer domain.ServerID, err error) {
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	m.pullsMade.WithLabelValues(m.peer(peer), outcome).Inc()
}

// Received counts events applied from a peer.
func (m *Counters) Received(peer domain.ServerID, via string, n int) {
	m.inbound.WithLabelValues(m.peer(peer), via).Add(float64(n))
}

// Continuity counts a peer's account that contradicted its outbox.
func (m *Counters) Continuity(peer domain.ServerID, kind string) {
	m.continuity.WithLabelValues(m.peer(peer), kind).Inc()
}

// ReceivedTooLarge counts received events stored only as a marker, too
// large for the event store.
func (m *Counters) ReceivedTooLarge(peer domain.ServerID, n int) {
	m.tooLarge.WithLabelValues(m.peer(peer)).Add(float64(n))
}

// AuthFailed counts a refused federation request.
func (m *Counters) AuthFailed(identifier string) {
	m.authFailures.WithLabelValues(identifier).Inc()
}

var (
	headDesc      = prometheus.NewDesc("postbox_peer_outbox_head", "Events in the peer's outbox.", []string{"peer"}, nil)
	deliveredDesc = prometheus.NewDesc("postbox_peer_delivered", "Events delivered to the peer.", []string{"peer"}, nil)
	skippedDesc   = prometheus.NewDesc("postbox_peer_skipped", "Events an operator skipped (postbox skip): never delivered.", []string{"peer"}, nil)
	pendingDesc   = prometheus.NewDesc("postbox_peer_pending", "Events not yet delivered to the peer.", []string{"peer"}, nil)
	retainedDesc  = prometheus.NewDesc("postbox_peer_outbox_retained", "Events still stored in the peer's outbox: --retain-delivered removed the delivered ones before them.", []string{"peer"}, nil)
	queueDesc     = prometheus.NewDesc("postbox_peers_in_queue_mode", "Peers whose events wait for them to pull.", nil, nil)
	infoDesc      = prometheus.NewDesc("postbox_peer_info", "A peer's current server ID, by its stable peer ID (the peer label of every per-peer series).", []string{"peer", "server_id"}, nil)
)

// peerCollector reads the per-peer gauges at scrape time.
type peerCollector struct {
	source PeerSource
}

func (c *peerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- headDesc
	ch <- deliveredDesc
	ch <- skippedDesc
	ch <- pendingDesc
	ch <- retainedDesc
	ch <- queueDesc
	ch <- infoDesc
}

func (c *peerCollector) Collect(ch chan<- prometheus.Metric) {
	queued := 0
	for _, p := range c.source.Cursors() {
		out := p.Outbox
		ch <- prometheus.MustNewConstMetric(infoDesc, prometheus.GaugeValue, 1, p.PeerID, p.ServerID.String())
		ch <- prometheus.MustNewConstMetric(headDesc, prometheus.GaugeValue, float64(out.Head), p.PeerID)
		ch <- prometheus.MustNewConstMetric(deliveredDesc, prometheus.GaugeValue, float64(out.Delivered-out.Skipped), p.PeerID)
		ch <- prometheus.MustNewConstMetric(skippedDesc, prometheus.GaugeValue, float64(out.Skipped), p.PeerID)
		ch <- prometheus.MustNewConstMetric(pendingDesc, prometheus.GaugeValue, float64(out.Pending()), p.PeerID)
		ch <- prometheus.MustNewConstMetric(retainedDesc, prometheus.GaugeValue, float64(out.Head-min(p.RetainedFrom, out.Head)), p.PeerID)
		if out.Mode == domain.ModeQueue {
			queued++
		}
	}
	ch <- prometheus.MustNewConstMetric(queueDesc, prometheus.GaugeValue, float64(queued))
}
