package streams

import (
	"crypto/rand"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// DecodeEnqueuedSized reads what DecodeEnqueued reads, in both bodies, with
// and without an idempotency key, and gives the event's binary size.
func TestDecodeEnqueuedSizedIsDecodeEnqueued(t *testing.T) {
	t.Parallel()
	unknownKind := &syncv1.Event{}
	unknownKind.ProtoReflect().SetUnknown(protowire.AppendBytes(protowire.AppendTag(nil, 9, protowire.BytesType), []byte{8, 1}))
	events := []*syncv1.Event{
		{Kind: &syncv1.Event_UserAddedToGuild_{UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: 1 << 40, GuildId: 7}}},
		{Kind: &syncv1.Event_UserInvited_{UserInvited: &syncv1.Event_UserInvited{UserId: 3, InviterId: 4, InviteId: "inv"}}},
		unknownKind,
	}
	for _, body := range []Body{JSONBodies, BinaryBodies} {
		c := NewCodecWithBodies(rand.Reader, body)
		for i, ev := range events {
			plain, err := c.EncodeEnqueued(ev)
			if err != nil {
				t.Fatal(err)
			}
			keyed, err := c.EncodeEnqueuedKeyed(ev, "k", [32]byte{1})
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range []eventstore.EventData{plain, keyed} {
				want, err := DecodeEnqueued(recorded(d))
				if err != nil {
					t.Fatal(err)
				}
				got, size, err := DecodeEnqueuedSized(recorded(d))
				if err != nil || !proto.Equal(got, want) || size != proto.Size(want) {
					t.Errorf("body %d, event %d: %v, size %d, %v; want %v, size %d", body, i, got, size, err, want, proto.Size(want))
				}
			}
		}
	}
}

// An event field given twice is merged, as proto.Unmarshal merges it.
func TestDecodeEnqueuedSizedMergesAnEventGivenTwice(t *testing.T) {
	t.Parallel()
	part := func(ev *syncv1.Event) []byte {
		b, err := proto.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		return protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), b)
	}
	data := append(part(&syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: 1}}}),
		part(&syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{UserAddedToGuild: &syncv1.Event_UserAddedToGuild{GuildId: 2}}})...)
	ev, _, err := DecodeEnqueuedSized(eventstore.RecordedEvent{Stream: "outbox-p", Type: TypeEventEnqueued, Data: data})
	if g := ev.GetUserAddedToGuild(); err != nil || g.GetUserId() != 1 || g.GetGuildId() != 2 {
		t.Fatalf("%v, %v; want user 1 in guild 2", ev, err)
	}
}

// An empty outbox record holds no event; a record of another type is
// refused.
func TestDecodeEnqueuedSizedOfEmptyAndOtherRecords(t *testing.T) {
	t.Parallel()
	if ev, size, err := DecodeEnqueuedSized(eventstore.RecordedEvent{Stream: "outbox-p", Type: TypeEventEnqueued}); ev != nil || size != 0 || err != nil {
		t.Errorf("empty record: %v, %d, %v; want no event", ev, size, err)
	}
	d, err := NewCodecWithBodies(rand.Reader, BinaryBodies).EncodeEnqueued(&syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	if ev, _, err := DecodeEnqueuedSized(eventstore.RecordedEvent{Stream: "outbox-p", Type: TypeEventReceived, Data: d.Data}); err == nil {
		t.Errorf("a record of another type read as %v", ev)
	}
}

// On any bytes, DecodeEnqueuedSized agrees with DecodeEnqueued: the same
// event, or an error from both.
func FuzzDecodeEnqueuedSized(f *testing.F) {
	c := NewCodecWithBodies(rand.Reader, BinaryBodies)
	d, _ := c.EncodeEnqueuedKeyed(&syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: 1, GuildId: 2}}}, "k", [32]byte{})
	f.Add(d.Data)
	f.Add([]byte{0x0a, 0x02, 0x0a, 0x00, 0x0a, 0x02, 0x12, 0x00}) // the event field twice: merged
	f.Add([]byte{0x0a, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := eventstore.RecordedEvent{Stream: "outbox-p", Type: TypeEventEnqueued, Data: data}
		want, werr := DecodeEnqueued(r)
		got, size, err := DecodeEnqueuedSized(r)
		if (err != nil) != (werr != nil) {
			t.Fatalf("error %v, DecodeEnqueued's %v", err, werr)
		}
		if err != nil {
			return
		}
		if !proto.Equal(got, want) {
			t.Fatalf("%v, DecodeEnqueued's %v", got, want)
		}
		// The size bounds what the event costs a reply: never below it.
		if size < proto.Size(want) {
			t.Fatalf("size %d below the event's %d", size, proto.Size(want))
		}
	})
}
