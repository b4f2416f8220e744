package domain

import (
	"cmp"
	"crypto/ed25519"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"
)

// PeerID is the stable ID that names a peer's streams, assigned at first
// contact; it never changes, so a rename never moves a stream.
type PeerID string

// PeerEvent is a fact recorded in the peers stream (the registry).
type PeerEvent interface{ peerEvent() }

// PeerRegistered: first contact with ServerID, which is now peer Peer.
// OurServerID is this server's ID as the peer met it (zero in records
// written before it was recorded: then this server's ID at that point of
// the stream).
type PeerRegistered struct {
	Peer        PeerID
	ServerID    ServerID
	OurServerID ServerID
}

// PeerKeyLearned: the peer's public key (new or changed).
type PeerKeyLearned struct {
	Peer PeerID
	Key  ed25519.PublicKey
}

// PeerRenamed: the peer accepted as renamed from Old to New (PROTOCOL.md §6).
type PeerRenamed struct {
	Peer     PeerID
	Old, New ServerID
}

// OwnServerIDChanged: this server's ID is New; Old is zero for the first
// record of it, which is not a rename.
type OwnServerIDChanged struct {
	Old, New ServerID
}

// PeerNotifiedOfNewID: the peer accepted NewID as this server's ID.
type PeerNotifiedOfNewID struct {
	Peer  PeerID
	NewID ServerID
}

func (PeerRegistered) peerEvent()      {}
func (PeerKeyLearned) peerEvent()      {}
func (PeerRenamed) peerEvent()         {}
func (OwnServerIDChanged) peerEvent()  {}
func (PeerNotifiedOfNewID) peerEvent() {}

// ErrUnregisteredPeer: a record of the peers stream names a peer no
// earlier record registered. The engine writes one only about a peer it
// resolved, so the stream was damaged or written by something else.
var ErrUnregisteredPeer = errors.New("the peers stream names a peer it never registered")

// PeerEntry is one peer as the peers stream leaves it.
type PeerEntry struct {
	ID       PeerID
	ServerID ServerID
	// Former are the peer's earlier server IDs, oldest first.
	Former []ServerID
	Key    ed25519.PublicKey // nil until learned
	// FormerKeys holds the key each former ID had when the peer left it,
	// so requests still signed as that ID (a repeated NotifyNewId) verify
	// after a restart, when the old address may be gone.
	FormerKeys map[ServerID]ed25519.PublicKey
	// KnowsUsAs is this server's ID as the peer knows it: the one to sign
	// with toward it until it accepts a rename of this server. Zero when
	// the peer was met before this server's ID was recorded: it knows the
	// ID this server had then, which is the current one until a rename.
	KnowsUsAs ServerID
}

// OwnID is one of this server's IDs and when it took it.
type OwnID struct {
	ID    ServerID
	Since time.Time
}

// Peers is the peers stream folded: the one fold of it, which the
// registry (adapters/registry) and the projections both use. Its decisions
// are pure too: each returns the records to append, for the caller to
// store and then Apply. It is not safe for concurrent use.
type Peers struct {
	byPeer   map[PeerID]*PeerEntry
	byServer map[ServerID]*PeerEntry // current and former IDs
	own      ServerID
	ownIDs   []OwnID
}

// NewPeers returns the registry before any record.
func NewPeers() *Peers {
	return &Peers{byPeer: map[PeerID]*PeerEntry{}, byServer: map[ServerID]*PeerEntry{}}
}

// Apply folds one record of the peers stream, recorded at at. A record
// about a peer never registered returns ErrUnregisteredPeer and changes
// nothing. Records that repeat what is folded already (a registration of
// a known peer, a rename to the ID the peer has) change nothing either.
func (p *Peers) Apply(e PeerEvent, at time.Time) error {
	switch e := e.(type) {
	case PeerRegistered:
		if _, ok := p.byPeer[e.Peer]; ok {
			return nil
		}
		entry := &PeerEntry{ID: e.Peer, ServerID: e.ServerID, KnowsUsAs: e.OurServerID}
		if entry.KnowsUsAs.IsZero() {
			entry.KnowsUsAs = p.own
		}
		p.byPeer[e.Peer], p.byServer[e.ServerID] = entry, entry
	case PeerKeyLearned:
		entry, err := p.registered(e.Peer, "key learned")
		if err != nil {
			return err
		}
		entry.Key = e.Key
	case PeerRenamed:
		entry, err := p.registered(e.Peer, "rename")
		if err != nil {
			return err
		}
		if entry.ServerID == e.New {
			return nil
		}
		if entry.Key != nil {
			keys := maps.Clone(entry.FormerKeys)
			if keys == nil {
				keys = map[ServerID]ed25519.PublicKey{}
			}
			keys[entry.ServerID] = entry.Key
			entry.FormerKeys = keys
		}
		entry.Former = append(slices.Clip(entry.Former), entry.ServerID)
		entry.ServerID = e.New
		p.byServer[e.New] = entry
	case OwnServerIDChanged:
		// The peers met before this server's ID was first recorded know
		// the ID it had until now.
		if !e.Old.IsZero() {
			for _, entry := range p.byPeer {
				if entry.KnowsUsAs.IsZero() {
					entry.KnowsUsAs = e.Old
				}
			}
		}
		p.own = e.New
		p.ownIDs = append(slices.Clip(p.ownIDs), OwnID{ID: e.New, Since: at})
	case PeerNotifiedOfNewID:
		entry, err := p.registered(e.Peer, "notice of our new ID")
		if err != nil {
			return err
		}
		entry.KnowsUsAs = e.NewID
	default:
		return fmt.Errorf("peers stream: unknown record %T", e)
	}
	return nil
}

func (p *Peers) registered(id PeerID, what string) (*PeerEntry, error) {
	entry, ok := p.byPeer[id]
	if !ok {
		return nil, fmt.Errorf("%w: %s of %s", ErrUnregisteredPeer, what, id)
	}
	return entry, nil
}

// Clone returns a copy that shares nothing mutable with p.
func (p *Peers) Clone() *Peers {
	c := &Peers{byPeer: make(map[PeerID]*PeerEntry, len(p.byPeer)), byServer: make(map[ServerID]*PeerEntry, len(p.byServer)),
		own: p.own, ownIDs: slices.Clip(p.ownIDs)}
	for id, entry := range p.byPeer {
		e := *entry
		c.byPeer[id] = &e
	}
	for server, entry := range p.byServer {
		c.byServer[server] = c.byPeer[entry.ID]
	}
	return c
}

// Resolve finds the peer id names, by its current or a former server ID;
// it implements PeerDirectory.
func (p *Peers) Resolve(id ServerID) (string, ServerID, bool) {
	entry, ok := p.byServer[id]
	if !ok {
		return "", ServerID{}, false
	}
	return string(entry.ID), entry.ServerID, true
}

// Lookup finds the peer a server ID (current or former) belongs to.
func (p *Peers) Lookup(id ServerID) (PeerID, bool) {
	entry, ok := p.byServer[id]
	if !ok {
		return "", false
	}
	return entry.ID, true
}

// Peer returns a registered peer.
func (p *Peers) Peer(id PeerID) (PeerEntry, bool) {
	entry, ok := p.byPeer[id]
	if !ok {
		return PeerEntry{}, false
	}
	return *entry, true
}

// List returns every peer, ordered by server ID, then peer ID.
func (p *Peers) List() []PeerEntry {
	out := make([]PeerEntry, 0, len(p.byPeer))
	for _, entry := range p.byPeer {
		out = append(out, *entry)
	}
	slices.SortFunc(out, func(a, b PeerEntry) int {
		return cmp.Or(cmp.Compare(a.ServerID.String(), b.ServerID.String()), cmp.Compare(a.ID, b.ID))
	})
	return out
}

// Keyless returns the server IDs of the peers whose key is not recorded,
// in order, at most limit of them.
func (p *Peers) Keyless(limit int) []ServerID {
	var out []ServerID
	for _, entry := range p.byPeer {
		if entry.Key == nil {
			out = append(out, entry.ServerID)
		}
	}
	slices.SortFunc(out, func(a, b ServerID) int { return cmp.Compare(a.String(), b.String()) })
	return out[:min(len(out), max(limit, 0))]
}

// OwnID returns this server's recorded ID, if any.
func (p *Peers) OwnID() (ServerID, bool) { return p.own, !p.own.IsZero() }

// OwnIDs returns every ID this server has had, oldest first.
func (p *Peers) OwnIDs() []OwnID { return slices.Clone(p.ownIDs) }

// KnowsOurID reports whether peer knows this server's current ID, so
// needs no notice of it (a peer not registered needs none either).
func (p *Peers) KnowsOurID(peer PeerID) bool {
	entry, ok := p.byPeer[peer]
	return !ok || entry.KnowsUsAs.IsZero() || entry.KnowsUsAs == p.own
}

// IDFor is this server's ID to sign with toward server: the one the peer
// knows, until it accepts a rename. For a server that is not a peer yet,
// the current one.
func (p *Peers) IDFor(server ServerID) ServerID {
	if entry, ok := p.byServer[server]; ok && !entry.KnowsUsAs.IsZero() {
		return entry.KnowsUsAs
	}
	return p.own
}

// Keys returns the recorded public key of every peer, by current and
// former server ID. A former ID whose key was not recorded before the
// rename gets the current key: the rename was accepted only because the
// new ID served the key known for the old one.
func (p *Peers) Keys() map[ServerID]ed25519.PublicKey {
	out := map[ServerID]ed25519.PublicKey{}
	for _, entry := range p.byPeer {
		for _, id := range entry.Former {
			if key := entry.FormerKeys[id]; key != nil {
				out[id] = key
			} else if entry.Key != nil {
				out[id] = entry.Key
			}
		}
		if entry.Key != nil {
			out[entry.ServerID] = entry.Key
		}
	}
	return out
}

// Register decides the records of a first contact with server, which
// becomes peer id: its registration, naming the ID of this server the peer
// knows, and its key, if one is known already. addressed is the ID the
// peer's own first call was addressed to, when it said; otherwise (zero,
// or not an ID this server has had) the peer meets the current one. A
// peer that addressed a former ID knows only that one, so it is signed to
// with it and told of the rename: registered as knowing the current ID, it
// would be signed to with an ID it never met, and register that as a
// second peer.
func (p *Peers) Register(id PeerID, server ServerID, key ed25519.PublicKey, addressed ServerID) []PeerEvent {
	ours := p.own
	if !addressed.IsZero() && slices.ContainsFunc(p.ownIDs, func(o OwnID) bool { return o.ID == addressed }) {
		ours = addressed
	}
	out := []PeerEvent{PeerRegistered{Peer: id, ServerID: server, OurServerID: ours}}
	if key != nil {
		out = append(out, PeerKeyLearned{Peer: id, Key: key})
	}
	return out
}

// LearnKey decides what a key fetched for server records: a key new or
// changed for a peer's current ID, nothing otherwise. registered is false
// for a server that is not a peer, whose key is for the caller to hold
// until its first contact registers it.
func (p *Peers) LearnKey(server ServerID, key ed25519.PublicKey) (records []PeerEvent, registered bool) {
	entry, ok := p.byServer[server]
	if !ok {
		return nil, false
	}
	if entry.ServerID != server || entry.Key.Equal(key) {
		return nil, true
	}
	return []PeerEvent{PeerKeyLearned{Peer: entry.ID, Key: key}}, true
}

// KeyHolder finds the peer whose recorded key is key, if any.
func (p *Peers) KeyHolder(key ed25519.PublicKey) (PeerEntry, bool) {
	for _, entry := range p.byPeer {
		if entry.Key != nil && entry.Key.Equal(key) {
			return *entry, true
		}
	}
	return PeerEntry{}, false
}

// ChangeOwnID decides the record of this server's ID becoming id: the
// first one, or a rename; nothing if it is the current one.
func (p *Peers) ChangeOwnID(id ServerID) []PeerEvent {
	if id == p.own {
		return nil
	}
	return []PeerEvent{OwnServerIDChanged{Old: p.own, New: id}}
}

// PeersImage is the fold in plain values: what a snapshot of the peers
// stream holds, so that a start reads it and the records after it instead
// of the whole stream.
type PeersImage struct {
	// Peers are sorted by peer ID.
	Peers []PeerEntry
	// Servers names the peer of every server ID, current or former, as
	// the fold resolves it.
	Servers map[ServerID]PeerID
	OwnIDs  []OwnID
}

// Image returns the fold as plain values. The fold never changes an
// entry's slices or maps in place (it replaces them), so sharing them is
// safe.
func (p *Peers) Image() PeersImage {
	img := PeersImage{Peers: make([]PeerEntry, 0, len(p.byPeer)), Servers: make(map[ServerID]PeerID, len(p.byServer)), OwnIDs: p.ownIDs}
	for _, entry := range p.byPeer {
		img.Peers = append(img.Peers, *entry)
	}
	slices.SortFunc(img.Peers, func(a, b PeerEntry) int { return cmp.Compare(a.ID, b.ID) })
	for server, entry := range p.byServer {
		img.Servers[server] = entry.ID
	}
	return img
}

// PeersFromImage returns the fold img shows. An image naming, for a server
// ID, a peer it does not hold is refused with ErrUnregisteredPeer.
func PeersFromImage(img PeersImage) (*Peers, error) {
	p := NewPeers()
	for _, entry := range img.Peers {
		p.byPeer[entry.ID] = &entry
	}
	for server, id := range img.Servers {
		entry, ok := p.byPeer[id]
		if !ok {
			return nil, fmt.Errorf("%w: server %s names %s", ErrUnregisteredPeer, server, id)
		}
		p.byServer[server] = entry
	}
	p.ownIDs = img.OwnIDs // Apply appends to a clipped copy
	if n := len(img.OwnIDs); n > 0 {
		p.own = img.OwnIDs[n-1].ID
	}
	return p, nil
}
