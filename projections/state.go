// Package projections folds Postbox's streams into read models: each peer's
// delivery cursors and registry entry, and the effects of the events
// received from peers (every local user's guild list and pending invites);
// and checks the audit's rules over them.
//
// A State is a pure fold over the store's records in global order, decoded
// to domain values (domain.Record; adapters/streams decodes them). Each
// stream is folded by the domain's one fold of it: the peers stream by
// domain.Peers, a delivery stream by domain.Outbox, an inbox by
// domain.Inbox, the same folds the engine and the registry use. A State
// remembers the position of the last record it applied and skips anything
// not after it, so feeding it the same records twice changes nothing, and
// the effects themselves are set-like. adapters/projector follows the store
// into a State, checkpoints it to a file, and runs the audit over the store.
package projections

import (
	"bytes"
	"cmp"
	"slices"
	"time"

	"github.com/harmony-postbox/postbox/domain"
)

// PeerView is one peer's state.
type PeerView struct {
	PeerID, ServerID string
	FormerServerIDs  []string // oldest first (from PeerRenamed)
	PublicKey        []byte   // from PeerKeyLearned, if any

	// Delivered is where delivery goes on: every event below it was
	// delivered or skipped; Skipped of them were skipped.
	Head, Delivered, HandedOver uint64
	Skipped                     uint64
	LastSkip                    *domain.EventsSkipped // the last skip recorded, if any
	// Epoch is the current epoch toward the peer; EpochsStarted counts the
	// times the peer's account showed this server's store went back, and
	// ReceiverRewinds the times it showed the peer lost events.
	Epoch                          uint64
	EpochsStarted, ReceiverRewinds uint32
	Mode                           domain.DeliveryMode
	Attempts                       uint32    // attempts of the last EventPushed/QueueModeEntered
	LastPush, LastPullServed       time.Time // Record.Created of the last EventPushed / PullServed
	LastError                      string    // from the last QueueModeEntered; cleared by a later push
	EventsReceived                 uint64    // events in the inbox (a record may hold a run of them)
	KnowsOurServerID               bool      // false after OwnServerIdChanged until PeerNotifiedOfNewId for this peer
	// Owner is the replica that runs the peer's delivery, from the last
	// OwnerTermStarted ("" if none), under term OwnerTerm.
	Owner     string
	OwnerTerm uint64
}

// Pending is how many outbox events are not yet delivered.
func (v PeerView) Pending() uint64 {
	if v.Delivered >= v.Head {
		return 0 // a cursor past the head is Audit's business, not an underflow
	}
	return v.Head - v.Delivered
}

// GuildRef is one entry of a local user's guild list: a guild of a peer.
type GuildRef struct {
	GuildID  uint64
	ServerID string
}

// Invite is a pending invite for a local user, sent by a peer.
type Invite struct {
	InviteID  string
	InviterID uint64
	ServerID  string
}

// SentInvite is an invite this server sent to a user of a peer, not (yet)
// rejected.
type SentInvite struct {
	InviteID  string
	InviteeID uint64 // a user of the peer
	InviterID uint64 // a local user
	ServerID  string // the peer's current server ID
}

// State is every projection at one position of the global order. It is not
// safe for concurrent use; its followers guard their own and hand out clones.
type State struct {
	pos domain.Position
	// applied tells a zero position from "nothing applied": EventStoreDB
	// positions may start at zero.
	applied bool
	// unknown counts records of types this build does not know, skipped
	// for forward compatibility.
	unknown uint64
	// databaseID is the store's identity (its database stream), once known.
	databaseID string
	// registry is the peers stream, folded by its one fold; when it was
	// started from a snapshot, peersFrom is the revision the snapshot
	// covers up to, and the records before it are passed over.
	registry  *domain.Peers
	peersFrom uint64
	peers     map[domain.PeerID]*peerState
	// Effects are keyed by the stable peer ID, not the server ID, so a
	// rename keeps them; readers see the peer's current server ID.
	guilds  map[uint64]map[guildKey]struct{}
	invites map[uint64]map[inviteKey]uint64 // invitee → invite → inviter
	sent    map[inviteKey]sentInvite
}

// peerState is what the per-peer streams say of a peer.
type peerState struct {
	out       domain.Outbox
	in        domain.Inbox
	attempts  uint32
	lastPush  time.Time
	lastPull  time.Time
	lastError string
	lastSkip  *domain.EventsSkipped
	epochs    uint32 // EpochStarted records
	rewinds   uint32 // ReceiverReported records that sent events again
	received  uint64 // events in the inbox records, which may hold runs
	// receivedAt: received was seeded from a snapshot at this position,
	// which counted the records up to it (receivedSeeded).
	receivedAt     domain.Position
	receivedSeeded bool
}

// countReceived counts the n events of the inbox record at position at,
// unless a snapshot p's count started from counted it.
func (p *peerState) countReceived(at domain.Position, n uint64) {
	if !p.receivedSeeded || p.receivedAt.Less(at) {
		p.received += n
	}
}

type guildKey struct {
	guild uint64
	peer  domain.PeerID
}

type inviteKey struct {
	peer   domain.PeerID
	invite string
}

type sentInvite struct {
	invitee, inviter uint64
}

// NewState returns the state before any event.
func NewState() *State {
	return &State{
		registry: domain.NewPeers(),
		peers:    map[domain.PeerID]*peerState{},
		guilds:   map[uint64]map[guildKey]struct{}{},
		invites:  map[uint64]map[inviteKey]uint64{},
		sent:     map[inviteKey]sentInvite{},
	}
}

// Position is the position of the last record applied (zero before any);
// ok is false before any.
func (s *State) Position() (pos domain.Position, ok bool) { return s.pos, s.applied }

// UnknownRecords is how many records of unknown types were skipped.
func (s *State) UnknownRecords() uint64 { return s.unknown }

// OwnServerID is this server's ID as of the last OwnServerIdChanged, if any.
func (s *State) OwnServerID() string {
	own, _ := s.registry.OwnID()
	return own.String()
}

// DatabaseID is the identity of the store the state's positions belong to.
func (s *State) DatabaseID() string { return s.databaseID }

// SetDatabaseID records the identity of the store the state follows: a
// follower learns it before it replays the record that holds it.
func (s *State) SetDatabaseID(id string) { s.databaseID = id }

// Apply folds one record. It skips r if r.Position is not after the
// state's position, so replaying records is harmless. A record that could
// not be decoded, or that its stream's fold refuses, returns an error, but
// the position still moves past it: one bad record must not stop the
// projections (the audit reports it).
func (s *State) Apply(r domain.Record) error {
	if s.applied && !s.pos.Less(r.Position) {
		return nil
	}
	s.pos, s.applied = r.Position, true
	switch {
	case r.Kind == domain.StreamOther:
		return nil // not a Postbox stream: another application shares the store
	case r.Unknown:
		s.unknown++
		return nil
	case r.Err != nil:
		// The outbox and inbox still hold the record: it counts.
		switch r.Kind {
		case domain.StreamOutbox:
			s.peer(r.Peer).out.Stored(r.Revision)
		case domain.StreamInbox:
			p := s.peer(r.Peer)
			p.in.Count = max(p.in.Count, r.Revision+1)
			p.countReceived(r.Position, 1) // however many events it holds
		}
		return r.Err
	}
	switch e := r.Event.(type) {
	case domain.PeerEvent:
		if r.Revision < s.peersFrom {
			return nil // in the snapshot the registry started from
		}
		return s.registry.Apply(e, r.Created)
	case domain.EventEnqueued:
		s.applyOutbox(r.Peer, r.Revision, e)
	case domain.DeliveryEvent:
		s.applyDelivery(r.Peer, r.Created, e)
	case domain.EventReceived, domain.EventsReceived:
		events, _ := domain.ReceivedIn(e)
		for _, rec := range events {
			s.applyInbox(r.Peer, r.Revision, rec)
		}
		s.peer(r.Peer).countReceived(r.Position, uint64(len(events)))
	case domain.DatabaseCreated:
		if s.databaseID == "" {
			s.databaseID = e.ID
		}
	}
	return nil
}

// peer returns id's state, creating it: the per-peer streams may be read
// before the registration that introduced the peer, in a store shared oddly.
func (s *State) peer(id domain.PeerID) *peerState {
	p, ok := s.peers[id]
	if !ok {
		p = &peerState{}
		s.peers[id] = p
	}
	return p
}

func (s *State) applyOutbox(id domain.PeerID, rev uint64, e domain.EventEnqueued) {
	s.peer(id).out.Stored(rev)
	switch ev := e.Event.(type) {
	case domain.UserInvited:
		// This server invites a user of the peer; the peer may reject it.
		s.sent[inviteKey{id, ev.InviteID}] = sentInvite{invitee: ev.UserID, inviter: ev.InviterID}
	case domain.UserRejectedInvite:
		// A local user rejected the peer's invite: it is no longer pending.
		s.dropInvite(ev.UserID, inviteKey{id, ev.InviteID})
	}
}

func (s *State) applyDelivery(id domain.PeerID, at time.Time, ev domain.DeliveryEvent) {
	p := s.peer(id)
	before := p.out.Delivered
	p.out.Apply(ev)
	switch e := ev.(type) {
	case domain.EpochStarted:
		p.epochs++
	case domain.ReceiverReported:
		if p.out.Delivered < before {
			p.rewinds++
		}
	case domain.EventPushed:
		p.attempts, p.lastPush, p.lastError = e.Attempts, at.UTC(), ""
	case domain.QueueModeEntered:
		p.attempts, p.lastError = e.Attempts, e.LastError
	case domain.PullServed:
		p.lastPull = at.UTC()
	case domain.EventsSkipped:
		p.lastSkip = &e
	}
}

func (s *State) applyInbox(id domain.PeerID, rev uint64, rec domain.EventReceived) {
	p := s.peer(id)
	p.in.Apply(rev, rec)
	// PROTOCOL.md §4: the sender is the peer whose inbox this is.
	switch e := rec.Event.(type) {
	case domain.UserAddedToGuild:
		g := s.guilds[e.UserID]
		if g == nil {
			g = map[guildKey]struct{}{}
			s.guilds[e.UserID] = g
		}
		g[guildKey{e.GuildID, id}] = struct{}{}
	case domain.UserRemovedFromGuild:
		if g := s.guilds[e.UserID]; g != nil {
			delete(g, guildKey{e.GuildID, id})
			if len(g) == 0 {
				delete(s.guilds, e.UserID)
			}
		}
	case domain.UserInvited:
		inv := s.invites[e.UserID]
		if inv == nil {
			inv = map[inviteKey]uint64{}
			s.invites[e.UserID] = inv
		}
		inv[inviteKey{id, e.InviteID}] = e.InviterID
	case domain.UserRejectedInvite:
		// Sent by the invitee's server to the guild's server (this one):
		// the invite this server sent is no longer pending.
		delete(s.sent, inviteKey{id, e.InviteID})
	}
}

func (s *State) dropInvite(user uint64, k inviteKey) {
	if inv := s.invites[user]; inv != nil {
		delete(inv, k)
		if len(inv) == 0 {
			delete(s.invites, user)
		}
	}
}

// ServerIDOf is a peer's current server ID ("" if not registered).
func (s *State) ServerIDOf(id domain.PeerID) string {
	e, _ := s.registry.Peer(id)
	return e.ServerID.String()
}

// peerIDs lists every peer the streams name: registered, or with streams.
func (s *State) peerIDs() []domain.PeerID {
	ids := make([]domain.PeerID, 0, len(s.peers))
	for id := range s.peers {
		ids = append(ids, id)
	}
	for _, e := range s.registry.List() {
		if _, ok := s.peers[e.ID]; !ok {
			ids = append(ids, e.ID)
		}
	}
	return ids
}

func (s *State) view(id domain.PeerID) PeerView {
	entry, _ := s.registry.Peer(id)
	var p peerState
	if ps := s.peers[id]; ps != nil {
		p = *ps
	}
	former := make([]string, 0, len(entry.Former))
	for _, f := range entry.Former {
		former = append(former, f.String())
	}
	if len(former) == 0 {
		former = nil
	}
	return PeerView{
		PeerID:           string(id),
		ServerID:         entry.ServerID.String(),
		FormerServerIDs:  former,
		PublicKey:        bytes.Clone(entry.Key),
		Head:             p.out.Head,
		Delivered:        p.out.Delivered,
		HandedOver:       p.out.HandedOver,
		Skipped:          p.out.Skipped,
		Epoch:            p.out.Epoch,
		EpochsStarted:    p.epochs,
		ReceiverRewinds:  p.rewinds,
		LastSkip:         cloneSkip(p.lastSkip),
		Mode:             p.out.Mode,
		Attempts:         p.attempts,
		LastPush:         p.lastPush,
		LastPullServed:   p.lastPull,
		LastError:        p.lastError,
		Owner:            p.out.Owner.Replica,
		OwnerTerm:        p.out.Owner.Term,
		EventsReceived:   p.received,
		KnowsOurServerID: s.registry.KnowsOurID(id),
	}
}

func cloneSkip(s *domain.EventsSkipped) *domain.EventsSkipped {
	if s == nil {
		return nil
	}
	c := *s
	return &c
}

// Peers lists every peer, ordered by server ID (then peer ID).
func (s *State) Peers() []PeerView {
	ids := s.peerIDs()
	out := make([]PeerView, 0, len(ids))
	for _, id := range ids {
		out = append(out, s.view(id))
	}
	slices.SortFunc(out, func(a, b PeerView) int {
		return cmp.Or(cmp.Compare(a.ServerID, b.ServerID), cmp.Compare(a.PeerID, b.PeerID))
	})
	return out
}

// Peer finds a peer by its current server ID, or else by a former one.
func (s *State) Peer(serverID string) (PeerView, bool) {
	if serverID == "" {
		return PeerView{}, false
	}
	peers := s.Peers()
	for _, v := range peers {
		if v.ServerID == serverID {
			return v, true
		}
	}
	for _, v := range peers {
		if slices.Contains(v.FormerServerIDs, serverID) {
			return v, true
		}
	}
	return PeerView{}, false
}

// Guilds is a local user's guild list, sorted by server ID then guild ID.
func (s *State) Guilds(userID uint64) []GuildRef {
	out := make([]GuildRef, 0, len(s.guilds[userID]))
	for k := range s.guilds[userID] {
		out = append(out, GuildRef{GuildID: k.guild, ServerID: s.ServerIDOf(k.peer)})
	}
	slices.SortFunc(out, func(a, b GuildRef) int {
		return cmp.Or(cmp.Compare(a.ServerID, b.ServerID), cmp.Compare(a.GuildID, b.GuildID))
	})
	return out
}

// Invites is a local user's pending invites, sorted by server ID then
// invite ID.
func (s *State) Invites(userID uint64) []Invite {
	out := make([]Invite, 0, len(s.invites[userID]))
	for k, inviter := range s.invites[userID] {
		out = append(out, Invite{InviteID: k.invite, InviterID: inviter, ServerID: s.ServerIDOf(k.peer)})
	}
	slices.SortFunc(out, func(a, b Invite) int {
		return cmp.Or(cmp.Compare(a.ServerID, b.ServerID), cmp.Compare(a.InviteID, b.InviteID))
	})
	return out
}

// SentInvites lists the invites this server sent that were not rejected,
// sorted by server ID then invite ID.
func (s *State) SentInvites() []SentInvite {
	out := make([]SentInvite, 0, len(s.sent))
	for k, v := range s.sent {
		out = append(out, SentInvite{InviteID: k.invite, InviteeID: v.invitee, InviterID: v.inviter, ServerID: s.ServerIDOf(k.peer)})
	}
	slices.SortFunc(out, func(a, b SentInvite) int {
		return cmp.Or(cmp.Compare(a.ServerID, b.ServerID), cmp.Compare(a.InviteID, b.InviteID))
	})
	return out
}

// Inboxes returns each peer's inbox fold, by peer.
func (s *State) Inboxes() map[domain.PeerID]domain.Inbox {
	out := make(map[domain.PeerID]domain.Inbox, len(s.peers))
	for id, p := range s.peers {
		if p.in.Count > 0 {
			out[id] = p.in
		}
	}
	return out
}

// Clone returns a deep copy.
func (s *State) Clone() *State {
	c := &State{
		pos: s.pos, applied: s.applied, unknown: s.unknown, databaseID: s.databaseID,
		registry: s.registry.Clone(), peersFrom: s.peersFrom,
		peers:   make(map[domain.PeerID]*peerState, len(s.peers)),
		guilds:  make(map[uint64]map[guildKey]struct{}, len(s.guilds)),
		invites: make(map[uint64]map[inviteKey]uint64, len(s.invites)),
	}
	for id, p := range s.peers {
		cp := *p
		c.peers[id] = &cp
	}
	for u, g := range s.guilds {
		c.guilds[u] = cloneMap(g)
	}
	for u, inv := range s.invites {
		c.invites[u] = cloneMap(inv)
	}
	c.sent = cloneMap(s.sent)
	return c
}

func cloneMap[K comparable, V any](m map[K]V) map[K]V {
	c := make(map[K]V, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}
