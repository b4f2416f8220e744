// Package projections folds Postbox's streams into read models: each peer's
// delivery cursors and registry entry, and the effects of the events
// received from peers (every local user's guild list and pending invites).
//
// A State is a pure fold over the store's global order. It remembers the
// position of the last event it applied and skips anything not after it, so
// feeding it the same events twice changes nothing, and the effects
// themselves are set-like. Live keeps a State current by following the
// store, checkpointing it to a file; Audit replays every stream into a
// fresh State and checks the invariants the delivery engine promises.
package projections

import (
	"bytes"
	"cmp"
	"slices"
	"strings"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
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
	LastPush, LastPullServed       time.Time // RecordedEvent.Created of the last EventPushed / PullServed
	LastError                      string    // from the last QueueModeEntered; cleared by a later push
	EventsReceived                 uint64    // inbox length
	KnowsOurServerID               bool      // false after OwnServerIdChanged until PeerNotifiedOfNewId for this peer
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
// safe for concurrent use; Live guards its own and hands out clones.
type State struct {
	pos eventstore.Position
	// applied tells a zero position from "nothing applied": EventStoreDB
	// positions may start at zero.
	applied bool
	// unknown counts records of types this build does not know, skipped
	// for forward compatibility.
	unknown     uint64
	ownServerID string
	// databaseID is the store's identity (streams.Database), once known.
	databaseID string
	peers      map[streams.PeerID]*peerState
	// Effects are keyed by the stable peer ID, not the server ID, so a
	// rename keeps them; readers see the peer's current server ID.
	guilds  map[uint64]map[guildKey]struct{}
	invites map[uint64]map[inviteKey]uint64 // invitee → invite → inviter
	sent    map[inviteKey]sentInvite
}

type peerState struct {
	serverID  string
	former    []string
	publicKey []byte
	out       domain.Outbox
	attempts  uint32
	lastPush  time.Time
	lastPull  time.Time
	lastError string
	lastSkip  *domain.EventsSkipped
	epochs    uint32 // EpochStarted records
	rewinds   uint32 // ReceiverReported records that sent events again
	received  uint64
	lastSeq   uint64 // highest sender sequence number in the inbox, if hasSeq, in seqEpoch
	hasSeq    bool
	seqEpoch  uint64
	// knowsUsAs is this server's ID as the peer knows it: the one it had
	// when they met, or the last one the peer accepted; "" when this
	// server's ID was not recorded yet, which is the current one.
	knowsUsAs string
}

type guildKey struct {
	guild uint64
	peer  streams.PeerID
}

type inviteKey struct {
	peer   streams.PeerID
	invite string
}

type sentInvite struct {
	invitee, inviter uint64
}

// NewState returns the state before any event.
func NewState() *State {
	return &State{
		peers:   map[streams.PeerID]*peerState{},
		guilds:  map[uint64]map[guildKey]struct{}{},
		invites: map[uint64]map[inviteKey]uint64{},
		sent:    map[inviteKey]sentInvite{},
	}
}

// Position is the position of the last event applied (zero before any).
func (s *State) Position() eventstore.Position { return s.pos }

// UnknownRecords is how many records of unknown types were skipped.
func (s *State) UnknownRecords() uint64 { return s.unknown }

// OwnServerID is this server's ID as of the last OwnServerIdChanged, if any.
func (s *State) OwnServerID() string { return s.ownServerID }

// Apply folds one recorded event. It skips r if r.Position is not after
// the state's position, so replaying events is harmless. A record that
// cannot be decoded returns an error, but the position still moves past it:
// one bad record must not stop the projections (Audit reports it).
func (s *State) Apply(r eventstore.RecordedEvent) error {
	if s.applied && !s.pos.Less(r.Position) {
		return nil
	}
	s.pos, s.applied = r.Position, true
	kind, peer := streamKind(r.Stream)
	if kind == kindOther {
		return nil // not a Postbox stream: another application shares the store
	}
	if !knownType(kind, r.Type) {
		s.unknown++
		return nil
	}
	switch kind {
	case kindPeers:
		return s.applyPeers(r)
	case kindOutbox:
		return s.applyOutbox(peer, r)
	case kindDelivery:
		return s.applyDelivery(peer, r)
	case kindInbox:
		return s.applyInbox(peer, r)
	case kindDatabase:
		if s.databaseID == "" {
			id, err := streams.DecodeDatabaseCreated(r)
			s.databaseID = id
			return err
		}
	}
	return nil
}

type streamKindT int

const (
	kindOther streamKindT = iota
	kindPeers
	kindOutbox
	kindDelivery
	kindInbox
	kindDatabase
)

func streamKind(stream string) (streamKindT, streams.PeerID) {
	switch {
	case stream == streams.Peers:
		return kindPeers, ""
	case stream == streams.Database:
		return kindDatabase, ""
	case strings.HasPrefix(stream, streams.OutboxPrefix):
		return kindOutbox, streams.PeerID(strings.TrimPrefix(stream, streams.OutboxPrefix))
	case strings.HasPrefix(stream, streams.DeliveryPrefix):
		return kindDelivery, streams.PeerID(strings.TrimPrefix(stream, streams.DeliveryPrefix))
	case strings.HasPrefix(stream, streams.InboxPrefix):
		return kindInbox, streams.PeerID(strings.TrimPrefix(stream, streams.InboxPrefix))
	}
	return kindOther, ""
}

func knownType(kind streamKindT, typ string) bool {
	switch kind {
	case kindPeers:
		switch typ {
		case streams.TypePeerSeen, streams.TypePeerKeyLearned, streams.TypePeerRenamed,
			streams.TypeOwnServerIDChanged, streams.TypePeerNotifiedOfNewID:
			return true
		}
	case kindOutbox:
		return typ == streams.TypeEventEnqueued
	case kindDelivery:
		switch typ {
		case streams.TypeEventPushed, streams.TypeQueueModeEntered, streams.TypePullServed,
			streams.TypePullAcknowledged, streams.TypePushResumed, streams.TypeEventsSkipped,
			streams.TypeEpochStarted, streams.TypeReceiverReported:
			return true
		}
	case kindInbox:
		return typ == streams.TypeEventReceived
	case kindDatabase:
		return typ == streams.TypeDatabaseCreated
	}
	return false
}

// peer returns id's state, creating it: the per-peer streams may be read
// before the PeerSeen that introduced the peer, in a store shared oddly.
func (s *State) peer(id streams.PeerID) *peerState {
	p, ok := s.peers[id]
	if !ok {
		p = &peerState{knowsUsAs: s.ownServerID}
		s.peers[id] = p
	}
	return p
}

func (s *State) applyPeers(r eventstore.RecordedEvent) error {
	m, err := streams.DecodePeers(r)
	if err != nil {
		return err
	}
	switch m := m.(type) {
	case *eventsv1.PeerSeen:
		p := s.peer(streams.PeerID(m.GetPeerId()))
		if p.serverID == "" {
			p.serverID = m.GetServerId()
		}
	case *eventsv1.PeerKeyLearned:
		s.peer(streams.PeerID(m.GetPeerId())).publicKey = bytes.Clone(m.GetPublicKey())
	case *eventsv1.PeerRenamed:
		p := s.peer(streams.PeerID(m.GetPeerId()))
		if p.serverID == m.GetNewServerId() {
			return nil // already applied under another position: nothing moves
		}
		old := p.serverID
		if old == "" {
			old = m.GetOldServerId()
		}
		if old != "" {
			p.former = append(p.former, old)
		}
		p.serverID = m.GetNewServerId()
	case *eventsv1.OwnServerIdChanged:
		// The first record of this server's ID has no old one: it is not a
		// rename, and every peer met so far knows that ID.
		if old := m.GetOldServerId(); old != "" {
			for _, p := range s.peers {
				if p.knowsUsAs == "" {
					p.knowsUsAs = old
				}
			}
		}
		s.ownServerID = m.GetNewServerId()
	case *eventsv1.PeerNotifiedOfNewId:
		// Compared with the current ID when read: a peer told of an ID this
		// server has since changed again does not know the current one.
		s.peer(streams.PeerID(m.GetPeerId())).knowsUsAs = m.GetNewServerId()
	}
	return nil
}

func (s *State) applyOutbox(id streams.PeerID, r eventstore.RecordedEvent) error {
	p := s.peer(id)
	p.out.Head = max(p.out.Head, r.Revision+1)
	ev, err := streams.DecodeEnqueued(r)
	if err != nil {
		return err
	}
	switch k := ev.GetKind().(type) {
	case *syncv1.Event_UserInvited_:
		// This server invites a user of the peer; the peer may reject it.
		inv := k.UserInvited
		s.sent[inviteKey{id, inv.GetInviteId()}] = sentInvite{invitee: inv.GetUserId(), inviter: inv.GetInviterId()}
	case *syncv1.Event_UserRejectedInvite_:
		// A local user rejected the peer's invite: it is no longer pending.
		rej := k.UserRejectedInvite
		s.dropInvite(rej.GetUserId(), inviteKey{id, rej.GetInviteId()})
	}
	return nil
}

func (s *State) applyDelivery(id streams.PeerID, r eventstore.RecordedEvent) error {
	ev, err := streams.DecodeDelivery(r)
	if err != nil {
		return err
	}
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
		p.attempts, p.lastPush, p.lastError = e.Attempts, r.Created.UTC(), ""
	case domain.QueueModeEntered:
		p.attempts, p.lastError = e.Attempts, e.LastError
	case domain.PullServed:
		p.lastPull = r.Created.UTC()
	case domain.EventsSkipped:
		p.lastSkip = &e
	}
	return nil
}

func (s *State) applyInbox(id streams.PeerID, r eventstore.RecordedEvent) error {
	p := s.peer(id)
	p.received = max(p.received, r.Revision+1)
	rec, err := streams.DecodeReceived(r)
	if err != nil {
		return err
	}
	if seq := rec.SenderSeq; seq != nil && (!p.hasSeq || rec.SenderEpoch != p.seqEpoch || *seq > p.lastSeq) {
		p.lastSeq, p.hasSeq, p.seqEpoch = *seq, true, rec.SenderEpoch
	}
	// PROTOCOL.md §4: the sender is the peer whose inbox this is.
	switch k := rec.Event.GetKind().(type) {
	case *syncv1.Event_UserAddedToGuild_:
		e := k.UserAddedToGuild
		g := s.guilds[e.GetUserId()]
		if g == nil {
			g = map[guildKey]struct{}{}
			s.guilds[e.GetUserId()] = g
		}
		g[guildKey{e.GetGuildId(), id}] = struct{}{}
	case *syncv1.Event_UserRemovedFromGuild_:
		e := k.UserRemovedFromGuild
		if g := s.guilds[e.GetUserId()]; g != nil {
			delete(g, guildKey{e.GetGuildId(), id})
			if len(g) == 0 {
				delete(s.guilds, e.GetUserId())
			}
		}
	case *syncv1.Event_UserInvited_:
		e := k.UserInvited
		inv := s.invites[e.GetUserId()]
		if inv == nil {
			inv = map[inviteKey]uint64{}
			s.invites[e.GetUserId()] = inv
		}
		inv[inviteKey{id, e.GetInviteId()}] = e.GetInviterId()
	case *syncv1.Event_UserRejectedInvite_:
		// Sent by the invitee's server to the guild's server (this one):
		// the invite this server sent is no longer pending.
		delete(s.sent, inviteKey{id, k.UserRejectedInvite.GetInviteId()})
	}
	return nil
}

func (s *State) dropInvite(user uint64, k inviteKey) {
	if inv := s.invites[user]; inv != nil {
		delete(inv, k)
		if len(inv) == 0 {
			delete(s.invites, user)
		}
	}
}

func (s *State) serverID(id streams.PeerID) string {
	if p, ok := s.peers[id]; ok {
		return p.serverID
	}
	return ""
}

func (p *peerState) view(id streams.PeerID, ownServerID string) PeerView {
	return PeerView{
		PeerID:           string(id),
		ServerID:         p.serverID,
		FormerServerIDs:  slices.Clone(p.former),
		PublicKey:        bytes.Clone(p.publicKey),
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
		EventsReceived:   p.received,
		KnowsOurServerID: p.knowsUsAs == "" || p.knowsUsAs == ownServerID,
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
	out := make([]PeerView, 0, len(s.peers))
	for id, p := range s.peers {
		out = append(out, p.view(id, s.ownServerID))
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
		out = append(out, GuildRef{GuildID: k.guild, ServerID: s.serverID(k.peer)})
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
		out = append(out, Invite{InviteID: k.invite, InviterID: inviter, ServerID: s.serverID(k.peer)})
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
		out = append(out, SentInvite{InviteID: k.invite, InviteeID: v.invitee, InviterID: v.inviter, ServerID: s.serverID(k.peer)})
	}
	slices.SortFunc(out, func(a, b SentInvite) int {
		return cmp.Or(cmp.Compare(a.ServerID, b.ServerID), cmp.Compare(a.InviteID, b.InviteID))
	})
	return out
}

// Clone returns a deep copy.
func (s *State) Clone() *State {
	c := &State{
		pos: s.pos, applied: s.applied, unknown: s.unknown, ownServerID: s.ownServerID, databaseID: s.databaseID,
		peers:   make(map[streams.PeerID]*peerState, len(s.peers)),
		guilds:  make(map[uint64]map[guildKey]struct{}, len(s.guilds)),
		invites: make(map[uint64]map[inviteKey]uint64, len(s.invites)),
		sent:    make(map[inviteKey]sentInvite, len(s.sent)),
	}
	for id, p := range s.peers {
		cp := *p
		cp.former = slices.Clone(p.former)
		cp.publicKey = bytes.Clone(p.publicKey)
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
