package streams

import (
	"bytes"
	"crypto/rand"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/domain"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

func recorded(d eventstore.EventData) eventstore.RecordedEvent {
	return eventstore.RecordedEvent{Stream: "s", Type: d.Type, Data: d.Data, ID: d.ID}
}

func TestRecordsRoundTripInBothBodies(t *testing.T) {
	t.Parallel()
	// A sync event of a kind this build does not know: field 9.
	unknownKind := &syncv1.Event{}
	unknownKind.ProtoReflect().SetUnknown(protowire.AppendBytes(protowire.AppendTag(nil, 9, protowire.BytesType), []byte{8, 1}))
	seq := uint64(7)
	for _, body := range []Body{JSONBodies, BinaryBodies} {
		c := NewCodecWithBodies(rand.Reader, body)
		d, err := c.EncodeDelivery(domain.PullServed{FromSeq: 3, ToSeq: 9, AwaitsAck: true}, domain.EventPushed{Seq: 10, Through: 12, Attempts: 2, Term: 6})
		if err != nil {
			t.Fatal(err)
		}
		if isJSON := bytes.HasPrefix(d[0].Data, []byte("{")); isJSON != (body == JSONBodies) {
			t.Fatalf("body %d wrote %q", body, d[0].Data)
		}
		for i, want := range []domain.DeliveryEvent{domain.PullServed{FromSeq: 3, ToSeq: 9, AwaitsAck: true}, domain.EventPushed{Seq: 10, Through: 12, Attempts: 2, Term: 6}} {
			got, err := DecodeDelivery(recorded(d[i]))
			if err != nil || got != want {
				t.Fatalf("body %d: decoded %#v, %v; want %#v", body, got, err, want)
			}
		}
		r, err := c.EncodeReceived(Received{Event: unknownKind, Via: eventsv1.EventReceived_VIA_PUSH, SenderSeq: &seq})
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodeReceived(recorded(r))
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(back.Event, unknownKind) || *back.SenderSeq != 7 || back.Via != eventsv1.EventReceived_VIA_PUSH {
			t.Fatalf("body %d: an event of an unknown kind came back as %v", body, back)
		}
		if d[0].ID == d[1].ID || d[0].ID[6]>>4 != 4 {
			t.Fatalf("event IDs are not fresh version 4 UUIDs: %v %v", d[0].ID, d[1].ID)
		}
	}
}
