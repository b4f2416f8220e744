package streams

import (
	"bytes"
	"crypto/rand"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// receivedCases are inbox records with every field of EventReceived set
// and unset, and events of a known and an unknown kind.
func receivedCases() []Received {
	unknownKind := &syncv1.Event{}
	unknownKind.ProtoReflect().SetUnknown(protowire.AppendBytes(protowire.AppendTag(nil, 9, protowire.BytesType), []byte{8, 1}))
	added := &syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: 1 << 40, GuildId: 4242}}}
	invited := &syncv1.Event{Kind: &syncv1.Event_UserInvited_{UserInvited: &syncv1.Event_UserInvited{UserId: 3, InviterId: 4, InviteId: "inv"}}}
	seq, zero, size := uint64(1<<63), uint64(0), uint64(9_000_000)
	return []Received{
		{Event: added, Via: eventsv1.EventReceived_VIA_PULL, SenderSeq: &seq, SenderEpoch: 1 << 62, SenderEventID: []byte("0123456789abcdef"), SenderTerm: 5},
		{Event: added, Via: eventsv1.EventReceived_VIA_PULL, SenderSeq: &zero},
		{Event: invited, Via: eventsv1.EventReceived_VIA_PUSH},
		{Event: unknownKind, Via: eventsv1.EventReceived_VIA_PUSH, SenderSeq: &seq},
		{Event: &syncv1.Event{}},
		{},
		{Event: added, Via: eventsv1.EventReceived_VIA_PUSH, SenderSeq: &seq, TooLargeBytes: &size, SenderTerm: 1},
	}
}

// EncodeReceivedAll writes what EncodeReceived writes, in both bodies: with
// binary ones, the very bytes of proto.Marshal; every record has a fresh
// version 4 UUID.
func TestEncodeReceivedAllIsEncodeReceived(t *testing.T) {
	t.Parallel()
	recs := receivedCases()
	for _, body := range []Body{JSONBodies, BinaryBodies} {
		c := NewCodecWithBodies(rand.Reader, body)
		got, err := c.EncodeReceivedAll(recs)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(recs) {
			t.Fatalf("body %d: %d records for %d", body, len(got), len(recs))
		}
		ids := map[eventstore.EventID]bool{}
		for i, r := range recs {
			one, err := c.EncodeReceived(r)
			if err != nil {
				t.Fatal(err)
			}
			if got[i].Type != one.Type {
				t.Errorf("body %d, record %d: type %q, want %q", body, i, got[i].Type, one.Type)
			}
			if body == BinaryBodies && !bytes.Equal(got[i].Data, one.Data) {
				t.Errorf("record %d: %x, want %x", i, got[i].Data, one.Data)
			}
			back, err := DecodeReceived(recorded(got[i]))
			if err != nil {
				t.Fatalf("body %d, record %d: %v", body, i, err)
			}
			want, _ := DecodeReceived(recorded(one))
			if !sameReceived(back, want) {
				t.Errorf("body %d, record %d: decoded %+v, want %+v", body, i, back, want)
			}
			if ids[got[i].ID] || got[i].ID[6]>>4 != 4 || got[i].ID[8]>>6 != 2 {
				t.Errorf("body %d, record %d: ID %v is not a fresh version 4 UUID", body, i, got[i].ID)
			}
			ids[got[i].ID] = true
		}
	}
}

func sameReceived(a, b Received) bool {
	eq := func(x, y *uint64) bool { return (x == nil) == (y == nil) && (x == nil || *x == *y) }
	return proto.Equal(a.Event, b.Event) && a.Via == b.Via && eq(a.SenderSeq, b.SenderSeq) && a.SenderEpoch == b.SenderEpoch &&
		bytes.Equal(a.SenderEventID, b.SenderEventID) && a.SenderTerm == b.SenderTerm && eq(a.TooLargeBytes, b.TooLargeBytes)
}

// The records share one buffer: each one's data is capped at its end, so an
// append to one cannot write into the next.
func TestEncodeReceivedAllKeepsRecordsApart(t *testing.T) {
	t.Parallel()
	c := NewCodecWithBodies(rand.Reader, BinaryBodies)
	recs := make([]Received, 0, 20_000)
	for range 20_000 / len(receivedCases()) {
		recs = append(recs, receivedCases()...)
	}
	got, err := c.EncodeReceivedAll(recs)
	if err != nil {
		t.Fatal(err)
	}
	want := make([][]byte, len(got))
	for i := range got {
		want[i] = bytes.Clone(got[i].Data)
	}
	for i := range got {
		_ = append(got[i].Data, 0xff)
	}
	for i := range got {
		if !bytes.Equal(got[i].Data, want[i]) {
			t.Fatalf("record %d changed by an append to another: %x, was %x", i, got[i].Data, want[i])
		}
	}
}

// appendReceived writes EventReceived's fields by number: a field added to
// the message must be added there too, or binary records would drop it.
func TestAppendReceivedKnowsEveryField(t *testing.T) {
	t.Parallel()
	fields := (&eventsv1.EventReceived{}).ProtoReflect().Descriptor().Fields()
	known := map[protoreflect.FieldNumber]protoreflect.Name{
		1: "event", 2: "via", 3: "sender_seq", 4: "event_bytes", 5: "sender_epoch", 6: "sender_event_id", 7: "too_large_bytes", 8: "sender_term",
	}
	if fields.Len() != len(known) {
		t.Fatalf("EventReceived has %d fields, appendReceived knows %d: update it", fields.Len(), len(known))
	}
	for i := range fields.Len() {
		f := fields.Get(i)
		if known[f.Number()] != f.Name() {
			t.Errorf("field %d is %s, appendReceived writes it as %s", f.Number(), f.Name(), known[f.Number()])
		}
	}
}

// Any record, encoded field by field, is what proto.Marshal makes of it,
// in a buffer of exactly its size.
func FuzzAppendReceivedIsProtoMarshal(f *testing.F) {
	f.Add([]byte{8, 1}, uint8(2), true, uint64(7), uint64(1), []byte("id"), false, uint64(0), uint64(3))
	f.Add([]byte{}, uint8(0), false, uint64(0), uint64(0), []byte{}, true, uint64(1<<40), uint64(0))
	f.Fuzz(func(t *testing.T, event []byte, via uint8, hasSeq bool, seq, epoch uint64, id []byte, tooLarge bool, size, term uint64) {
		ev := &syncv1.Event{}
		if err := proto.Unmarshal(event, ev); err != nil {
			t.Skip()
		}
		r := Received{Event: ev, Via: eventsv1.EventReceived_Via(via % 3), SenderEpoch: epoch, SenderEventID: id, SenderTerm: term}
		if hasSeq {
			r.SenderSeq = &seq
		}
		if tooLarge {
			r.TooLargeBytes = &size
		}
		c := NewCodecWithBodies(rand.Reader, BinaryBodies)
		m := &eventsv1.EventReceived{}
		if err := c.receivedMessage(m, r); err != nil {
			t.Fatal(err)
		}
		want, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.EncodeReceivedAll([]Received{r})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[0].Data, want) {
			t.Fatalf("%x, want %x", got[0].Data, want)
		}
		// The buffer is sized by receivedSize, neither grown nor larger
		// than needed.
		eventSize := 0
		if !tooLarge {
			eventSize = proto.Size(ev)
		}
		if n := receivedSize(r, eventSize); n != len(want) {
			t.Fatalf("receivedSize %d, want %d", n, len(want))
		}
	})
}
