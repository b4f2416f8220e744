package streams

import (
	"fmt"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/domain"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
)

// Consumers holds the durable consumers' acknowledgements and deletions:
// one stream, read whole at start (a record per acknowledgement that moved a
// consumer).
const Consumers = "consumers"

// Consumers stream record types.
const (
	TypeConsumerAcknowledged = "ConsumerAcknowledged"
	TypeConsumerDeleted      = "ConsumerDeleted"
)

// EncodeConsumers encodes records of the consumers stream.
func (c *Codec) EncodeConsumers(events ...domain.ConsumerEvent) ([]eventstore.EventData, error) {
	out := make([]eventstore.EventData, 0, len(events))
	for _, e := range events {
		var d eventstore.EventData
		var err error
		switch e := e.(type) {
		case domain.ConsumerAcknowledged:
			d, err = c.Encode(TypeConsumerAcknowledged, &eventsv1.ConsumerAcknowledged{
				Consumer: e.Consumer, Position: e.Position, At: timestamppb.New(e.At)})
		case domain.ConsumerDeleted:
			d, err = c.Encode(TypeConsumerDeleted, &eventsv1.ConsumerDeleted{Consumer: e.Consumer})
		default:
			err = fmt.Errorf("encode consumers record: unknown type %T", e)
		}
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

// DecodeConsumers reads a record of the consumers stream.
func DecodeConsumers(r eventstore.RecordedEvent) (domain.ConsumerEvent, error) {
	switch r.Type {
	case TypeConsumerAcknowledged:
		var m eventsv1.ConsumerAcknowledged
		if err := decode(r, &m); err != nil {
			return nil, err
		}
		return domain.ConsumerAcknowledged{Consumer: m.GetConsumer(), Position: m.GetPosition(), At: m.GetAt().AsTime()}, nil
	case TypeConsumerDeleted:
		var m eventsv1.ConsumerDeleted
		if err := decode(r, &m); err != nil {
			return nil, err
		}
		return domain.ConsumerDeleted{Consumer: m.GetConsumer()}, nil
	}
	return nil, fmt.Errorf("%s@%d: unknown consumers record type %q", r.Stream, r.Revision, r.Type)
}
