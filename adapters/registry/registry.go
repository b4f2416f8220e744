// Package registry keeps the peers stream: which server IDs are peers, the
// stable IDs that name their streams, their former IDs and keys, and this
// server's own IDs. The rules are domain.Peers (the one fold of the
// stream, which the projections use too) and domain's rename decisions;
// this package reads the stream into the fold, and appends what the
// decisions return.
package registry

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// Store is what the registry needs of the event store.
type Store interface {
	Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error)
	ReadStream(ctx context.Context, stream string, from uint64, limit int) ([]eventstore.RecordedEvent, error)
}

// maxUnregisteredKeys bounds the keys held for servers that are not peers
// (yet). Key fetches are rate-limited (peerkeys.Config), so a key fetched
// while verifying a first contact stays here far longer than the moment
// until that contact registers the peer.
const maxUnregisteredKeys = 1024

// Registry is the peers stream, folded by domain.Peers. It is safe for
// concurrent use.
type Registry struct {
	store  Store
	codec  *streams.Codec
	rand   io.Reader
	logger *slog.Logger

	// writeMu serializes appends to the peers stream (each names the
	// revision it expects); mu guards the folded state and is never held
	// across I/O. Lock order: writeMu, then mu.
	writeMu sync.Mutex

	mu      sync.Mutex
	next    uint64 // records in the peers stream
	peers   *domain.Peers
	pending map[domain.ServerID]*registration
	// unregistered holds keys learned for servers that are not peers, in
	// the order learned, until their first contact registers them: the
	// key that verified a peer's own first call is recorded with it.
	unregistered      map[domain.ServerID]ed25519.PublicKey
	unregisteredOrder []domain.ServerID
	// signAs holds, in memory, the former ID of this server to sign with
	// toward a peer that showed it lost the rename it had accepted (its
	// store went back), until it accepts the current ID again.
	signAs map[domain.PeerID]domain.ServerID

	// Snapshots (snapshot.go): records read by Load, the records the
	// latest snapshot known covers, where the stream was truncated, and
	// how many records are written between two snapshots.
	loadRead, snapshotAt, cut uint64
	snapshotEvery             uint64
}

// registration is a first contact waiting to be recorded.
type registration struct {
	server domain.ServerID
	// addressed is the ID of this server the peer's call addressed (zero:
	// not known, or this server's own send).
	addressed domain.ServerID
	done      chan struct{} // closed once recorded or failed
	peer      domain.PeerID
	err       error
}

// Load reads the peers stream: its latest snapshot that can be trusted and
// the records after it (snapshot.go). A nil logger discards logs.
func Load(ctx context.Context, store Store, codec *streams.Codec, rand io.Reader, logger *slog.Logger) (*Registry, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Registry{store: store, codec: codec, rand: rand, logger: logger, snapshotEvery: SnapshotEvery,
		pending: map[domain.ServerID]*registration{}, unregistered: map[domain.ServerID]ed25519.PublicKey{},
		signAs: map[domain.PeerID]domain.ServerID{}}
	f, err := r.load(ctx)
	r.peers, r.next, r.loadRead, r.snapshotAt = f.peers, f.next, f.read, f.snapshot
	return r, err
}

// Resolve finds the peer id names, by its current or a former server ID;
// it implements domain.PeerDirectory.
func (r *Registry) Resolve(id domain.ServerID) (string, domain.ServerID, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.peers.Resolve(id)
}

// Lookup finds the peer a server ID (current or former) belongs to.
func (r *Registry) Lookup(id domain.ServerID) (domain.PeerID, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.peers.Lookup(id)
}

// Knows reports whether id is a peer's server ID, current or former.
func (r *Registry) Knows(id domain.ServerID) bool {
	_, ok := r.Lookup(id)
	return ok
}

// ServerID returns a peer's current server ID.
func (r *Registry) ServerID(p domain.PeerID) (domain.ServerID, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.peers.Peer(p)
	return e.ServerID, ok
}

// Peers lists every peer, ordered by server ID.
func (r *Registry) Peers() []domain.PeerEntry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.peers.List()
}

// KnowsUsAs returns the ID of this server that peer knows (zero: the
// current one).
func (r *Registry) KnowsUsAs(peer domain.PeerID) (domain.ServerID, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.peers.Peer(peer)
	return e.KnowsUsAs, ok
}

// KnowsOurID reports whether peer knows this server's current ID.
func (r *Registry) KnowsOurID(peer domain.PeerID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, lost := r.signAs[peer]
	return !lost && r.peers.KnowsOurID(peer)
}

// NoticesDue lists the peers to tell this server's current ID.
func (r *Registry) NoticesDue() []domain.PeerEntry {
	r.mu.Lock()
	defer r.mu.Unlock()
	due := domain.NoticesDue(r.peers)
	for peer := range r.signAs {
		if r.peers.KnowsOurID(peer) {
			entry, _ := r.peers.Peer(peer)
			due = append(due, entry)
		}
	}
	return due
}

// HasKey reports whether peer's key is recorded.
func (r *Registry) HasKey(peer domain.PeerID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	entry, ok := r.peers.Peer(peer)
	return ok && entry.Key != nil
}

// KeylessPeers returns the server IDs of the peers whose key is not
// recorded (peers this server only sent to, whose key it could not fetch
// yet), at most limit of them.
func (r *Registry) KeylessPeers(limit int) []domain.ServerID {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.peers.Keyless(limit)
}

// SignAs makes this server sign with its former ID id toward peer, in
// memory, until peer accepts the current ID again (RecordNotified): peer
// answered a call signed with the current ID as from a stranger, so it
// lost the rename it had accepted (its store went back), and only a
// notice signed with an ID it still knows can tell it again.
func (r *Registry) SignAs(peer domain.PeerID, id domain.ServerID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.signAs[peer] = id
}

// StrangerCheck refuses a call from server id, which is no peer, when the
// key that verified it is a peer's: that peer renamed itself to id and this
// server lost the rename (its store went back), or two servers share a
// key. Registering id would make it a second peer for one server, so the
// caller is told it is unknown here and must announce its rename again.
func (r *Registry) StrangerCheck(id domain.ServerID) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.strangerCheckLocked(id)
}

func (r *Registry) strangerCheckLocked(id domain.ServerID) error {
	if _, known := r.peers.Lookup(id); known {
		return nil
	}
	key := r.unregistered[id]
	if key == nil {
		return nil
	}
	if holder, ok := r.peers.KeyHolder(key); ok {
		return fmt.Errorf("%w: %s signs with the key of the peer known here as %s; if that peer was renamed to %s, "+
			"this server lost the rename (its store went back): it must announce it again, signed as %s",
			domain.ErrUnknownPeer, id, holder.ServerID, id, holder.ServerID)
	}
	return nil
}

// Keys returns the recorded public key of every peer, by current and
// former server ID (domain.Peers.Keys).
func (r *Registry) Keys() map[domain.ServerID]ed25519.PublicKey {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.peers.Keys()
}

// OwnIDs returns every server ID this server has had, oldest first, each
// with the time it was recorded.
func (r *Registry) OwnIDs() []domain.OwnID {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.peers.OwnIDs()
}

// OwnID returns this server's recorded server ID, if any.
func (r *Registry) OwnID() (domain.ServerID, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.peers.OwnID()
}

// IDFor is this server's ID to sign with toward peer: the one the peer
// knows, until it accepts a rename. For a server that is not a peer yet,
// the current one.
func (r *Registry) IDFor(peer domain.ServerID) domain.ServerID {
	r.mu.Lock()
	defer r.mu.Unlock()
	if id, ok := r.peers.Lookup(peer); ok {
		if former, lost := r.signAs[id]; lost {
			return former
		}
	}
	return r.peers.IDFor(peer)
}

// registerAttempts bounds Register's appends while other writers sharing
// the store (replicas of this server) append to the peers stream first.
const registerAttempts = 8

// Register returns the peer of id (current or former), registering it on
// first contact. First contacts that arrive together are recorded in one
// append, so contacting many new peers at once costs few syncs. When
// another replica wrote the peers stream first, the registry has reread it
// and tries again: that replica may have registered id itself.
func (r *Registry) Register(ctx context.Context, id domain.ServerID) (domain.PeerID, error) {
	for attempt := 1; ; attempt++ {
		peer, err := r.register(ctx, id, domain.ServerID{}, false)
		if err == nil || !errors.Is(err, eventstore.ErrWrongExpectedRevision) || attempt == registerAttempts || ctx.Err() != nil {
			return peer, err
		}
	}
}

// RegisterCaller is Register for a peer's own call: on first contact the
// peer is recorded as knowing this server by the ID it addressed
// (domain.Peers.Register).
func (r *Registry) RegisterCaller(ctx context.Context, caller domain.Caller) (domain.PeerID, error) {
	for attempt := 1; ; attempt++ {
		peer, err := r.register(ctx, caller.ServerID, caller.Audience, true)
		if err == nil || !errors.Is(err, eventstore.ErrWrongExpectedRevision) || attempt == registerAttempts || ctx.Err() != nil {
			return peer, err
		}
	}
}

func (r *Registry) register(ctx context.Context, id, addressed domain.ServerID, theirCall bool) (domain.PeerID, error) {
	r.mu.Lock()
	if peer, ok := r.peers.Lookup(id); ok {
		r.mu.Unlock()
		return peer, nil
	}
	if theirCall {
		if err := r.strangerCheckLocked(id); err != nil {
			r.mu.Unlock()
			return "", err
		}
	}
	w, queued := r.pending[id]
	if !queued {
		w = &registration{server: id, addressed: addressed, done: make(chan struct{})}
		r.pending[id] = w
	}
	r.mu.Unlock()

	// Whoever holds the writer next records every registration waiting.
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	select {
	case <-w.done:
		return w.peer, w.err
	default:
	}
	r.mu.Lock()
	batch := make([]*registration, 0, len(r.pending))
	for _, p := range r.pending {
		batch = append(batch, p)
	}
	var recs []domain.PeerEvent
	var err error
	for _, p := range batch {
		if known, ok := r.peers.Lookup(p.server); ok {
			// Another replica registered it, read since it was queued.
			p.peer = known
			continue
		}
		var raw [8]byte
		if _, err = io.ReadFull(r.rand, raw[:]); err != nil {
			err = fmt.Errorf("new peer ID: %w", err)
			break
		}
		p.peer = domain.PeerID("p" + hex.EncodeToString(raw[:]))
		recs = append(recs, r.peers.Register(p.peer, p.server, r.unregistered[p.server], p.addressed)...)
	}
	r.mu.Unlock()
	if err == nil && len(recs) > 0 {
		// The records are shared by every caller in the batch, so the
		// append does not end with this caller's context.
		appendCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		err = r.writeLocked(appendCtx, time.Time{}, recs)
		cancel()
	}
	r.mu.Lock()
	for _, p := range batch {
		delete(r.pending, p.server)
		if err == nil {
			delete(r.unregistered, p.server) // its order entry goes when it is next pruned
		}
	}
	r.mu.Unlock()
	for _, p := range batch {
		p.err = err
		close(p.done)
	}
	return w.peer, w.err
}

// RecordRename records an accepted rename of a peer.
func (r *Registry) RecordRename(ctx context.Context, rename domain.PeerRename) error {
	return r.write(ctx, time.Time{}, func(peers *domain.Peers) ([]domain.PeerEvent, error) {
		return registered(peers, domain.PeerRenamed{Peer: domain.PeerID(rename.Peer), Old: rename.Old, New: rename.New}, domain.PeerID(rename.Peer))
	})
}

// RecordKey records a registered peer's key when it is new or changed.
// The key of a server that is not a peer is only held in memory (a bounded
// number of them), and recorded with its registration if it becomes one,
// so a peer whose first contact was its own call (its key fetched to
// verify it) has its key recorded while strangers cannot grow the stream.
func (r *Registry) RecordKey(ctx context.Context, id domain.ServerID, key ed25519.PublicKey) error {
	return r.write(ctx, time.Time{}, func(peers *domain.Peers) ([]domain.PeerEvent, error) {
		recs, registered := peers.LearnKey(id, key)
		if !registered {
			r.holdKeyLocked(id, key)
		}
		return recs, nil
	})
}

// KeyFetched records a key fetched for a server (peerkeys.Observer), so
// it is known after a restart, when a renamed peer's old address may be
// gone. A failure is logged: the key stays known until then.
func (r *Registry) KeyFetched(ctx context.Context, id domain.ServerID, key ed25519.PublicKey) {
	if err := r.RecordKey(ctx, id, key); err != nil {
		r.logger.Warn("recording a peer key failed", "peer", id.String(), "err", err)
	}
}

// holdKeyLocked keeps the key of a server that is not a peer, dropping the
// oldest held once the bound is reached. The caller holds mu.
func (r *Registry) holdKeyLocked(id domain.ServerID, key ed25519.PublicKey) {
	if _, held := r.unregistered[id]; !held {
		for len(r.unregisteredOrder) >= maxUnregisteredKeys {
			delete(r.unregistered, r.unregisteredOrder[0])
			r.unregisteredOrder = r.unregisteredOrder[1:]
		}
		r.unregisteredOrder = append(r.unregisteredOrder, id)
	}
	r.unregistered[id] = key
}

// RecordOwnID records this server's first ID, taken at at, or a rename of
// it that was decided already (the ID is recorded unless it is current).
func (r *Registry) RecordOwnID(ctx context.Context, id domain.ServerID, at time.Time) error {
	return r.write(ctx, at, func(peers *domain.Peers) ([]domain.PeerEvent, error) {
		return peers.ChangeOwnID(id), nil
	})
}

// RenameOwn renames this server to id at at, as domain.DecideOwnRename
// decides under the writer (ErrIDTaken if a peer has or had id); renamed
// is false when id is the current ID already.
func (r *Registry) RenameOwn(ctx context.Context, id domain.ServerID, at time.Time) (renamed bool, err error) {
	err = r.write(ctx, at, func(peers *domain.Peers) ([]domain.PeerEvent, error) {
		recs, err := domain.DecideOwnRename(peers, id)
		renamed = len(recs) > 0
		return recs, err
	})
	return renamed && err == nil, err
}

// SettleStartupID records what domain.DecideStartupID decides for the
// server ID given at start, at at, and returns the decision.
func (r *Registry) SettleStartupID(ctx context.Context, id domain.ServerID, given, allowRename bool, at time.Time) (domain.StartupID, error) {
	var decision domain.StartupID
	err := r.write(ctx, at, func(peers *domain.Peers) ([]domain.PeerEvent, error) {
		d, recs, err := domain.DecideStartupID(peers, id, given, allowRename)
		decision = d
		return recs, err
	})
	return decision, err
}

// RecordNotified records that peer accepted this server's ID newID.
func (r *Registry) RecordNotified(ctx context.Context, peer domain.PeerID, newID domain.ServerID) error {
	err := r.write(ctx, time.Time{}, func(peers *domain.Peers) ([]domain.PeerEvent, error) {
		return registered(peers, domain.PeerNotifiedOfNewID{Peer: peer, NewID: newID}, peer)
	})
	if err == nil {
		r.mu.Lock()
		delete(r.signAs, peer)
		r.mu.Unlock()
	}
	return err
}

// registered is the record e about peer, if peer is registered: the fold
// would refuse it once appended, so it is refused before.
func registered(peers *domain.Peers, e domain.PeerEvent, peer domain.PeerID) ([]domain.PeerEvent, error) {
	if _, ok := peers.Peer(peer); !ok {
		return nil, fmt.Errorf("%w: %s", domain.ErrUnregisteredPeer, peer)
	}
	return []domain.PeerEvent{e}, nil
}

// write records what decide returns (none: nothing), as of at; decide
// reads the fold with mu held, and no other write runs in between.
func (r *Registry) write(ctx context.Context, at time.Time, decide func(*domain.Peers) ([]domain.PeerEvent, error)) error {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	r.mu.Lock()
	recs, err := decide(r.peers)
	r.mu.Unlock()
	if err != nil || len(recs) == 0 {
		return err
	}
	return r.writeLocked(ctx, at, recs)
}

// writeLocked appends records to the peers stream at the revision this
// registry has read, then folds them in as of at. A conflict means another
// writer shares the store: the registry rereads the stream and the caller
// may retry. The caller holds writeMu.
func (r *Registry) writeLocked(ctx context.Context, at time.Time, recs []domain.PeerEvent) error {
	data, err := r.codec.EncodePeers(recs...)
	if err != nil {
		return err
	}
	r.mu.Lock()
	next := r.next
	r.mu.Unlock()
	expected := eventstore.NoStream()
	if next > 0 {
		expected = eventstore.Exact(next - 1)
	}
	if _, err := r.store.Append(ctx, streams.Peers, expected, data...); err != nil {
		if errors.Is(err, eventstore.ErrWrongExpectedRevision) {
			r.reload(ctx)
		}
		return fmt.Errorf("record %s: %w", data[0].Type, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.next += uint64(len(recs))
	for _, rec := range recs {
		if err := r.peers.Apply(rec, at); err != nil {
			return err
		}
	}
	return nil
}

// Refresh rereads the peers stream, to learn what other replicas sharing
// the store registered.
func (r *Registry) Refresh(ctx context.Context) {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	r.reload(ctx)
}

// reload rereads the peers stream, from its latest snapshot. The caller
// holds writeMu.
func (r *Registry) reload(ctx context.Context) {
	f, err := r.load(ctx)
	if err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.peers, r.next = f.peers, f.next
	r.snapshotAt = max(r.snapshotAt, f.snapshot)
}
