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
	id        streams.PeerID
	current   domain.ServerID
	former    []domain.ServerID
	key       ed25519.PublicKey
	knowsUsAs domain.ServerID
}

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
	pending  map[domain.ServerID]*registration
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
		pending: map[domain.ServerID]*registration{}}
	next, err := readAll(ctx, store, streams.Peers, func(rec eventstore.RecordedEvent) error {
		m, err := streams.DecodePeers(rec)
		if err != nil {
			return err
		}
		return r.apply(m)
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

func (r *Registry) apply(m proto.Message) error {
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

// Keys returns the recorded public key of every peer, by current server ID.
func (r *Registry) Keys() map[domain.ServerID]ed25519.PublicKey {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[domain.ServerID]ed25519.PublicKey{}
	for _, e := range r.byPeer {
		if e.key != nil {
			out[e.current] = e.key
		}
	}
	return out
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
	r.mu.Unlock()
	recs := make([]proto.Message, 0, len(batch))
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
		recs = append(recs, seen)
	}
	if err == nil {
		// The records are shared by every caller in the batch, so the
		// append does not end with this caller's context.
		appendCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		err = r.writeLocked(appendCtx, streams.TypePeerSeen, recs...)
		cancel()
	}
	r.mu.Lock()
	for _, p := range batch {
		delete(r.pending, p.server)
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
	return r.write(ctx, streams.TypePeerRenamed, func() proto.Message {
		return &eventsv1.PeerRenamed{PeerId: rename.Peer, OldServerId: rename.Old.String(), NewServerId: rename.New.String()}
	})
}

// RecordKey records a registered peer's key when it is new or changed;
// keys of servers that are not peers are not recorded, so strangers cannot
// grow the stream.
func (r *Registry) RecordKey(ctx context.Context, id domain.ServerID, key ed25519.PublicKey) error {
	return r.write(ctx, streams.TypePeerKeyLearned, func() proto.Message {
		e, ok := r.byServer[id]
		if !ok || e.current != id || e.key.Equal(key) {
			return nil
		}
		return &eventsv1.PeerKeyLearned{PeerId: string(e.id), PublicKey: key}
	})
}

// RecordOwnID records this server's ID: the first one, or a rename.
func (r *Registry) RecordOwnID(ctx context.Context, id domain.ServerID) error {
	return r.write(ctx, streams.TypeOwnServerIDChanged, func() proto.Message {
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
	return r.write(ctx, streams.TypePeerNotifiedOfNewID, func() proto.Message {
		return &eventsv1.PeerNotifiedOfNewId{PeerId: string(peer), NewServerId: newID.String()}
	})
}

// write records what decide returns (nil: nothing); decide reads the state
// with mu held, and no other write runs in between.
func (r *Registry) write(ctx context.Context, typ string, decide func() proto.Message) error {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	r.mu.Lock()
	m := decide()
	r.mu.Unlock()
	if m == nil {
		return nil
	}
	return r.writeLocked(ctx, typ, m)
}

// writeLocked appends records of one type to the peers stream at the
// revision this registry has read, then folds them in. A conflict means
// another writer shares the store: the registry rereads the stream and the
// caller may retry. The caller holds writeMu.
func (r *Registry) writeLocked(ctx context.Context, typ string, recs ...proto.Message) error {
	data := make([]eventstore.EventData, 0, len(recs))
	for _, m := range recs {
		d, err := r.codec.Encode(typ, m)
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
		return fmt.Errorf("record %s: %w", typ, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.next += uint64(len(recs))
	for _, m := range recs {
		if err := r.apply(m); err != nil {
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
	r.next, r.byServer, r.byPeer, r.ownID = fresh.next, fresh.byServer, fresh.byPeer, fresh.ownID
}
