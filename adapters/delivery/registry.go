package delivery

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"

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
}

// Registry is the peers stream folded: which server IDs are peers and the
// stable IDs that name their streams. It is safe for concurrent use.
type Registry struct {
	store Store
	codec *streams.Codec
	rand  io.Reader

	mu       sync.Mutex
	next     uint64 // events in the peers stream
	byServer map[domain.ServerID]streams.PeerID
	byPeer   map[streams.PeerID]domain.ServerID
}

// LoadRegistry reads the peers stream.
func LoadRegistry(ctx context.Context, store Store, codec *streams.Codec, rand io.Reader) (*Registry, error) {
	r := &Registry{store: store, codec: codec, rand: rand,
		byServer: map[domain.ServerID]streams.PeerID{}, byPeer: map[streams.PeerID]domain.ServerID{}}
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

func (r *Registry) apply(m any) error {
	switch m := m.(type) {
	case *eventsv1.PeerSeen:
		id, err := domain.ParseServerID(m.GetServerId())
		if err != nil {
			return fmt.Errorf("peers stream: %w", err)
		}
		r.byServer[id] = streams.PeerID(m.GetPeerId())
		r.byPeer[streams.PeerID(m.GetPeerId())] = id
	case *eventsv1.PeerRenamed:
		id, err := domain.ParseServerID(m.GetNewServerId())
		if err != nil {
			return fmt.Errorf("peers stream: %w", err)
		}
		if old, err := domain.ParseServerID(m.GetOldServerId()); err == nil {
			delete(r.byServer, old)
		}
		r.byServer[id] = streams.PeerID(m.GetPeerId())
		r.byPeer[streams.PeerID(m.GetPeerId())] = id
	}
	return nil
}

// Lookup finds the peer a server ID belongs to.
func (r *Registry) Lookup(id domain.ServerID) (streams.PeerID, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, ok := r.byServer[id]
	return p, ok
}

// ServerID returns a peer's current server ID.
func (r *Registry) ServerID(p streams.PeerID) (domain.ServerID, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	id, ok := r.byPeer[p]
	return id, ok
}

// Peers lists every peer, ordered by server ID.
func (r *Registry) Peers() []Peer {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Peer, 0, len(r.byPeer))
	for p, id := range r.byPeer {
		out = append(out, Peer{ID: p, ServerID: id})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ServerID.String() < out[j].ServerID.String() })
	return out
}

// Register returns the peer of id, registering it on first contact.
func (r *Registry) Register(ctx context.Context, id domain.ServerID) (streams.PeerID, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p, ok := r.byServer[id]; ok {
		return p, nil
	}
	var raw [8]byte
	if _, err := io.ReadFull(r.rand, raw[:]); err != nil {
		return "", fmt.Errorf("new peer ID: %w", err)
	}
	seen := &eventsv1.PeerSeen{PeerId: "p" + hex.EncodeToString(raw[:]), ServerId: id.String()}
	if err := r.appendLocked(ctx, streams.TypePeerSeen, seen); err != nil {
		return "", err
	}
	return streams.PeerID(seen.GetPeerId()), nil
}

// appendLocked appends one record to the peers stream at the revision this
// registry has read; a conflict means another writer shares the store, so
// the registry rereads the stream and the caller retries.
func (r *Registry) appendLocked(ctx context.Context, typ string, m proto.Message) error {
	data, err := r.codec.Encode(typ, m)
	if err != nil {
		return err
	}
	if _, err := r.store.Append(ctx, streams.Peers, expectAfter(r.next), data); err != nil {
		if errors.Is(err, eventstore.ErrWrongExpectedRevision) {
			r.reloadLocked(ctx)
		}
		return fmt.Errorf("record %s: %w", typ, err)
	}
	r.next++
	return r.apply(m)
}

func (r *Registry) reloadLocked(ctx context.Context) {
	fresh, err := LoadRegistry(ctx, r.store, r.codec, r.rand)
	if err != nil {
		return
	}
	r.next, r.byServer, r.byPeer = fresh.next, fresh.byServer, fresh.byPeer
}
