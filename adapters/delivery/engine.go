// Package delivery is Postbox's delivery engine: it delivers this server's
// events to each peer in order and without loss (push, falling back to a
// queue the peer pulls), and receives peers' events exactly once. All state
// lives in the event store's streams (outbox-, delivery-, inbox-<peer>,
// peers); the rules are domain.Outbox and domain.Inbox, and this package
// drives them with I/O. Idle peers hold no goroutine: a push loop runs only
// while a peer has events to push.
package delivery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// PeerClient calls other servers.
type PeerClient interface {
	// Push sends events[0] as seq, and events[1:] as the events that follow
	// it; only to a receiver whose last answer announced it takes them.
	Push(ctx context.Context, peer domain.ServerID, seq uint64, events []*syncv1.Event) (peerclient.PushResult, error)
	Pull(ctx context.Context, peer domain.ServerID, ack *uint64) (peerclient.PullResult, error)
}

// continuityClient is a PeerClient that also carries the continuity
// extension (README "Interoperability notes"): the real one does; a test
// double that does not is called without it, as an older server would be.
type continuityClient interface {
	PushClaimed(ctx context.Context, peer domain.ServerID, seq uint64, events []*syncv1.Event, claim domain.PushClaim) (peerclient.PushResult, error)
	PullAccounted(ctx context.Context, peer domain.ServerID, ack *uint64, account domain.PullAccount) (peerclient.PullResult, error)
}

func (e *Engine) push(ctx context.Context, server domain.ServerID, seq uint64, events []*syncv1.Event, claim domain.PushClaim) (peerclient.PushResult, error) {
	if c, ok := e.client.(continuityClient); ok {
		return c.PushClaimed(ctx, server, seq, events, claim)
	}
	return e.client.Push(ctx, server, seq, events)
}

func (e *Engine) pull(ctx context.Context, server domain.ServerID, ack *uint64, account domain.PullAccount) (peerclient.PullResult, error) {
	if c, ok := e.client.(continuityClient); ok {
		return c.PullAccounted(ctx, server, ack, account)
	}
	return e.client.Pull(ctx, server, ack)
}

// Config tunes the engine.
type Config struct {
	// PushRetries is X: queue mode after one attempt plus X retries.
	PushRetries int
	// PushBackoff spaces the retries of one event.
	PushBackoff domain.Backoff
	// AttemptTimeout bounds one push attempt.
	AttemptTimeout time.Duration
	// ResumeProbe pushes the oldest queued event now and then while the
	// peer does not pull, so a peer that never pulls still gets its events.
	ResumeProbe  bool
	ProbeBackoff domain.Backoff
	// MaxConcurrentPushes caps pushes in flight across all peers.
	MaxConcurrentPushes int
	// PushBatchEvents and PushBatchBytes cap the events, and the request
	// bytes, of one push to a Postbox receiver that announced it takes
	// several (to others a push carries one event). 1 event: one per push.
	PushBatchEvents int
	PushBatchBytes  int
	// MaxEventBytes is the largest event Send takes, in its largest
	// encoding (binary on the wire, or the store's body); an older event
	// over it is reported as stuck when it is the oldest undelivered one.
	MaxEventBytes int
	// PullReplyMaxBytes and PullReplyMaxEvents cap one Pull reply.
	PullReplyMaxBytes  int
	PullReplyMaxEvents int
	// PullInterval: each peer is pulled this long after its last push.
	PullInterval time.Duration
	// PullTimeout bounds one pull from a peer (all its rounds).
	PullTimeout time.Duration
	// Observer is told what happens, for metrics; nil tells nobody.
	Observer Observer
}

// Observer learns what the engine does, for metrics.
type Observer interface {
	// PushAttempted: a push took took; it delivered events events if err
	// is nil.
	PushAttempted(peer domain.ServerID, took time.Duration, events int, err error)
	PullServed(peer domain.ServerID, events int)
	PullMade(peer domain.ServerID, err error)
	Received(peer domain.ServerID, via string, n int)
	// Continuity: a receiver's account contradicted the outbox; kind is
	// "epoch_started", "receiver_behind" or "receiver_ahead".
	Continuity(peer domain.ServerID, kind string)
}

type noObserver struct{}

func (noObserver) PushAttempted(domain.ServerID, time.Duration, int, error) {}
func (noObserver) PullServed(domain.ServerID, int)                          {}
func (noObserver) PullMade(domain.ServerID, error)                          {}
func (noObserver) Received(domain.ServerID, string, int)                    {}
func (noObserver) Continuity(domain.ServerID, string)                       {}

// DefaultMaxEventBytes fits every limit an event meets on its way: a push
// request (4 MiB by default at Postbox receivers), a Pull reply (3 MiB), and
// one EventStoreDB append (1 MiB by default, counting the protojson body).
const DefaultMaxEventBytes = 512 << 10

// DefaultConfig is the engine's configuration unless told otherwise.
func DefaultConfig() Config {
	return Config{
		PushRetries:         5,
		PushBackoff:         domain.Backoff{First: 100 * time.Millisecond, Max: 2 * time.Second},
		AttemptTimeout:      10 * time.Second,
		ResumeProbe:         true,
		ProbeBackoff:        domain.Backoff{First: 10 * time.Second, Max: 10 * time.Minute},
		MaxConcurrentPushes: 256,
		PushBatchEvents:     256,
		PushBatchBytes:      1 << 20,
		MaxEventBytes:       DefaultMaxEventBytes,
		PullReplyMaxBytes:   3 << 20,
		PullReplyMaxEvents:  10000,
		PullInterval:        time.Minute,
		PullTimeout:         30 * time.Second,
	}
}

// Engine delivers and receives. It is safe for concurrent use.
type Engine struct {
	cfg      Config
	store    Store
	codec    *streams.Codec
	registry *registry.Registry
	client   PeerClient
	clock    domain.Clock
	logger   *slog.Logger
	jitter   func() float64
	newEpoch func() uint64 // a random epoch, never 0
	slots    chan struct{}

	// ctx scopes background work (push loops, probes, pulls); Close ends it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	peers   map[streams.PeerID]*peer
	renames *Renames // answers NotifyNewId; set by NewRenames
}

// peer is the engine's state for one peer, rebuilt from its streams.
type peer struct {
	id streams.PeerID

	mu           sync.Mutex // guards everything below except what recvMu guards
	loaded       bool
	out          domain.Outbox
	deliveryNext uint64 // events in the delivery stream
	pushing      bool   // a push loop runs
	// batch is the largest push the peer announced in its last answer
	// (zero: one event per push). Not kept across restarts: the first push
	// after one carries a single event and learns it again.
	batch       peerclient.PushResult
	serving     bool // a Pull is being served: probes record nothing
	probeTimer  *time.Timer
	probeCancel context.CancelFunc
	probeRound  int
	journal     []journalEntry
	flushing    bool
	flushTimer  *time.Timer   // a batch of records nobody waits for is due
	pullGate    chan struct{} // set while this server pulls from the peer; closed when done
	// gateOwnedByStartup: Start set the gate before the startup pull runs.
	gateOwnedByStartup bool
	pullTimer          *time.Timer
	// given caches the outbox ID of out.Given, which each push claims.
	given *domain.EventRef
	// stuck: the oldest undelivered event looked undeliverable when it was
	// last read for a push or a Pull reply; moot once Delivered passes it.
	stuck *domain.StuckEvent

	sends outboxWriter // batches Sends into outbox appends

	recvMu   sync.Mutex // serializes inbox appends, in order
	inLoaded bool
	in       domain.Inbox
}

type journalEntry struct {
	events []domain.DeliveryEvent
	done   chan error // nil: nobody waits
}

// New returns an engine. Start must be called before use.
func New(cfg Config, store Store, codec *streams.Codec, registry *registry.Registry, client PeerClient, clock domain.Clock, logger *slog.Logger, random io.Reader) *Engine {
	if cfg.Observer == nil {
		cfg.Observer = noObserver{}
	}
	var seed [32]byte
	_, _ = io.ReadFull(random, seed[:])
	jitterSource := rand.New(rand.NewChaCha8(seed))
	var jitterMu sync.Mutex
	ctx, cancel := context.WithCancel(context.Background())
	return &Engine{
		cfg: cfg, store: store, codec: codec, registry: registry, client: client, clock: clock, logger: logger,
		jitter: func() float64 {
			jitterMu.Lock()
			defer jitterMu.Unlock()
			return jitterSource.Float64()
		},
		newEpoch: func() uint64 {
			jitterMu.Lock()
			defer jitterMu.Unlock()
			return jitterSource.Uint64() | 1
		},
		slots:  make(chan struct{}, max(cfg.MaxConcurrentPushes, 1)),
		ctx:    ctx,
		cancel: cancel,
		peers:  map[streams.PeerID]*peer{},
	}
}

// Registry returns the peer registry.
func (e *Engine) Registry() *registry.Registry { return e.registry }

// Close stops background work and waits for it.
func (e *Engine) Close() {
	e.cancel()
	e.mu.Lock()
	for _, p := range e.peers {
		p.mu.Lock()
		if p.probeTimer != nil {
			p.probeTimer.Stop()
		}
		if p.pullTimer != nil {
			p.pullTimer.Stop()
		}
		// Records still batched are written before the store closes.
		e.flushLocked(p)
		p.mu.Unlock()
	}
	e.mu.Unlock()
	e.wg.Wait()
}

// go runs fn in the background unless the engine is closing.
func (e *Engine) goBackground(fn func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ctx.Err() != nil {
		return
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		fn()
	}()
}

func (e *Engine) peer(id streams.PeerID) *peer {
	e.mu.Lock()
	defer e.mu.Unlock()
	p, ok := e.peers[id]
	if !ok {
		p = &peer{id: id}
		e.peers[id] = p
	}
	return p
}

// loadLocked rebuilds the sender state of p from its streams, if needed.
func (e *Engine) loadLocked(ctx context.Context, p *peer) error {
	if p.loaded {
		return nil
	}
	var out domain.Outbox
	last, err := e.store.ReadStreamBackward(ctx, streams.Outbox(p.id), 1)
	switch {
	case errors.Is(err, eventstore.ErrStreamNotFound):
	case err != nil:
		return fmt.Errorf("read outbox head of %s: %w", p.id, err)
	case len(last) == 1:
		out.Stored(last[0].Revision)
	}
	next, err := readAll(ctx, e.store, streams.Delivery(p.id), func(r eventstore.RecordedEvent) error {
		ev, err := streams.DecodeDelivery(r)
		if err != nil {
			return err
		}
		out.Apply(ev)
		return nil
	})
	if err != nil {
		return err
	}
	// The outbox may have grown since the head was read (an enqueue
	// racing this load); enqueues raise Head themselves, so keep the max.
	out.Head = max(out.Head, p.out.Head)
	p.out, p.deliveryNext, p.loaded = out, next, true
	return nil
}

// Records nobody waits for (pushes done) are written in batches: when
// recordBatch of them are waiting, when the push loop goes idle, or
// recordDelay after the first, whichever is first. Losing them in a crash
// costs only pushes again, which the receiver drops by sequence number.
const (
	recordBatch = 256
	recordDelay = 20 * time.Millisecond
)

// recordLocked applies events to p's state at once and appends them to its
// delivery stream in order, behind any records still being written. If
// wait, the append starts now and the returned channel tells when it is
// durable. The caller holds p.mu.
func (e *Engine) recordLocked(p *peer, wait bool, events ...domain.DeliveryEvent) chan error {
	if len(events) == 0 {
		return nil
	}
	for _, ev := range events {
		p.out.Apply(ev)
	}
	var done chan error
	if wait {
		done = make(chan error, 1)
	}
	p.journal = append(p.journal, journalEntry{events: events, done: done})
	switch {
	case wait || len(p.journal) >= recordBatch:
		e.flushLocked(p)
	case p.flushTimer == nil && !p.flushing:
		var t *time.Timer
		t = time.AfterFunc(recordDelay, func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			// Close, or a flush since, took this batch already.
			if p.flushTimer == t {
				e.flushLocked(p)
			}
		})
		p.flushTimer = t
	}
	return done
}

// flushLocked starts writing p's journal now, unless a flush already runs
// (it takes what is waiting when its append ends).
func (e *Engine) flushLocked(p *peer) {
	if p.flushTimer != nil {
		p.flushTimer.Stop()
		p.flushTimer = nil
	}
	if p.flushing || len(p.journal) == 0 {
		return
	}
	p.flushing = true
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		e.flush(p)
	}()
}

// flush writes p's journal, everything waiting in one append: while one
// append syncs, later records gather for the next (group commit per peer).
func (e *Engine) flush(p *peer) {
	for {
		p.mu.Lock()
		batch := p.journal
		p.journal = nil
		if len(batch) == 0 {
			p.flushing = false
			p.mu.Unlock()
			return
		}
		expected := expectAfter(p.deliveryNext)
		p.mu.Unlock()

		var all []domain.DeliveryEvent
		for _, j := range batch {
			all = append(all, j.events...)
		}
		err := e.appendDelivery(p, expected, all)

		p.mu.Lock()
		if err == nil {
			p.deliveryNext += uint64(len(all))
		} else {
			// The in-memory state ran ahead of the stream: rebuild it from
			// the stream before the next decision. Records queued behind
			// this batch were decided on that state, so they go too.
			e.logger.Error("recording delivery failed; rereading the streams", "peer", p.id, "err", err)
			batch = append(batch, p.journal...)
			p.journal, p.loaded = nil, false
		}
		p.mu.Unlock()
		for _, j := range batch {
			if j.done != nil {
				j.done <- err
			}
		}
	}
}

func (e *Engine) appendDelivery(p *peer, expected eventstore.ExpectedRevision, events []domain.DeliveryEvent) error {
	data, err := e.codec.EncodeDelivery(events...)
	if err != nil {
		return err
	}
	// Records outlive the request that caused them: once decided, they are
	// written even if that caller went away.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(e.ctx), 30*time.Second)
	defer cancel()
	_, err = e.store.Append(ctx, streams.Delivery(p.id), expected, data...)
	if err != nil {
		return fmt.Errorf("append to %s: %w", streams.Delivery(p.id), err)
	}
	return nil
}

func waitRecorded(ctx context.Context, done chan error) error {
	if done == nil {
		return nil
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// PeerCursor is one peer's sender-side state as the engine holds it now.
type PeerCursor struct {
	ServerID domain.ServerID
	Outbox   domain.Outbox
}

// Cursors returns the state of every peer the engine has loaded (all
// registered peers after Start), without waiting for anything.
func (e *Engine) Cursors() []PeerCursor {
	e.mu.Lock()
	peers := make([]*peer, 0, len(e.peers))
	for _, p := range e.peers {
		peers = append(peers, p)
	}
	e.mu.Unlock()
	out := make([]PeerCursor, 0, len(peers))
	for _, p := range peers {
		server, ok := e.registry.ServerID(p.id)
		if !ok {
			continue
		}
		p.mu.Lock()
		out = append(out, PeerCursor{ServerID: server, Outbox: p.out})
		p.mu.Unlock()
	}
	return out
}
