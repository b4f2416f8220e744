package delivery

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
)

// Store is what the delivery engine needs of the event store.
type Store interface {
	Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error)
	ReadStream(ctx context.Context, stream string, from uint64, limit int) ([]eventstore.RecordedEvent, error)
	ReadStreamBackward(ctx context.Context, stream string, limit int) ([]eventstore.RecordedEvent, error)
}

// expectAfter is the expected revision of a stream holding n events.
func expectAfter(n uint64) eventstore.ExpectedRevision {
	if n == 0 {
		return eventstore.NoStream()
	}
	return eventstore.Exact(n - 1)
}

// readAll folds every event of stream, page by page; a missing stream is empty.
func readAll(ctx context.Context, s Store, stream string, fn func(eventstore.RecordedEvent) error) (uint64, error) {
	const page = 1024
	var next uint64
	for {
		batch, err := s.ReadStream(ctx, stream, next, page)
		if errors.Is(err, eventstore.ErrStreamNotFound) {
			return next, nil
		}
		if err != nil {
			return next, fmt.Errorf("read %s: %w", stream, err)
		}
		for _, r := range batch {
			if err := fn(r); err != nil {
				return next, err
			}
			next = r.Revision + 1
		}
		if len(batch) < page {
			return next, nil
		}
	}
}

// Peer is one registered peer.
type Peer struct {
	ID       streams.PeerID
	ServerID domain.ServerID
	// KnowsUsAs is this server's ID as the peer knows it: the one to sign
	// with toward it until it accepts a rename of this server.
	KnowsUsAs domain.ServerID
}

type peerEntry struct {
	id      streams.PeerID
	current domain.ServerID
	former  []domain.ServerID
	key     ed25519.PublicKey
	// formerKeys holds the key each former ID had when the peer left it,
	// so requests still signed as that ID (a repeated NotifyNewId) verify
	// after a restart, when the old address may be gone.
	formerKeys map[domain.ServerID]ed25519.PublicKey
	knowsUsAs  domain.ServerID
}

// OwnIDEntry is one of this server's IDs and when it took it.
type OwnIDEntry struct {
	ID    domain.ServerID
	Since time.Time
}

// maxUnregisteredKeys bounds the keys held for servers that are not peers
// (yet). Key fetches are rate-limited (peerkeys.Config), so a key fetched
// while verifying a first contact stays here far longer than the moment
// until that contact registers the peer.
const maxUnregisteredKeys = 1024

// Registry is the peers stream folded: which server IDs are peers, the
// stable IDs that name their streams, their former IDs and keys, and this
// server's own ID. It is safe for concurrent use.
type Registry struct {
	store Store
	codec *streams.Codec
	rand  io.Reader

	// writeMu serializes appends to the peers stream (each names the
	// revision it expects); mu guards the folded state and is never held
	// across I/O. Lock order: writeMu, then mu.
	writeMu sync.Mutex

	mu       sync.Mutex
	next     uint64                         // events in the peers stream
	byServer map[domain.ServerID]*peerEntry // current and former IDs
	byPeer   map[streams.PeerID]*peerEntry
	ownID    domain.ServerID // zero until recorded
	ownIDs   []OwnIDEntry    // every ID this server had, oldest first
	pending  map[domain.ServerID]*registration
	// unregistered holds keys learned for servers that are not peers, in
	// the order learned, until their first contact registers them: the
	// key that verified a peer's own first call is recorded with it.
	unregistered      map[domain.ServerID]ed25519.PublicKey
	unregisteredOrder []domain.ServerID
}

// registration is a first contact waiting to be recorded.
type registration struct {
	server domain.ServerID
	done   chan struct{} // closed once recorded or failed
	peer   streams.PeerID
	err    error
}

// LoadRegistry reads the peers stream.
func LoadRegistry(ctx context.Context, store Store, codec *streams.Codec, rand io.Reader) (*Registry, error) {
	r := &Registry{store: store, codec: codec, rand: rand,
		byServer: map[domain.ServerID]*peerEntry{}, byPeer: map[streams.PeerID]*peerEntry{},
		pending: map[domain.ServerID]*registration{}, unregistered: map[domain.ServerID]ed25519.PublicKey{}}
	next, err := readAll(ctx, store, streams.Peers, func(rec eventstore.RecordedEvent) error {
		m, err := streams.DecodePeers(rec)
		if err != nil {
			return err
		}
		return r.apply(m, rec.Created)
	})
	r.next = next
	return r, err
}

func parseRecorded(field, raw string) (domain.ServerID, error) {
	id, err := domain.ParseServerID(raw)
	if err != nil {
		return domain.ServerID{}, fmt.Errorf("peers stream: %s: %w", field, err)
	}
	return id, nil
}

// apply folds one record of the peers stream, recorded at at.
func (r *Registry) apply(m proto.Message, at time.Time) error {
	switch m := m.(type) {
	case *eventsv1.PeerSeen:
		id, err := parseRecorded("server_id", m.GetServerId())
		if err != nil {
			return err
		}
		e := &peerEntry{id: streams.PeerID(m.GetPeerId()), current: id, knowsUsAs: r.ownID}
		if m.GetOurServerId() != "" {
			if e.knowsUsAs, err = parseRecorded("our_server_id", m.GetOurServerId()); err != nil {
				return err
			}
		}
		r.byServer[id], r.byPeer[e.id] = e, e
	case *eventsv1.PeerRenamed:
		e, ok := r.byPeer[streams.PeerID(m.GetPeerId())]
		if !ok {
			return fmt.Errorf("peers stream: rename of unknown peer %s", m.GetPeerId())
		}
		id, err := parseRecorded("new_server_id", m.GetNewServerId())
		if err != nil {
			return err
		}
		if e.key != nil {
			if e.formerKeys == nil {
				e.formerKeys = map[domain.ServerID]ed25519.PublicKey{}
			}
			e.formerKeys[e.current] = e.key
		}
		e.former = append(e.former, e.current)
		e.current = id
		r.byServer[id] = e
	case *eventsv1.PeerKeyLearned:
		if e, ok := r.byPeer[streams.PeerID(m.GetPeerId())]; ok {
			e.key = ed25519.PublicKey(m.GetPublicKey())
		}
	case *eventsv1.OwnServerIdChanged:
		id, err := parseRecorded("new_server_id", m.GetNewServerId())
		if err != nil {
			return err
		}
		r.ownID = id
		r.ownIDs = append(r.ownIDs, OwnIDEntry{ID: id, Since: at})
	case *eventsv1.PeerNotifiedOfNewId:
		id, err := parseRecorded("new_server_id", m.GetNewServerId())
		if err != nil {
			return err
		}
		if e, ok := r.byPeer[streams.PeerID(m.GetPeerId())]; ok {
			e.knowsUsAs = id
		}
	}
	return nil
}

// Resolve finds the peer id names, by its current or a former server ID;
// it implements domain.PeerDirectory.
func (r *Registry) Resolve(id domain.ServerID) (string, domain.ServerID, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.byServer[id]
	if !ok {
		return "", domain.ServerID{}, false
	}
	return string(e.id), e.current, true
}

// Lookup finds the peer a server ID (current or former) belongs to.
func (r *Registry) Lookup(id domain.ServerID) (streams.PeerID, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.byServer[id]
	if !ok {
		return "", false
	}
	return e.id, true
}

// ServerID returns a peer's current server ID.
func (r *Registry) ServerID(p streams.PeerID) (domain.ServerID, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.byPeer[p]
	if !ok {
		return domain.ServerID{}, false
	}
	return e.current, true
}

// Peers lists every peer, ordered by server ID.
func (r *Registry) Peers() []Peer {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Peer, 0, len(r.byPeer))
	for _, e := range r.byPeer {
		out = append(out, Peer{ID: e.id, ServerID: e.current, KnowsUsAs: e.knowsUsAs})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ServerID.String() < out[j].ServerID.String() })
	return out
}

// KnowsUsAs returns the ID of this server that peer knows.
func (r *Registry) KnowsUsAs(peer streams.PeerID) (domain.ServerID, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.byPeer[peer]
	if !ok {
		return domain.ServerID{}, false
	}
	return e.knowsUsAs, true
}

// Keys returns the recorded public key of every peer, by current and
// former server ID. A former ID whose key was not recorded before the
// rename gets the current key: the rename was accepted only because the
// new ID served the key known for the old one.
func (r *Registry) Keys() map[domain.ServerID]ed25519.PublicKey {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[domain.ServerID]ed25519.PublicKey{}
	for _, e := range r.byPeer {
		for _, id := range e.former {
			if key := e.formerKeys[id]; key != nil {
				out[id] = key
			} else if e.key != nil {
				out[id] = e.key
			}
		}
		if e.key != nil {
			out[e.current] = e.key
		}
	}
	return out
}

// OwnIDs returns every server ID this server has had, oldest first, each
// with the time it was recorded.
func (r *Registry) OwnIDs() []OwnIDEntry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]OwnIDEntry(nil), r.ownIDs...)
}

// OwnID returns this server's recorded server ID, if any.
func (r *Registry) OwnID() (domain.ServerID, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ownID, !r.ownID.IsZero()
}

// IDFor is this server's ID to sign with toward peer: the one the peer
// knows, until it accepts a rename. For a server that is not a peer yet,
// the current one.
func (r *Registry) IDFor(peer domain.ServerID) domain.ServerID {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.byServer[peer]; ok && !e.knowsUsAs.IsZero() {
		return e.knowsUsAs
	}
	return r.ownID
}

// Register returns the peer of id (current or former), registering it on
// first contact. First contacts that arrive together are recorded in one
// append, so contacting many new peers at once costs few syncs.
func (r *Registry) Register(ctx context.Context, id domain.ServerID) (streams.PeerID, error) {
	r.mu.Lock()
	if e, ok := r.byServer[id]; ok {
		r.mu.Unlock()
		return e.id, nil
	}
	w, queued := r.pending[id]
	if !queued {
		w = &registration{server: id, done: make(chan struct{})}
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
	own := r.ownID
	keys := make(map[domain.ServerID]ed25519.PublicKey, len(batch))
	for _, p := range batch {
		if key, ok := r.unregistered[p.server]; ok {
			keys[p.server] = key
		}
	}
	r.mu.Unlock()
	recs := make([]record, 0, len(batch))
	var err error
	for _, p := range batch {
		var raw [8]byte
		if _, err = io.ReadFull(r.rand, raw[:]); err != nil {
			err = fmt.Errorf("new peer ID: %w", err)
			break
		}
		p.peer = streams.PeerID("p" + hex.EncodeToString(raw[:]))
		seen := &eventsv1.PeerSeen{PeerId: string(p.peer), ServerId: p.server.String()}
		if !own.IsZero() {
			seen.OurServerId = own.String()
		}
		recs = append(recs, record{streams.TypePeerSeen, seen})
		if key := keys[p.server]; key != nil {
			recs = append(recs, record{streams.TypePeerKeyLearned, &eventsv1.PeerKeyLearned{PeerId: string(p.peer), PublicKey: key}})
		}
	}
	if err == nil {
		// The records are shared by every caller in the batch, so the
		// append does not end with this caller's context.
		appendCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		err = r.writeLocked(appendCtx, time.Time{}, recs...)
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
	return r.write(ctx, streams.TypePeerRenamed, time.Time{}, func() proto.Message {
		return &eventsv1.PeerRenamed{PeerId: rename.Peer, OldServerId: rename.Old.String(), NewServerId: rename.New.String()}
	})
}

// RecordKey records a registered peer's key when it is new or changed.
// The key of a server that is not a peer is only held in memory (a bounded
// number of them), and recorded with its PeerSeen if it becomes one, so a
// peer whose first contact was its own call (its key fetched to verify it)
// has its key recorded while strangers cannot grow the stream.
func (r *Registry) RecordKey(ctx context.Context, id domain.ServerID, key ed25519.PublicKey) error {
	return r.write(ctx, streams.TypePeerKeyLearned, time.Time{}, func() proto.Message {
		e, ok := r.byServer[id]
		if !ok {
			r.holdKeyLocked(id, key)
			return nil
		}
		if e.current != id || e.key.Equal(key) {
			return nil
		}
		return &eventsv1.PeerKeyLearned{PeerId: string(e.id), PublicKey: key}
	})
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

// RecordOwnID records this server's ID, taken at at: the first one, or a
// rename.
func (r *Registry) RecordOwnID(ctx context.Context, id domain.ServerID, at time.Time) error {
	return r.write(ctx, streams.TypeOwnServerIDChanged, at, func() proto.Message {
		if id == r.ownID {
			return nil
		}
		m := &eventsv1.OwnServerIdChanged{NewServerId: id.String()}
		if !r.ownID.IsZero() {
			m.OldServerId = r.ownID.String()
		}
		return m
	})
}

// RecordNotified records that peer accepted this server's ID newID.
func (r *Registry) RecordNotified(ctx context.Context, peer streams.PeerID, newID domain.ServerID) error {
	return r.write(ctx, streams.TypePeerNotifiedOfNewID, time.Time{}, func() proto.Message {
		return &eventsv1.PeerNotifiedOfNewId{PeerId: string(peer), NewServerId: newID.String()}
	})
}

// record is one record of the peers stream and its type.
type record struct {
	typ string
	m   proto.Message
}

// write records what decide returns (nil: nothing), as of at; decide reads
// the state with mu held, and no other write runs in between.
func (r *Registry) write(ctx context.Context, typ string, at time.Time, decide func() proto.Message) error {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	r.mu.Lock()
	m := decide()
	r.mu.Unlock()
	if m == nil {
		return nil
	}
	return r.writeLocked(ctx, at, record{typ, m})
}

// writeLocked appends records to the peers stream at the revision this
// registry has read, then folds them in as of at. A conflict means another
// writer shares the store: the registry rereads the stream and the caller
// may retry. The caller holds writeMu.
func (r *Registry) writeLocked(ctx context.Context, at time.Time, recs ...record) error {
	data := make([]eventstore.EventData, 0, len(recs))
	for _, rec := range recs {
		d, err := r.codec.Encode(rec.typ, rec.m)
		if err != nil {
			return err
		}
		data = append(data, d)
	}
	r.mu.Lock()
	next := r.next
	r.mu.Unlock()
	if _, err := r.store.Append(ctx, streams.Peers, expectAfter(next), data...); err != nil {
		if errors.Is(err, eventstore.ErrWrongExpectedRevision) {
			r.reload(ctx)
		}
		return fmt.Errorf("record %s: %w", recs[0].typ, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.next += uint64(len(recs))
	for _, rec := range recs {
		if err := r.apply(rec.m, at); err != nil {
			return err
		}
	}
	return nil
}

// reload rereads the peers stream. The caller holds writeMu.
func (r *Registry) reload(ctx context.Context) {
	fresh, err := LoadRegistry(ctx, r.store, r.codec, r.rand)
	if err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.next, r.byServer, r.byPeer, r.ownID, r.ownIDs = fresh.next, fresh.byServer, fresh.byPeer, fresh.ownID, fresh.ownIDs
}
