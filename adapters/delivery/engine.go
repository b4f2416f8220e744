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
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// PeerClient calls other servers.
type PeerClient interface {
	// Push sends events[0] as seq, and events[1:] as the events that follow
	// it; only to a receiver whose last answer announced it takes them.
	Push(ctx context.Context, peer domain.ServerID, seq uint64, events []*syncv1.Event) (domain.PushResult, error)
	Pull(ctx context.Context, peer domain.ServerID, ack *uint64) (PullBatch, error)
}

// PullBatch is a Pull reply as the engine serves and receives it.
type PullBatch = domain.PullBatch[*syncv1.Event]

// continuityClient is a PeerClient that also carries the continuity
// extension (README "Interoperability notes"): the real one does; a test
// double that does not is called without it, as an older server would be.
type continuityClient interface {
	PushClaimed(ctx context.Context, peer domain.ServerID, seq uint64, events []*syncv1.Event, claim domain.PushClaim) (domain.PushResult, error)
	PullAccounted(ctx context.Context, peer domain.ServerID, ack *uint64, account domain.PullAccount) (PullBatch, error)
}

func (e *Engine) push(ctx context.Context, server domain.ServerID, seq uint64, events []*syncv1.Event, claim domain.PushClaim) (domain.PushResult, error) {
	if c, ok := e.client.(continuityClient); ok {
		return c.PushClaimed(ctx, server, seq, events, claim)
	}
	return e.client.Push(ctx, server, seq, events)
}

func (e *Engine) pull(ctx context.Context, server domain.ServerID, ack *uint64, account domain.PullAccount) (PullBatch, error) {
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
	// IdempotencyWindow is how long a send's idempotency key is remembered
	// (0: DefaultIdempotencyWindow).
	IdempotencyWindow time.Duration
	// Observer is told what happens, for metrics; nil tells nobody.
	Observer Observer
	// RetainDelivered: events delivered longer ago than this are removed
	// from the outbox (retention.go); 0 keeps everything.
	RetainDelivered time.Duration
	// AuthWindow is how far from its clock a peer takes a token's time
	// (--auth-window, assumed the same at peers): a rename waits twice it
	// for pushes signed with an old ID to expire (rename.go).
	AuthWindow time.Duration
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
		IdempotencyWindow:   DefaultIdempotencyWindow,
		AuthWindow:          domain.DefaultAuthWindow,
	}
}

// Engine delivers and receives. It is safe for concurrent use.
type Engine struct {
	cfg        Config
	store      Store
	codec      *streams.Codec
	registry   *registry.Registry
	client     PeerClient
	clock      domain.Timers // every wait and timer of the engine runs on it
	logger     *slog.Logger
	jitterSeed uint64
	newEpoch   func() uint64 // a random epoch, never 0
	slots      chan struct{}
	keys       *sendKeys
	// aheadSlots holds one token per Pull reply read ahead (pullahead.go).
	aheadSlots chan struct{}

	// Background work (push loops, probes, pulls, notices) runs under
	// Run's context: whatever starts it (a Send, a timer, a Pull served)
	// hands it to Run through work.
	wg      sync.WaitGroup
	wake    chan struct{} // work is waiting; capacity 1
	started chan struct{} // closed once Run has rebuilt every peer's state
	pulled  chan struct{} // closed once the startup pulls are done
	stopped chan struct{} // closed when Run ends

	mu       sync.Mutex
	work     []func(context.Context) // waiting for Run to start it
	running  bool                    // Run was called
	stopping bool                    // Run is ending: no new work
	peers    map[streams.PeerID]*peer
	renames  *Renames // answers NotifyNewId; set by NewRenames
	owners   Owners   // nil: a single process; set by UseOwners before Run
	watch    watchTuning

	made        time.Time     // when New ran: no push of this process is older
	random      io.Reader     // for the database identity, if the engine writes it
	dbID        string        // the store's database identity, once read
	recordsRead atomic.Uint64 // delivery records folded by loads
}

// peer is the engine's state for one peer, rebuilt from its streams.
type peer struct {
	id streams.PeerID

	mu sync.Mutex // guards everything below except what recvMu guards
	// owned: this replica holds the peer's term and runs its outbound
	// work; acquiring: it is claiming it (replica mode only, see Owners).
	owned, acquiring bool
	loaded           bool
	out              domain.Outbox
	deliveryNext     uint64 // events in the delivery stream
	pushing          bool   // a push loop runs
	// batch is the largest push the peer announced in its last answer
	// (zero: one event per push). Not kept across restarts: the first push
	// after one carries a single event and learns it again.
	batch       domain.PushResult
	serving     bool // a Pull is being served: probes record nothing
	probeTimer  domain.Timer
	probeCancel context.CancelFunc
	probeRound  int
	journal     []journalEntry
	flushing    bool
	inFlight    uint64        // records of the append a flush has under way
	flushTimer  domain.Timer  // a batch of records nobody waits for is due
	pullGate    chan struct{} // set while this server pulls from the peer; closed when done
	// gateOwnedByStartup: Run set the gate before the startup pull runs.
	gateOwnedByStartup bool
	pullTimer          domain.Timer
	pullFailures       int // pulls failed in a row, for pullAgain's backoff
	// given caches the outbox ID of out.Given, which each push claims.
	given *domain.EventRef
	// stuck: the oldest undelivered event looked undeliverable when it was
	// last read for a push or a Pull reply; moot once Delivered passes it.
	stuck *domain.StuckEvent
	// ahead: the next Pull reply, read while the peer appends the last.
	ahead *pullAhead

	sends outboxWriter // batches Sends into outbox appends
	// fresh: what the outbox writer appended last, for the push loop.
	// Guarded by mu.
	fresh freshOutbox

	recvMu   sync.Mutex // serializes inbox appends, in order
	inLoaded bool
	in       domain.Inbox

	// durable is the fold of the delivery records written (out runs
	// ahead of it by the journal): what a snapshot at deliveryNext holds.
	// Guarded by mu.
	durable domain.Outbox
	// snapshotAt: the delivery snapshot last read or attempted covers the
	// records before it; snapshotWritten: the last one known stored.
	snapshotAt, snapshotWritten uint64
	// outboxCut and deliveryCut: retention removed the records before them.
	outboxCut, deliveryCut uint64

	// pushHeld is closed when a rename notice stops holding the peer's
	// pushes (nil: none holds them); pushesOut counts pushes under way,
	// lastPushEnd is when the last one ended, and pushesIdle is closed
	// when pushesOut drops to zero (renamehold.go).
	pushHeld    chan struct{}
	pushesOut   int
	lastPushEnd time.Time
	pushesIdle  chan struct{}
}

type journalEntry struct {
	events []domain.DeliveryEvent
	done   chan error // nil: nobody waits
}

// New returns an engine; Run runs it. Calls made before Run has rebuilt
// the peers' state wait for it.
func New(cfg Config, store Store, codec *streams.Codec, registry *registry.Registry, client PeerClient, clock domain.Timers, logger *slog.Logger, random io.Reader) *Engine {
	if cfg.Observer == nil {
		cfg.Observer = noObserver{}
	}
	var seed [32]byte
	_, _ = io.ReadFull(random, seed[:])
	epochSource := rand.New(rand.NewChaCha8(seed))
	var epochMu sync.Mutex
	return &Engine{
		cfg: cfg, store: store, codec: codec, registry: registry, client: client, clock: clock, logger: logger,
		random: random, made: clock.Now(),
		jitterSeed: binary.LittleEndian.Uint64(seed[:]),
		newEpoch: func() uint64 {
			epochMu.Lock()
			defer epochMu.Unlock()
			return epochSource.Uint64() | 1
		},
		slots:      make(chan struct{}, max(cfg.MaxConcurrentPushes, 1)),
		aheadSlots: make(chan struct{}, maxPullsAhead),
		wake:       make(chan struct{}, 1),
		started:    make(chan struct{}),
		pulled:     make(chan struct{}),
		stopped:    make(chan struct{}),
		peers:      map[streams.PeerID]*peer{},
		keys:       newSendKeys(cfg.IdempotencyWindow),
	}
}

// Registry returns the peer registry.
func (e *Engine) Registry() *registry.Registry { return e.registry }

// Run rebuilds every peer's state from the streams and restarts what was
// under way (push loops for peers with undelivered events, probes for
// peers in queue mode, notices of this server's new ID), then pulls every
// peer federated with before, and does the engine's background work until
// ctx ends. Then it stops that work, writes the records still batched, and
// returns. Until a peer has been pulled, its pushes wait: start Run once
// the listeners are bound. Run is called once.
func (e *Engine) Run(ctx context.Context) error {
	e.mu.Lock()
	if e.running {
		e.mu.Unlock()
		return errors.New("the delivery engine runs already")
	}
	e.running = true
	e.mu.Unlock()
	defer e.shutdown()
	if err := e.restore(ctx); err != nil {
		return err
	}
	close(e.started)
	if renames := e.renamesOf(); renames != nil {
		renames.Start()
	}
	if e.cfg.RetainDelivered > 0 {
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			e.retainLoop(ctx)
		}()
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		e.rebuildKeys(ctx)
	}()
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		e.startupPulls(ctx)
		close(e.pulled)
	}()
	if e.owners != nil {
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			e.watchOwners(ctx)
		}()
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-e.wake:
			e.mu.Lock()
			work := e.work
			e.work = nil
			e.mu.Unlock()
			for _, fn := range work {
				e.wg.Add(1)
				go func() {
					defer e.wg.Done()
					fn(ctx)
				}()
			}
		}
	}
}

// Ready is closed once Run's startup pulls are done.
func (e *Engine) Ready() <-chan struct{} { return e.pulled }

// shutdown stops background work and waits for it.
func (e *Engine) shutdown() {
	e.mu.Lock()
	e.stopping, e.work = true, nil
	close(e.stopped)
	peers := make([]*peer, 0, len(e.peers))
	for _, p := range e.peers {
		peers = append(peers, p)
	}
	e.mu.Unlock()
	for _, p := range peers {
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
	e.wg.Wait()
}

// errStopped answers calls once Run has ended (or failed to start).
var errStopped = fmt.Errorf("%w: the delivery engine has stopped", domain.ErrUnavailable)

// awaitStart waits until Run has rebuilt the peers' state.
func (e *Engine) awaitStart(ctx context.Context) error {
	select {
	case <-e.stopped:
		return errStopped
	default:
	}
	select {
	case <-e.started:
		return nil
	case <-e.stopped:
		return errStopped
	case <-ctx.Done():
		return fmt.Errorf("waiting for the delivery engine to start: %w", ctx.Err())
	}
}

// isStopping reports whether Run is ending (or has ended).
func (e *Engine) isStopping() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.stopping
}

// untilStopped is ctx without its cancellation or deadline, ended when the
// engine stops instead: for work that must outlive its caller.
func (e *Engine) untilStopped(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	go func() {
		select {
		case <-e.stopped:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// goBackground hands fn to Run, which runs it under its context, unless
// the engine is stopping.
func (e *Engine) goBackground(fn func(ctx context.Context)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stopping {
		return
	}
	e.work = append(e.work, fn)
	select {
	case e.wake <- struct{}{}:
	default: // Run has been woken already
	}
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
	head := out.Head
	out, next, read, err := e.loadDelivery(ctx, p)
	if err != nil {
		return err
	}
	e.recordsRead.Add(read)
	out.Head = max(out.Head, head)
	// The outbox may have grown since the head was read (an enqueue
	// racing this load); enqueues raise Head themselves, so keep the max.
	out.Head = max(out.Head, p.out.Head)
	p.out, p.durable, p.deliveryNext, p.loaded = out, out, next, true
	p.snapshotWritten = p.snapshotAt
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
		var t domain.Timer
		t = e.clock.AfterFunc(recordDelay, func() {
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
		var all []domain.DeliveryEvent
		for _, j := range batch {
			all = append(all, j.events...)
		}
		p.inFlight = uint64(len(all))
		p.mu.Unlock()

		err := e.appendDelivery(p, expected, all)

		p.mu.Lock()
		p.inFlight = 0
		if err == nil {
			p.deliveryNext += uint64(len(all))
			for _, ev := range all {
				p.durable.Apply(ev)
			}
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
		if err == nil {
			e.snapshotAfterFlush(p)
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
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
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

// sleep waits d on the engine's clock, or until ctx ends.
func (e *Engine) sleep(ctx context.Context, d time.Duration) error {
	due, stop := e.after(d)
	defer stop()
	select {
	case <-due:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// after returns a channel closed once d has passed on the engine's
// clock, and a function that stops the timer.
func (e *Engine) after(d time.Duration) (<-chan struct{}, func()) {
	due := make(chan struct{})
	t := e.clock.AfterFunc(d, func() { close(due) })
	return due, func() { t.Stop() }
}

// Cursors returns the state of every peer the engine has loaded (all
// registered peers once Run has started), without waiting for anything.
func (e *Engine) Cursors() []domain.PeerCursor {
	e.mu.Lock()
	peers := make([]*peer, 0, len(e.peers))
	for _, p := range e.peers {
		peers = append(peers, p)
	}
	e.mu.Unlock()
	out := make([]domain.PeerCursor, 0, len(peers))
	for _, p := range peers {
		server, ok := e.registry.ServerID(p.id)
		if !ok {
			continue
		}
		p.mu.Lock()
		out = append(out, domain.PeerCursor{PeerID: string(p.id), ServerID: server, Outbox: p.out, RetainedFrom: p.outboxCut})
		p.mu.Unlock()
	}
	return out
}
