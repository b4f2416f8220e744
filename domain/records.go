package domain

import "time"

// Position is a record's place in the store's global order: a pair of
// numbers, as EventStoreDB's $all positions are (the embedded store sets
// both to the same number).
type Position struct {
	Commit, Prepare uint64
}

// Less reports whether p comes before q in the global order.
func (p Position) Less(q Position) bool {
	if p.Commit != q.Commit {
		return p.Commit < q.Commit
	}
	return p.Prepare < q.Prepare
}

// StreamKind says which of Postbox's streams a record is in.
type StreamKind int

// The streams (ARCHITECTURE.md, "Streams").
const (
	// StreamOther is a stream of another application sharing the store.
	StreamOther StreamKind = iota
	StreamPeers
	StreamOutbox
	StreamDelivery
	StreamInbox
	// StreamDatabase holds the database's identity.
	StreamDatabase
)

// Record is one stored record decoded to domain values: where it is, and
// what it says. The store adapters make them (adapters/streams decodes);
// the folds read them.
type Record struct {
	Stream   string
	Revision uint64
	Position Position
	Created  time.Time
	Kind     StreamKind
	// Peer is the peer a per-peer stream (outbox, delivery, inbox) is of.
	Peer PeerID
	// Event is what the record says: a PeerEvent (peers), EventEnqueued
	// (outbox), a DeliveryEvent (delivery), EventReceived or EventsReceived
	// (inbox) or DatabaseCreated (database). It is nil when Unknown or Err is set, and
	// in a stream of another application.
	Event any
	// Unknown: a record of a type this build does not know (a newer build
	// wrote it), skipped for forward compatibility.
	Unknown bool
	// Err: a record of a known type that does not decode.
	Err error
}

// FederatedEvent is an event of protocol.sync.v1 as the rules read it
// (PROTOCOL.md §4); nil for a kind this build does not know.
type FederatedEvent interface{ federatedEvent() }

// UserAddedToGuild: a user of the receiving server joined a guild of the
// sending server.
type UserAddedToGuild struct{ UserID, GuildID uint64 }

// UserRemovedFromGuild: a user of the receiving server left a guild of the
// sending server.
type UserRemovedFromGuild struct{ UserID, GuildID uint64 }

// UserInvited: a user of the sending server invited a user of the
// receiving server.
type UserInvited struct {
	UserID, InviterID uint64
	InviteID          string
}

// UserRejectedInvite: a user of the sending server rejected an invite to a
// guild of the receiving server.
type UserRejectedInvite struct {
	GuildID, UserID uint64
	InviteID        string
}

func (UserAddedToGuild) federatedEvent()     {}
func (UserRemovedFromGuild) federatedEvent() {}
func (UserInvited) federatedEvent()          {}
func (UserRejectedInvite) federatedEvent()   {}

// EventEnqueued is a record of a peer's outbox: an event for the peer.
type EventEnqueued struct {
	Event FederatedEvent
}

// EventReceived is a record of a peer's inbox: an event received from it.
type EventReceived struct {
	Event FederatedEvent
	// ViaPull: it came in a Pull reply, not a push.
	ViaPull bool
	// SenderSeq is the sender's sequence number, if it sent one, counted
	// in SenderEpoch; SenderEventID the ID of the event's record in the
	// sender's outbox, if it sent it.
	SenderSeq     *uint64
	SenderEpoch   uint64
	SenderEventID []byte
	// SenderTerm is the highest owner term of the sender's pushes this
	// inbox had seen when the record was written (0: none); every record
	// carries it forward, pulled ones too, so the newest record holds it.
	SenderTerm uint64
	// TooLargeBytes is set, and Event nil, in the marker stored for an
	// event too large for the store: the event's size in bytes.
	TooLargeBytes *uint64
}

// EventsReceived is a record of a peer's inbox holding a run of events
// received together, in the order they were applied: each counts as if it
// were a record of its own at the run's revision.
type EventsReceived struct {
	Events []EventReceived
}

// ReceivedIn returns the events an inbox record's Event holds, in order,
// whether one (EventReceived) or a run (EventsReceived); ok is false for
// anything else.
func ReceivedIn(event any) (events []EventReceived, ok bool) {
	switch e := event.(type) {
	case EventReceived:
		return []EventReceived{e}, true
	case EventsReceived:
		return e.Events, true
	}
	return nil, false
}

// DatabaseCreated is the record of the database's identity.
type DatabaseCreated struct {
	ID string
}
