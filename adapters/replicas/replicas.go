// Package replicas lets several replicas of one Postbox server share one
// event store: each appends a heartbeat to the hour's replicas stream every
// interval (one record per replica, however many peers), reads the others',
// and so knows the live replicas and which of them runs each peer's
// delivery (domain.PeerOwner). A peer's term is recorded in its delivery
// stream only when it changes hands (Terms).
//
// Cost: a heartbeat is one append and one or two reads (two near the turn
// of an hour) per interval per replica; the store keeps about two hours of
// heartbeats, since every replica deletes the streams of hours past.
package replicas

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// Store is what replicas need of the event store.
type Store interface {
	Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error)
	ReadStream(ctx context.Context, stream string, from uint64, limit int) ([]eventstore.RecordedEvent, error)
	ReadStreamBackward(ctx context.Context, stream string, limit int) ([]eventstore.RecordedEvent, error)
	Delete(ctx context.Context, stream string, expected eventstore.ExpectedRevision) error
}

// Errors of Start, matched with errors.Is.
var (
	// ErrIdentityMismatch: a live replica serves another server ID or
	// signs with another key. Replicas of one server must share both, or
	// peers would see two servers take turns under one name.
	ErrIdentityMismatch = errors.New("replica identity differs from the live replicas'")
	// ErrNameInUse: a live replica of another process has this name.
	ErrNameInUse = errors.New("replica name in use by a live replica")
)

// DefaultLease is how long a replica counts as live after its last
// heartbeat, unless configured: its peers move to the others that long after
// it dies (at once when it stops cleanly).
const DefaultLease = 10 * time.Second

// readPage is how many heartbeats one read takes.
const readPage = 256

// Config configures a replica.
type Config struct {
	// Name is this replica's name (see CheckName and DefaultName).
	Name string
	// ServerID and PublicKey are this server's; every live replica must
	// have the same.
	ServerID  string
	PublicKey ed25519.PublicKey
	// Identity, if set, is this server's identity, whose current ID
	// replaces ServerID once the server is renamed (postbox rename at
	// any replica): heartbeats carry the current ID, and a live replica
	// that heartbeats a former one still in its grace period is the same
	// server (it has not taken the rename up yet, or started before it).
	Identity Identity
	// Lease is how long after a heartbeat a replica counts as live;
	// DefaultLease if zero.
	Lease time.Duration
	// Interval is how often this replica writes a heartbeat; a quarter of
	// the lease if zero, so that a heartbeat or two may fail or be late
	// without the replica's peers moving.
	Interval time.Duration
}

// Identity is what a replica needs of this server's identity
// (domain.Identity).
type Identity interface {
	Current() domain.ServerID
	IsAudience(id domain.ServerID, now time.Time) bool
}

// Replicas is this replica's view of the live replicas, kept current by
// Beat, Refresh or Run. It is safe for concurrent use.
type Replicas struct {
	cfg         Config
	store       Store
	codec       *streams.Codec
	clock       domain.Clock
	log         *slog.Logger
	instance    []byte
	fingerprint []byte

	// io, a one-slot semaphore, orders reads of the heartbeat streams
	// (lockIO); mu guards the state, and is never held across a store
	// call, so View stays cheap.
	io      chan struct{}
	cursors map[int64]uint64 // by period: the next revision of its stream to read
	swept   int64            // the streams of periods up to this one are deleted

	mu       sync.Mutex
	set      domain.ReplicaSet
	records  map[string]streams.Heartbeat // each replica's latest, whole
	view     View
	changed  chan struct{}
	reported map[string]bool // mismatched replicas already logged
	started  bool            // Start is past its checks
}

// View is a snapshot of the live replicas. It is immutable.
type View struct {
	// Self is this replica's name.
	Self string
	// Live holds the live replicas' names, sorted; it holds Self only
	// while this replica's own heartbeat is live, so a replica cut off
	// from the store gives up its peers as the others take them.
	Live []string
	// Generation counts the changes of Live.
	Generation uint64
}

// Owner returns the replica that runs peer's delivery; ok is false when no
// replica is live.
func (v View) Owner(peer streams.PeerID) (string, bool) {
	return domain.PeerOwner(string(peer), v.Live)
}

// Owns reports whether this replica runs peer's delivery.
func (v View) Owns(peer streams.PeerID) bool {
	o, ok := v.Owner(peer)
	return ok && o == v.Self
}

// Fingerprint returns what heartbeats carry of a public key: its SHA-256.
func Fingerprint(key ed25519.PublicKey) []byte {
	h := sha256.Sum256(key)
	return h[:]
}

// New returns a replica that has not started. random supplies its
// instance ID.
func New(cfg Config, store Store, codec *streams.Codec, clock domain.Clock, random io.Reader, logger *slog.Logger) (*Replicas, error) {
	if err := CheckName(cfg.Name); err != nil {
		return nil, err
	}
	if len(cfg.PublicKey) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("replica %s: public key of %d bytes, want %d", cfg.Name, len(cfg.PublicKey), ed25519.PublicKeySize)
	}
	if cfg.Lease <= 0 {
		cfg.Lease = DefaultLease
	}
	if cfg.Interval <= 0 {
		cfg.Interval = cfg.Lease / 4
	}
	if cfg.Interval >= cfg.Lease {
		return nil, fmt.Errorf("replica %s: heartbeat interval %s is not shorter than the lease %s", cfg.Name, cfg.Interval, cfg.Lease)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	instance := make([]byte, 8)
	if _, err := io.ReadFull(random, instance); err != nil {
		return nil, fmt.Errorf("replica %s: instance ID: %w", cfg.Name, err)
	}
	return &Replicas{
		cfg: cfg, store: store, codec: codec, clock: clock, log: logger.With("replica", cfg.Name),
		instance: instance, fingerprint: Fingerprint(cfg.PublicKey),
		records: make(map[string]streams.Heartbeat), reported: make(map[string]bool), cursors: make(map[int64]uint64),
		view: View{Self: cfg.Name}, changed: make(chan struct{}), io: make(chan struct{}, 1),
	}, nil
}

// Name returns this replica's name.
func (r *Replicas) Name() string { return r.cfg.Name }

// Lease returns the lease this replica writes in its heartbeats.
func (r *Replicas) Lease() time.Duration { return r.cfg.Lease }

// Start reads the heartbeats still live, refuses to run beside a live
// replica of another server ID or key, and writes this replica's first
// heartbeat. A heartbeat under this name from another process (this
// replica's name given again, or the process it replaces, killed just
// before) is waited out: if it is not renewed within its lease, Start goes
// on, else it refuses. after waits (time.After, or a virtual clock's).
func (r *Replicas) Start(ctx context.Context, after func(time.Duration) <-chan time.Time) error {
	if err := r.readRecent(ctx); err != nil {
		return err
	}
	var waited *streams.Heartbeat
	for {
		now := r.clock.Now()
		holder, err := r.checkPeers(now)
		if err != nil {
			return err
		}
		if holder == nil {
			break
		}
		if waited != nil && holder.At.After(waited.At) {
			return fmt.Errorf("replica %s: another process keeps writing heartbeats under this name (the last at %s): %w; "+
				"give each replica its own --replica name",
				r.cfg.Name, holder.At.UTC().Format(time.RFC3339Nano), ErrNameInUse)
		}
		waited = holder
		r.log.Warn("replicas: another process wrote a heartbeat under this name; waiting for its lease to run out",
			"its_last", holder.At, "until", holder.Expiry())
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-after(holder.Expiry().Sub(now) + time.Millisecond):
		}
		if err := r.Refresh(ctx); err != nil {
			return err
		}
	}
	r.mu.Lock()
	r.started = true
	r.mu.Unlock()
	return r.Beat(ctx)
}

// clockSkew is how far replicas' clocks may disagree: a replica reads the
// heartbeat streams of the hours that far ahead of its clock, and of the
// lease and that far behind.
const clockSkew = time.Minute

// periods returns the heartbeat streams' periods to read at now.
func (r *Replicas) periods(now time.Time) (first, last int64) {
	return streams.ReplicasPeriodOf(now.Add(-r.cfg.Lease - clockSkew)), streams.ReplicasPeriodOf(now.Add(clockSkew))
}

// readRecent reads the tails of the heartbeat streams back to where no
// heartbeat can still be live, to follow them from their heads.
func (r *Replicas) readRecent(ctx context.Context) error {
	now := r.clock.Now()
	if err := r.lockIO(ctx); err != nil {
		return err
	}
	defer r.unlockIO()
	first, last := r.periods(now)
	for p := first; p <= last; p++ {
		pages, next, err := r.readTail(ctx, streams.Replicas(p), now)
		if err != nil {
			return err
		}
		r.cursors[p] = next
		r.mu.Lock()
		for _, page := range slices.Backward(pages) {
			r.applyLocked(page)
		}
		r.mu.Unlock()
	}
	r.swept = first - 1
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recomputeLocked(now)
	return nil
}

// readTail reads stream back from its head to where no heartbeat can
// still be live, and returns the pages, newest first, each oldest first,
// so that applying them in reverse order applies records in the order
// written: of two heartbeats with one time (a beat and a Leave in one
// millisecond) the later record wins. next is the revision after the head.
func (r *Replicas) readTail(ctx context.Context, stream string, now time.Time) (pages [][]eventstore.RecordedEvent, next uint64, err error) {
	page, err := r.store.ReadStreamBackward(ctx, stream, readPage)
	if errors.Is(err, eventstore.ErrStreamNotFound) || err == nil && len(page) == 0 {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("replica %s: read heartbeats: %w", r.cfg.Name, err)
	}
	next = page[0].Revision + 1
	for {
		slices.Reverse(page)
		pages = append(pages, page)
		oldest, err := streams.DecodeHeartbeat(page[0])
		// Heartbeats are appended about in time order: once the oldest
		// read had expired, nothing before it can still be live.
		if err == nil && oldest.Expiry().Before(now) || page[0].Revision == 0 {
			return pages, next, nil
		}
		end := page[0].Revision
		from := end - min(end, readPage)
		if page, err = r.store.ReadStream(ctx, stream, from, int(end-from)); err != nil {
			return nil, 0, fmt.Errorf("replica %s: read heartbeats: %w", r.cfg.Name, err)
		}
		if len(page) == 0 {
			return pages, next, nil
		}
		slices.Reverse(page) // as a backward read gives them
	}
}

// applyLocked folds records, oldest first, into the set.
func (r *Replicas) applyLocked(recs []eventstore.RecordedEvent) {
	for _, rec := range recs {
		h, err := streams.DecodeHeartbeat(rec)
		if err != nil {
			r.log.Warn("replicas: unreadable heartbeat skipped", "err", err)
			continue
		}
		r.set.Apply(h.ReplicaHeartbeat)
		if prev, ok := r.records[h.Replica]; !ok || !h.At.Before(prev.At) { // as Apply keeps it
			r.records[h.Replica] = h
		}
	}
}

// checkPeers refuses a live replica of another identity, and returns the
// live heartbeat of another process under this name, if any.
func (r *Replicas) checkPeers(now time.Time) (*streams.Heartbeat, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var holder *streams.Heartbeat
	for _, name := range r.set.Live(now) {
		h := r.records[name]
		if name == r.cfg.Name && !bytes.Equal(h.Instance, r.instance) {
			holder = &h
		}
		if err := r.sameIdentity(h); err != nil {
			return nil, err
		}
	}
	return holder, nil
}

func (r *Replicas) sameIdentity(h streams.Heartbeat) error {
	if !r.sameServer(h.ServerID) || !bytes.Equal(h.KeyFingerprint, r.fingerprint) {
		return fmt.Errorf("replica %s serves %s with key SHA-256 %x, but live replica %s serves %s with key SHA-256 %x: %w; "+
			"every replica of a server needs the same --server-id and key file",
			r.cfg.Name, r.serverID(), r.fingerprint[:8], h.Replica, h.ServerID, truncate(h.KeyFingerprint, 8), ErrIdentityMismatch)
	}
	return nil
}

// serverID is this server's ID now.
func (r *Replicas) serverID() string {
	if r.cfg.Identity != nil {
		return r.cfg.Identity.Current().String()
	}
	return r.cfg.ServerID
}

// sameServer reports whether a heartbeat's server ID is this server's.
func (r *Replicas) sameServer(id string) bool {
	if r.cfg.Identity == nil {
		return id == r.cfg.ServerID
	}
	sid, err := domain.ParseServerID(id)
	return err == nil && r.cfg.Identity.IsAudience(sid, r.clock.Now())
}

func truncate(b []byte, n int) []byte { return b[:min(len(b), n)] }

// Beat writes this replica's heartbeat and reads the others'.
func (r *Replicas) Beat(ctx context.Context) error {
	return r.write(ctx, false)
}

// Leave writes a last heartbeat saying this replica stopped, so that the
// others take its peers at once instead of a lease later.
func (r *Replicas) Leave(ctx context.Context) error {
	return r.write(ctx, true)
}

func (r *Replicas) write(ctx context.Context, leaving bool) error {
	h := streams.Heartbeat{
		ReplicaHeartbeat: domain.ReplicaHeartbeat{Replica: r.cfg.Name, At: r.clock.Now(), Lease: r.cfg.Lease, Leaving: leaving},
		Instance:         r.instance, ServerID: r.serverID(), KeyFingerprint: r.fingerprint,
	}
	ev, err := r.codec.EncodeHeartbeat(h)
	if err != nil {
		return fmt.Errorf("replica %s: %w", r.cfg.Name, err)
	}
	if _, err := r.store.Append(ctx, streams.Replicas(streams.ReplicasPeriodOf(h.At)), eventstore.Any(), ev); err != nil {
		// Time passing alone ends leases, this replica's own among them.
		r.mu.Lock()
		r.recomputeLocked(r.clock.Now())
		r.mu.Unlock()
		return fmt.Errorf("replica %s: write heartbeat: %w", r.cfg.Name, err)
	}
	return r.Refresh(ctx)
}

// Refresh reads the heartbeats written since the last read and updates
// the view. It deletes the heartbeat streams of hours past.
func (r *Replicas) Refresh(ctx context.Context) error {
	if err := r.lockIO(ctx); err != nil {
		return err
	}
	defer r.unlockIO()
	return r.refreshLocked(ctx)
}

// lockIO waits for the reads of the heartbeats under way to end, or for
// ctx: a read that hangs (a stalled store) holds up the next one only as
// long as its caller lets it. unlockIO ends the hold.
func (r *Replicas) lockIO(ctx context.Context) error {
	select {
	case r.io <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("replica %s: waiting for a read of the heartbeats under way: %w", r.cfg.Name, context.Cause(ctx))
	}
}

func (r *Replicas) unlockIO() { <-r.io }

// RefreshIfIdle is Refresh unless a read of the heartbeats is under way
// already, which updates the view itself: a caller that needs a recent
// view does not queue behind it.
func (r *Replicas) RefreshIfIdle(ctx context.Context) error {
	select {
	case r.io <- struct{}{}:
	default:
		return nil
	}
	defer r.unlockIO()
	return r.refreshLocked(ctx)
}

// refreshLocked is Refresh; the caller holds the io slot (lockIO).
func (r *Replicas) refreshLocked(ctx context.Context) error {
	now := r.clock.Now()
	first, last := r.periods(now)
	var err error
	for p := first; p <= last && err == nil; p++ {
		err = r.readForward(ctx, p)
	}
	for p := range r.cursors {
		if p < first {
			delete(r.cursors, p)
		}
	}
	// Every replica deletes the streams of the hours before the last one
	// it read; one deleted already is no error.
	for ; r.swept < first-1; r.swept++ {
		stream := streams.Replicas(r.swept)
		if r.swept < first-4 {
			continue // long past: deleted when it ended, or never written
		}
		if derr := r.store.Delete(ctx, stream, eventstore.Any()); derr != nil &&
			!errors.Is(derr, eventstore.ErrStreamDeleted) && !errors.Is(derr, eventstore.ErrStreamNotFound) {
			r.log.Warn("replicas: cannot delete a past heartbeat stream", "stream", stream, "err", derr)
		}
	}
	// Even when a read failed: time passing alone ends leases, this
	// replica's own among them.
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recomputeLocked(r.clock.Now())
	return err
}

// readForward reads the heartbeats of period's stream after its cursor.
func (r *Replicas) readForward(ctx context.Context, period int64) error {
	stream := streams.Replicas(period)
	for {
		recs, err := r.store.ReadStream(ctx, stream, r.cursors[period], readPage)
		if errors.Is(err, eventstore.ErrStreamNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("replica %s: read heartbeats: %w", r.cfg.Name, err)
		}
		r.mu.Lock()
		r.applyLocked(recs)
		r.mu.Unlock()
		if len(recs) > 0 {
			r.cursors[period] = recs[len(recs)-1].Revision + 1
		}
		if len(recs) < readPage {
			return nil
		}
	}
}

// recomputeLocked sets the view from the heartbeats live at now, leaving
// out (and logging once) replicas of another identity, and wakes those
// waiting on Changed when it differs.
func (r *Replicas) recomputeLocked(now time.Time) {
	var live []string
	for _, name := range r.set.Live(now) {
		h := r.records[name]
		if name != r.cfg.Name {
			if err := r.sameIdentity(h); err != nil {
				if key := name + string(h.Instance); !r.reported[key] {
					r.reported[key] = true
					r.log.Error("replicas: a replica of another server shares this event store; it is left out", "err", err)
				}
				continue
			}
		} else if r.started && !bytes.Equal(h.Instance, r.instance) {
			if key := name + string(h.Instance); !r.reported[key] {
				r.reported[key] = true
				r.log.Error("replicas: another process writes heartbeats under this replica's name; give each replica its own --replica name",
					"other_instance", fmt.Sprintf("%x", h.Instance))
			}
		}
		live = append(live, name)
	}
	if slices.Equal(live, r.view.Live) {
		return
	}
	r.log.Info("replicas: live set changed", "live", live, "was", r.view.Live)
	r.view = View{Self: r.cfg.Name, Live: live, Generation: r.view.Generation + 1}
	close(r.changed)
	r.changed = make(chan struct{})
}

// View returns the current view.
func (r *Replicas) View() View {
	r.mu.Lock()
	defer r.mu.Unlock()
	if slices.Contains(r.view.Live, r.cfg.Name) {
		if own, ok := r.set.Latest(r.cfg.Name); ok && !own.LiveAt(r.clock.Now()) {
			// This replica's heartbeat I/O is stuck (a write or read that
			// does not return): its lease ended by time alone and the
			// others take its peers, so it stops believing it runs them
			// now, not when the I/O returns, or it claims them back.
			r.recomputeLocked(r.clock.Now())
		}
	}
	return r.view
}

// Owns reports whether this replica runs peer's delivery, by the current
// view.
func (r *Replicas) Owns(peer streams.PeerID) bool { return r.View().Owns(peer) }

// Changed returns a channel closed at the next change of the view: the
// engine then starts the peers it gained and stops those it lost.
func (r *Replicas) Changed() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}

// nextExpiry returns when a replica live now stops being live if no
// heartbeat comes.
func (r *Replicas) nextExpiry(now time.Time) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.set.NextExpiry(now)
}

// Run keeps the view current until ctx ends: a heartbeat every interval,
// and a read when a replica's lease runs out (so that a late heartbeat
// keeps it live, and a missing one moves its peers without waiting for the
// next beat). after waits (time.After, or a test's virtual clock). Run does
// not write Leave: a clean shutdown calls it, a killed replica cannot.
func (r *Replicas) Run(ctx context.Context, after func(time.Duration) <-chan time.Time) {
	nextBeat := r.clock.Now().Add(r.cfg.Interval)
	for {
		now := r.clock.Now()
		wait := nextBeat.Sub(now)
		if exp, ok := r.nextExpiry(now); ok && exp.Sub(now) < wait {
			// A replica is live through its expiry, so look just after.
			wait = exp.Sub(now) + time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-after(max(wait, 0)):
		}
		now = r.clock.Now()
		var err error
		if now.Before(nextBeat) {
			err = r.Refresh(ctx)
		} else {
			nextBeat = now.Add(r.cfg.Interval)
			err = r.Beat(ctx)
		}
		if err != nil && ctx.Err() == nil {
			r.log.Warn("replicas: heartbeat", "err", err)
		}
	}
}
