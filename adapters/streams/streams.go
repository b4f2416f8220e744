// Package streams names Postbox's event streams and maps what they hold
// between domain values, the persisted schema (postbox.events.v1) and the
// event store's records. It is the one serde: every store holds the same
// stream names, event type names and protojson bodies.
package streams

import (
	"fmt"
	"io"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/domain"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// PeerID is the stable ID that names a peer's streams (domain.PeerID).
type PeerID = domain.PeerID

// Stream names. The per-peer prefixes end in "-" so a prefix subscription
// for one kind never matches another.
const (
	Peers = "peers"
	// Database holds one DatabaseCreated event: this database's identity.
	Database       = "database"
	OutboxPrefix   = "outbox-"
	DeliveryPrefix = "delivery-"
	InboxPrefix    = "inbox-"
)

// Outbox is the stream of events this server has for peer; revision = seq.
func Outbox(peer PeerID) string { return OutboxPrefix + string(peer) }

// Delivery is the stream recording what happened to peer's outbox.
func Delivery(peer PeerID) string { return DeliveryPrefix + string(peer) }

// Inbox is the stream of events received from peer, in the order applied.
func Inbox(peer PeerID) string { return InboxPrefix + string(peer) }

// Event type names: explicit and stable, never derived by reflection.
const (
	TypeEventEnqueued       = "EventEnqueued"
	TypeEventPushed         = "EventPushed"
	TypeQueueModeEntered    = "QueueModeEntered"
	TypePullServed          = "PullServed"
	TypePullAcknowledged    = "PullAcknowledged"
	TypePushResumed         = "PushResumed"
	TypeEventsSkipped       = "EventsSkipped"
	TypeEpochStarted        = "EpochStarted"
	TypeReceiverReported    = "ReceiverReported"
	TypeEventReceived       = "EventReceived"
	TypeEventsReceived      = "EventsReceived"
	TypePeerSeen            = "PeerSeen"
	TypePeerKeyLearned      = "PeerKeyLearned"
	TypePeerRenamed         = "PeerRenamed"
	TypeOwnServerIDChanged  = "OwnServerIdChanged"
	TypePeerNotifiedOfNewID = "PeerNotifiedOfNewId"
	TypeDatabaseCreated     = "DatabaseCreated"
)

// Body is how a codec writes event bodies. Decoding reads either.
type Body int

const (
	// JSONBodies writes protojson, which EventStoreDB's UI and server-side
	// projections can read: for EventStoreDB.
	JSONBodies Body = iota
	// BinaryBodies writes binary protobuf: for the embedded store, where it
	// costs a fraction of protojson's CPU (what the Pull drain spends most
	// on) and keeps unknown fields as they came.
	BinaryBodies
)

// Codec encodes records with fresh event IDs from its random source.
type Codec struct {
	rand io.Reader
	body Body
}

// NewCodec returns a codec writing JSON bodies, drawing event IDs from rand.
func NewCodec(rand io.Reader) *Codec { return &Codec{rand: rand} }

// NewCodecWithBodies returns a codec writing bodies as body says.
func NewCodecWithBodies(rand io.Reader, body Body) *Codec { return &Codec{rand: rand, body: body} }

var jsonOut = protojson.MarshalOptions{}

// jsonIn discards unknown fields, so a newer build's records stay readable.
var jsonIn = protojson.UnmarshalOptions{DiscardUnknown: true}

// Encode makes an event to append from a type name and its message.
func (c *Codec) Encode(typ string, m proto.Message) (eventstore.EventData, error) {
	var id eventstore.EventID
	if _, err := io.ReadFull(c.rand, id[:]); err != nil {
		return eventstore.EventData{}, fmt.Errorf("event ID: %w", err)
	}
	uuid4(&id)
	var data []byte
	var err error
	if c.body == BinaryBodies {
		data, err = proto.Marshal(m)
	} else {
		data, err = jsonOut.Marshal(m)
	}
	if err != nil {
		return eventstore.EventData{}, fmt.Errorf("encode %s: %w", typ, err)
	}
	return eventstore.EventData{ID: id, Type: typ, Data: data}, nil
}

// uuid4 marks random bytes as a version 4 UUID, as EventStoreDB expects.
func uuid4(id *eventstore.EventID) {
	id[6] = id[6]&0x0f | 0x40
	id[8] = id[8]&0x3f | 0x80
}

// EncodeDelivery encodes delivery records.
func (c *Codec) EncodeDelivery(events ...domain.DeliveryEvent) ([]eventstore.EventData, error) {
	out := make([]eventstore.EventData, 0, len(events))
	for _, e := range events {
		typ, m := deliveryMessage(e)
		d, err := c.Encode(typ, m)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

func deliveryMessage(e domain.DeliveryEvent) (string, proto.Message) {
	switch e := e.(type) {
	case domain.EventPushed:
		return TypeEventPushed, &eventsv1.EventPushed{Seq: e.Seq, Attempts: e.Attempts, ThroughSeq: e.Through, OwnerTerm: e.Term}
	case domain.QueueModeEntered:
		return TypeQueueModeEntered, &eventsv1.QueueModeEntered{FromSeq: e.FromSeq, Attempts: e.Attempts, LastError: e.LastError}
	case domain.PullServed:
		return TypePullServed, &eventsv1.PullServed{FromSeq: e.FromSeq, ToSeq: e.ToSeq, AwaitsAck: e.AwaitsAck}
	case domain.PullAcknowledged:
		return TypePullAcknowledged, &eventsv1.PullAcknowledged{UpToSeq: e.UpToSeq}
	case domain.PushResumed:
		return TypePushResumed, &eventsv1.PushResumed{FromSeq: e.FromSeq, Reason: eventsv1.PushResumed_Reason(e.Reason)}
	case domain.EventsSkipped:
		return TypeEventsSkipped, &eventsv1.EventsSkipped{FromSeq: e.FromSeq, ThroughSeq: e.ThroughSeq, Reason: e.Reason}
	case domain.EpochStarted:
		return TypeEpochStarted, &eventsv1.EpochStarted{Epoch: e.Epoch, FromSeq: e.FromSeq, ReceiverSeq: e.ReceiverSeq, ReceiverHas: e.ReceiverHas}
	case domain.ReceiverReported:
		return TypeReceiverReported, &eventsv1.ReceiverReported{Seq: e.Seq, Has: e.Has}
	case domain.OwnerTermStarted:
		return TypeOwnerTermStarted, &eventsv1.OwnerTermStarted{Term: e.Term, Replica: e.Replica, PreviousReplica: e.Previous}
	}
	panic(fmt.Sprintf("streams: unknown delivery event %T", e))
}

// DecodeDelivery reads a delivery record.
func DecodeDelivery(r eventstore.RecordedEvent) (domain.DeliveryEvent, error) {
	switch r.Type {
	case TypeEventPushed:
		var m eventsv1.EventPushed
		if err := decode(r, &m); err != nil {
			return nil, err
		}
		return domain.EventPushed{Seq: m.GetSeq(), Through: m.GetThroughSeq(), Attempts: m.GetAttempts(), Term: m.GetOwnerTerm()}, nil
	case TypeQueueModeEntered:
		var m eventsv1.QueueModeEntered
		if err := decode(r, &m); err != nil {
			return nil, err
		}
		return domain.QueueModeEntered{FromSeq: m.GetFromSeq(), Attempts: m.GetAttempts(), LastError: m.GetLastError()}, nil
	case TypePullServed:
		var m eventsv1.PullServed
		if err := decode(r, &m); err != nil {
			return nil, err
		}
		return domain.PullServed{FromSeq: m.GetFromSeq(), ToSeq: m.GetToSeq(), AwaitsAck: m.GetAwaitsAck()}, nil
	case TypePullAcknowledged:
		var m eventsv1.PullAcknowledged
		if err := decode(r, &m); err != nil {
			return nil, err
		}
		return domain.PullAcknowledged{UpToSeq: m.GetUpToSeq()}, nil
	case TypePushResumed:
		var m eventsv1.PushResumed
		if err := decode(r, &m); err != nil {
			return nil, err
		}
		return domain.PushResumed{FromSeq: m.GetFromSeq(), Reason: domain.ResumeReason(m.GetReason())}, nil
	case TypeEventsSkipped:
		var m eventsv1.EventsSkipped
		if err := decode(r, &m); err != nil {
			return nil, err
		}
		return domain.EventsSkipped{FromSeq: m.GetFromSeq(), ThroughSeq: m.GetThroughSeq(), Reason: m.GetReason()}, nil
	case TypeEpochStarted:
		var m eventsv1.EpochStarted
		if err := decode(r, &m); err != nil {
			return nil, err
		}
		return domain.EpochStarted{Epoch: m.GetEpoch(), FromSeq: m.GetFromSeq(), ReceiverSeq: m.GetReceiverSeq(), ReceiverHas: m.GetReceiverHas()}, nil
	case TypeReceiverReported:
		var m eventsv1.ReceiverReported
		if err := decode(r, &m); err != nil {
			return nil, err
		}
		return domain.ReceiverReported{Seq: m.GetSeq(), Has: m.GetHas()}, nil
	case TypeOwnerTermStarted:
		return decodeOwnerTermStarted(r)
	}
	return nil, fmt.Errorf("%s@%d: unknown delivery record type %q", r.Stream, r.Revision, r.Type)
}

// EncodeEnqueued encodes an outbox record.
func (c *Codec) EncodeEnqueued(event *syncv1.Event) (eventstore.EventData, error) {
	return c.Encode(TypeEventEnqueued, &eventsv1.EventEnqueued{Event: event})
}

// EncodeEnqueuedKeyed encodes an outbox record of a send made with an
// idempotency key: the key and digest go in the same record as the event,
// so they are stored in the same append.
func (c *Codec) EncodeEnqueuedKeyed(event *syncv1.Event, key string, digest [32]byte) (eventstore.EventData, error) {
	return c.Encode(TypeEventEnqueued, &eventsv1.EventEnqueued{Event: event, IdempotencyKey: key, Digest: digest[:]})
}

// DecodeEnqueuedKey reads the idempotency key and digest of an outbox
// record; ok is false for a send made without a key.
func DecodeEnqueuedKey(r eventstore.RecordedEvent) (key string, digest [32]byte, ok bool, err error) {
	if r.Type != TypeEventEnqueued {
		return "", digest, false, fmt.Errorf("%s@%d: outbox record of type %q", r.Stream, r.Revision, r.Type)
	}
	var m eventsv1.EventEnqueued
	if err := decode(r, &m); err != nil {
		return "", digest, false, err
	}
	if m.GetIdempotencyKey() == "" {
		return "", digest, false, nil
	}
	if len(m.GetDigest()) != len(digest) {
		return "", digest, false, fmt.Errorf("%s@%d: idempotency digest of %d bytes", r.Stream, r.Revision, len(m.GetDigest()))
	}
	copy(digest[:], m.GetDigest())
	return m.GetIdempotencyKey(), digest, true, nil
}

// DecodeEnqueuedSized reads an outbox record, and the size of the event's
// binary encoding: what a Pull reply counts against its cap. A binary body
// is read field by field, its event straight from its bytes (whose length
// is that size): serving a large Pull reads thousands of them.
func DecodeEnqueuedSized(r eventstore.RecordedEvent) (*syncv1.Event, int, error) {
	general := func() (*syncv1.Event, int, error) {
		ev, err := DecodeEnqueued(r)
		if err != nil {
			return nil, 0, err
		}
		return ev, proto.Size(ev), nil
	}
	if r.Type != TypeEventEnqueued || len(r.Data) == 0 || r.Data[0] == '{' {
		return general()
	}
	var raw []byte
	found := false
	for b := r.Data; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || num > protowire.MaxValidNumber {
			return general() // malformed: its error
		}
		b = b[n:]
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return general()
		}
		if num == 1 {
			if found || typ != protowire.BytesType {
				// A message field given twice is merged, one of another
				// wire type refused: the general path does either.
				return general()
			}
			raw, _ = protowire.ConsumeBytes(b)
			found = true
		}
		if num == 2 && typ == protowire.BytesType {
			if key, _ := protowire.ConsumeBytes(b); !utf8.Valid(key) {
				return general() // a key proto3 refuses
			}
		}
		b = b[m:]
	}
	if !found {
		return nil, 0, nil // no event, as DecodeEnqueued reads it
	}
	ev := &syncv1.Event{}
	if err := proto.Unmarshal(raw, ev); err != nil {
		return nil, 0, fmt.Errorf("%s@%d: decode %s: %w", r.Stream, r.Revision, r.Type, err)
	}
	return ev, len(raw), nil
}

// DecodeEnqueued reads an outbox record.
func DecodeEnqueued(r eventstore.RecordedEvent) (*syncv1.Event, error) {
	if r.Type != TypeEventEnqueued {
		return nil, fmt.Errorf("%s@%d: outbox record of type %q", r.Stream, r.Revision, r.Type)
	}
	var m eventsv1.EventEnqueued
	if err := decode(r, &m); err != nil {
		return nil, err
	}
	return m.GetEvent(), nil
}

// Received is one inbox record.
type Received struct {
	Event *syncv1.Event
	Via   eventsv1.EventReceived_Via
	// SenderSeq is the sender's sequence number, if it sent one, in the
	// sender's SenderEpoch.
	SenderSeq   *uint64
	SenderEpoch uint64
	// SenderEventID is the ID of the event's record in the sender's
	// outbox, if the sender sent it.
	SenderEventID []byte
	// SenderTerm is the highest owner term of the sender's pushes seen
	// when the record was written (domain.Inbox.Term).
	SenderTerm uint64
	// TooLargeBytes is set, and Event nil, in the marker stored for an
	// event too large for the store: the event's size in bytes.
	TooLargeBytes *uint64
}

// EncodeReceived encodes an inbox record.
func (c *Codec) EncodeReceived(r Received) (eventstore.EventData, error) {
	m := &eventsv1.EventReceived{}
	if err := c.receivedMessage(m, r); err != nil {
		return eventstore.EventData{}, err
	}
	return c.Encode(TypeEventReceived, m)
}

// receivedMessage sets m to the persisted form of r.
func (c *Codec) receivedMessage(m *eventsv1.EventReceived, r Received) error {
	m.Event, m.Via, m.SenderSeq, m.SenderEpoch, m.SenderEventId = r.Event, r.Via, r.SenderSeq, r.SenderEpoch, r.SenderEventID
	m.TooLargeBytes, m.SenderTerm = r.TooLargeBytes, r.SenderTerm
	if r.TooLargeBytes != nil {
		m.Event = nil
	} else if c.body == JSONBodies && hasUnknownFields(r.Event.ProtoReflect()) {
		raw, err := proto.Marshal(r.Event)
		if err != nil {
			return fmt.Errorf("encode received event: %w", err)
		}
		m.EventBytes = raw
	}
	return nil
}

// receivedSize is the length of what appendReceived appends for r.
func receivedSize(r Received, eventSize int) int {
	n := 0
	if r.TooLargeBytes == nil && r.Event != nil {
		n += 1 + protowire.SizeBytes(eventSize)
	}
	if r.Via != 0 {
		n += 1 + protowire.SizeVarint(uint64(r.Via))
	}
	if r.SenderSeq != nil {
		n += 1 + protowire.SizeVarint(*r.SenderSeq)
	}
	if r.SenderEpoch != 0 {
		n += 1 + protowire.SizeVarint(r.SenderEpoch)
	}
	if len(r.SenderEventID) > 0 {
		n += 1 + protowire.SizeBytes(len(r.SenderEventID))
	}
	if r.TooLargeBytes != nil {
		n += 1 + protowire.SizeVarint(*r.TooLargeBytes)
	}
	if r.SenderTerm != 0 {
		n += 1 + protowire.SizeVarint(r.SenderTerm)
	}
	return n
}

// appendReceived appends r as the binary EventReceived that proto.Marshal
// makes of EncodeReceived's message with binary bodies, byte for byte
// (FuzzAppendReceivedIsProtoMarshal), to b; eventSize is proto.Size of
// r.Event when it goes in, which has also set the sizes Marshal reads.
// Its field numbers are those of postbox/events/v1/events.proto. Written
// field by field, not through the message's reflection: the thousands of
// a Pull reply cost half as much.
func appendReceived(b []byte, r Received, eventSize int) ([]byte, error) {
	if r.TooLargeBytes == nil && r.Event != nil {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(eventSize))
		var err error
		if b, err = (proto.MarshalOptions{UseCachedSize: true}).MarshalAppend(b, r.Event); err != nil {
			return nil, err
		}
	}
	if r.Via != 0 {
		b = protowire.AppendTag(b, 2, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(r.Via))
	}
	if r.SenderSeq != nil {
		b = protowire.AppendTag(b, 3, protowire.VarintType)
		b = protowire.AppendVarint(b, *r.SenderSeq)
	}
	// 4, event_bytes: only JSON bodies carry it.
	if r.SenderEpoch != 0 {
		b = protowire.AppendTag(b, 5, protowire.VarintType)
		b = protowire.AppendVarint(b, r.SenderEpoch)
	}
	if len(r.SenderEventID) > 0 {
		b = protowire.AppendTag(b, 6, protowire.BytesType)
		b = protowire.AppendBytes(b, r.SenderEventID)
	}
	if r.TooLargeBytes != nil {
		b = protowire.AppendTag(b, 7, protowire.VarintType)
		b = protowire.AppendVarint(b, *r.TooLargeBytes)
	}
	if r.SenderTerm != 0 {
		b = protowire.AppendTag(b, 8, protowire.VarintType)
		b = protowire.AppendVarint(b, r.SenderTerm)
	}
	return b, nil
}

// EncodeReceivedAsBytes encodes an inbox record that holds the event only
// as its wire bytes: in a JSON body they take 4/3 of the binary size, while
// protojson of the event itself can take several times that (escaped
// control characters), so an event too large for one append as JSON may
// still fit this way. Readers take either form.
func (c *Codec) EncodeReceivedAsBytes(r Received) (eventstore.EventData, error) {
	raw, err := proto.Marshal(r.Event)
	if err != nil {
		return eventstore.EventData{}, fmt.Errorf("encode received event: %w", err)
	}
	return c.Encode(TypeEventReceived, &eventsv1.EventReceived{Via: r.Via, SenderSeq: r.SenderSeq, EventBytes: raw,
		SenderEpoch: r.SenderEpoch, SenderEventId: r.SenderEventID, SenderTerm: r.SenderTerm})
}

// hasUnknownFields reports whether m or a message inside it holds fields
// this build does not know.
func hasUnknownFields(m protoreflect.Message) bool {
	if len(m.GetUnknown()) > 0 {
		return true
	}
	found := false
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Message() != nil && !fd.IsList() && !fd.IsMap() {
			found = hasUnknownFields(v.Message())
		}
		return !found
	})
	return found
}

// DecodeReceived reads an inbox record of one event; DecodeReceivedRecord
// reads runs too.
func DecodeReceived(r eventstore.RecordedEvent) (Received, error) {
	if r.Type != TypeEventReceived {
		return Received{}, fmt.Errorf("%s@%d: inbox record of type %q", r.Stream, r.Revision, r.Type)
	}
	var m eventsv1.EventReceived
	if err := decode(r, &m); err != nil {
		return Received{}, err
	}
	return receivedFrom(r, &m)
}

// receivedFrom is the inbox record m, read from the stored r.
func receivedFrom(r eventstore.RecordedEvent, m *eventsv1.EventReceived) (Received, error) {
	event := m.GetEvent()
	if raw := m.GetEventBytes(); len(raw) > 0 {
		// The wire bytes are the full event; JSON kept only what it knew.
		event = &syncv1.Event{}
		if err := proto.Unmarshal(raw, event); err != nil {
			return Received{}, fmt.Errorf("%s@%d: decode event bytes: %w", r.Stream, r.Revision, err)
		}
	}
	return Received{Event: event, Via: m.GetVia(), SenderSeq: m.SenderSeq, SenderEpoch: m.GetSenderEpoch(), SenderEventID: m.GetSenderEventId(), TooLargeBytes: m.TooLargeBytes,
		SenderTerm: m.GetSenderTerm()}, nil
}

// decode reads a body in either form: protojson always starts with "{",
// which no binary body of these messages does (it would be field 15 as a
// group, and none has a field 15).
func decode(r eventstore.RecordedEvent, m proto.Message) error {
	var err error
	if len(r.Data) > 0 && r.Data[0] == '{' {
		err = jsonIn.Unmarshal(r.Data, m)
	} else {
		err = proto.Unmarshal(r.Data, m)
	}
	if err != nil {
		return fmt.Errorf("%s@%d: decode %s: %w", r.Stream, r.Revision, r.Type, err)
	}
	return nil
}

// EncodeDatabaseCreated encodes the database's identity record.
func (c *Codec) EncodeDatabaseCreated(id string) (eventstore.EventData, error) {
	return c.Encode(TypeDatabaseCreated, &eventsv1.DatabaseCreated{DatabaseId: id})
}

// DecodeDatabaseCreated reads the database's identity record.
func DecodeDatabaseCreated(r eventstore.RecordedEvent) (string, error) {
	if r.Type != TypeDatabaseCreated {
		return "", fmt.Errorf("%s@%d: database record of type %q", r.Stream, r.Revision, r.Type)
	}
	var m eventsv1.DatabaseCreated
	if err := decode(r, &m); err != nil {
		return "", err
	}
	if m.GetDatabaseId() == "" {
		return "", fmt.Errorf("%s@%d: database record without an ID", r.Stream, r.Revision)
	}
	return m.GetDatabaseId(), nil
}
