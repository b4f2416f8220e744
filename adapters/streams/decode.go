package streams

import (
	"fmt"
	"strings"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/domain"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// Decode reads any record into domain values: the one decoder from the
// store's records to what the folds (domain, projections) read. A record
// of a type this build does not know is marked Unknown; one of a known
// type that does not decode carries the error.
func Decode(r eventstore.RecordedEvent) domain.Record {
	rec := domain.Record{Stream: r.Stream, Revision: r.Revision, Created: r.Created,
		Position: domain.Position{Commit: r.Position.Commit, Prepare: r.Position.Prepare}}
	rec.Kind, rec.Peer = Kind(r.Stream)
	var err error
	switch rec.Kind {
	case domain.StreamOther:
		return rec // another application's stream
	case domain.StreamPeers:
		if !knownPeersType(r.Type) {
			rec.Unknown = true
			return rec
		}
		rec.Event, err = DecodePeerEvent(r)
	case domain.StreamOutbox:
		if r.Type != TypeEventEnqueued {
			rec.Unknown = true
			return rec
		}
		var ev *syncv1.Event
		if ev, err = DecodeEnqueued(r); err == nil {
			rec.Event = domain.EventEnqueued{Event: Federated(ev)}
		}
	case domain.StreamDelivery:
		if !knownDeliveryType(r.Type) {
			rec.Unknown = true
			return rec
		}
		rec.Event, err = DecodeDelivery(r)
	case domain.StreamInbox:
		if !IsReceivedType(r.Type) {
			rec.Unknown = true
			return rec
		}
		var in []Received
		if in, err = DecodeReceivedRecord(r); err == nil {
			rec.Event = ReceivedDomain(in)
		}
	case domain.StreamDatabase:
		if r.Type != TypeDatabaseCreated {
			rec.Unknown = true
			return rec
		}
		var id string
		if id, err = DecodeDatabaseCreated(r); err == nil {
			rec.Event = domain.DatabaseCreated{ID: id}
		}
	}
	if err != nil {
		rec.Event, rec.Err = nil, err
	}
	return rec
}

// Kind tells which stream a stream name is, and the peer of a per-peer one.
func Kind(stream string) (domain.StreamKind, domain.PeerID) {
	switch {
	case stream == Peers:
		return domain.StreamPeers, ""
	case stream == Database:
		return domain.StreamDatabase, ""
	case strings.HasPrefix(stream, OutboxPrefix):
		return domain.StreamOutbox, PeerID(strings.TrimPrefix(stream, OutboxPrefix))
	case strings.HasPrefix(stream, DeliveryPrefix):
		return domain.StreamDelivery, PeerID(strings.TrimPrefix(stream, DeliveryPrefix))
	case strings.HasPrefix(stream, InboxPrefix):
		return domain.StreamInbox, PeerID(strings.TrimPrefix(stream, InboxPrefix))
	}
	return domain.StreamOther, ""
}

func knownPeersType(typ string) bool {
	switch typ {
	case TypePeerSeen, TypePeerKeyLearned, TypePeerRenamed, TypeOwnServerIDChanged, TypePeerNotifiedOfNewID:
		return true
	}
	return false
}

func knownDeliveryType(typ string) bool {
	switch typ {
	case TypeEventPushed, TypeQueueModeEntered, TypePullServed, TypePullAcknowledged, TypePushResumed,
		TypeEventsSkipped, TypeEpochStarted, TypeReceiverReported, TypeOwnerTermStarted:
		return true
	}
	return false
}

// Federated is a protocol event as the domain reads it; nil for a kind
// this build does not know.
func Federated(ev *syncv1.Event) domain.FederatedEvent {
	switch k := ev.GetKind().(type) {
	case *syncv1.Event_UserAddedToGuild_:
		return domain.UserAddedToGuild{UserID: k.UserAddedToGuild.GetUserId(), GuildID: k.UserAddedToGuild.GetGuildId()}
	case *syncv1.Event_UserRemovedFromGuild_:
		return domain.UserRemovedFromGuild{UserID: k.UserRemovedFromGuild.GetUserId(), GuildID: k.UserRemovedFromGuild.GetGuildId()}
	case *syncv1.Event_UserInvited_:
		e := k.UserInvited
		return domain.UserInvited{UserID: e.GetUserId(), InviterID: e.GetInviterId(), InviteID: e.GetInviteId()}
	case *syncv1.Event_UserRejectedInvite_:
		e := k.UserRejectedInvite
		return domain.UserRejectedInvite{GuildID: e.GetGuildId(), UserID: e.GetUserId(), InviteID: e.GetInviteId()}
	}
	return nil
}

// Domain is the inbox record as the domain reads it.
func (r Received) Domain() domain.EventReceived {
	out := domain.EventReceived{ViaPull: r.Via == eventsv1.EventReceived_VIA_PULL, SenderSeq: r.SenderSeq,
		SenderEpoch: r.SenderEpoch, SenderEventID: r.SenderEventID, TooLargeBytes: r.TooLargeBytes, SenderTerm: r.SenderTerm}
	if r.Event != nil {
		out.Event = Federated(r.Event)
	}
	return out
}

// ReceivedDomain is an inbox record's events as the domain reads them: one
// EventReceived, or an EventsReceived run.
func ReceivedDomain(in []Received) any {
	if len(in) == 1 {
		return in[0].Domain()
	}
	run := domain.EventsReceived{Events: make([]domain.EventReceived, len(in))}
	for i, r := range in {
		run.Events[i] = r.Domain()
	}
	return run
}

// DecodePeerEvent reads a record of the peers stream.
func DecodePeerEvent(r eventstore.RecordedEvent) (domain.PeerEvent, error) {
	parse := func(field, raw string, optional bool) (domain.ServerID, error) {
		if raw == "" && optional {
			return domain.ServerID{}, nil
		}
		id, err := domain.ParseServerID(raw)
		if err != nil {
			return domain.ServerID{}, fmt.Errorf("%s@%d: %s %s: %w", r.Stream, r.Revision, r.Type, field, err)
		}
		return id, nil
	}
	switch r.Type {
	case TypePeerSeen:
		var m eventsv1.PeerSeen
		if err := decode(r, &m); err != nil {
			return nil, err
		}
		server, err := parse("server_id", m.GetServerId(), false)
		if err != nil {
			return nil, err
		}
		ours, err := parse("our_server_id", m.GetOurServerId(), true)
		if err != nil {
			return nil, err
		}
		return domain.PeerRegistered{Peer: PeerID(m.GetPeerId()), ServerID: server, OurServerID: ours}, nil
	case TypePeerKeyLearned:
		var m eventsv1.PeerKeyLearned
		if err := decode(r, &m); err != nil {
			return nil, err
		}
		return domain.PeerKeyLearned{Peer: PeerID(m.GetPeerId()), Key: m.GetPublicKey()}, nil
	case TypePeerRenamed:
		var m eventsv1.PeerRenamed
		if err := decode(r, &m); err != nil {
			return nil, err
		}
		old, err := parse("old_server_id", m.GetOldServerId(), true)
		if err != nil {
			return nil, err
		}
		next, err := parse("new_server_id", m.GetNewServerId(), false)
		if err != nil {
			return nil, err
		}
		return domain.PeerRenamed{Peer: PeerID(m.GetPeerId()), Old: old, New: next}, nil
	case TypeOwnServerIDChanged:
		var m eventsv1.OwnServerIdChanged
		if err := decode(r, &m); err != nil {
			return nil, err
		}
		old, err := parse("old_server_id", m.GetOldServerId(), true)
		if err != nil {
			return nil, err
		}
		next, err := parse("new_server_id", m.GetNewServerId(), false)
		if err != nil {
			return nil, err
		}
		return domain.OwnServerIDChanged{Old: old, New: next}, nil
	case TypePeerNotifiedOfNewID:
		var m eventsv1.PeerNotifiedOfNewId
		if err := decode(r, &m); err != nil {
			return nil, err
		}
		next, err := parse("new_server_id", m.GetNewServerId(), false)
		if err != nil {
			return nil, err
		}
		return domain.PeerNotifiedOfNewID{Peer: PeerID(m.GetPeerId()), NewID: next}, nil
	}
	return nil, fmt.Errorf("%s@%d: unknown peers record type %q", r.Stream, r.Revision, r.Type)
}

// EncodePeers encodes records of the peers stream.
func (c *Codec) EncodePeers(events ...domain.PeerEvent) ([]eventstore.EventData, error) {
	out := make([]eventstore.EventData, 0, len(events))
	for _, e := range events {
		var d eventstore.EventData
		var err error
		switch e := e.(type) {
		case domain.PeerRegistered:
			m := &eventsv1.PeerSeen{PeerId: string(e.Peer), ServerId: e.ServerID.String()}
			if !e.OurServerID.IsZero() {
				m.OurServerId = e.OurServerID.String()
			}
			d, err = c.Encode(TypePeerSeen, m)
		case domain.PeerKeyLearned:
			d, err = c.Encode(TypePeerKeyLearned, &eventsv1.PeerKeyLearned{PeerId: string(e.Peer), PublicKey: e.Key})
		case domain.PeerRenamed:
			d, err = c.Encode(TypePeerRenamed, &eventsv1.PeerRenamed{PeerId: string(e.Peer), OldServerId: optionalID(e.Old), NewServerId: e.New.String()})
		case domain.OwnServerIDChanged:
			d, err = c.Encode(TypeOwnServerIDChanged, &eventsv1.OwnServerIdChanged{OldServerId: optionalID(e.Old), NewServerId: e.New.String()})
		case domain.PeerNotifiedOfNewID:
			d, err = c.Encode(TypePeerNotifiedOfNewID, &eventsv1.PeerNotifiedOfNewId{PeerId: string(e.Peer), NewServerId: e.NewID.String()})
		default:
			return nil, fmt.Errorf("streams: unknown peers record %T", e)
		}
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

func optionalID(id domain.ServerID) string {
	if id.IsZero() {
		return ""
	}
	return id.String()
}
