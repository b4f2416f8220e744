package streams

import (
	"crypto/ed25519"
	"crypto/rand"
	"reflect"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/domain"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

func TestPeerEventsRoundTripInBothBodies(t *testing.T) {
	t.Parallel()
	b, b2, us := domain.MustParseServerID("b.example:2289"), domain.MustParseServerID("b2.example:2289"), domain.MustParseServerID("us.example:2289")
	key := ed25519.PublicKey(make([]byte, ed25519.PublicKeySize))
	events := []domain.PeerEvent{
		domain.PeerRegistered{Peer: "pb", ServerID: b, OurServerID: us},
		domain.PeerRegistered{Peer: "pb", ServerID: b}, // written before our ID was recorded
		domain.PeerKeyLearned{Peer: "pb", Key: key},
		domain.PeerRenamed{Peer: "pb", Old: b, New: b2},
		domain.OwnServerIDChanged{New: us},
		domain.OwnServerIDChanged{Old: us, New: b},
		domain.PeerNotifiedOfNewID{Peer: "pb", NewID: us},
	}
	for _, body := range []Body{JSONBodies, BinaryBodies} {
		data, err := NewCodecWithBodies(rand.Reader, body).EncodePeers(events...)
		if err != nil {
			t.Fatal(err)
		}
		for i, d := range data {
			r := recorded(d)
			r.Stream = Peers
			got := Decode(r)
			if got.Err != nil || got.Unknown || got.Kind != domain.StreamPeers || !reflect.DeepEqual(got.Event, events[i]) {
				t.Errorf("body %d: %#v came back as %#v", body, events[i], got)
			}
		}
	}
}

// Decode places every record: its stream, its peer, what it says; a type
// it does not know is marked, one that does not decode carries the error.
func TestDecodeEveryStream(t *testing.T) {
	t.Parallel()
	c := NewCodec(rand.Reader)
	seq, size := uint64(4), uint64(9000)
	enq, _ := c.EncodeEnqueued(&syncv1.Event{Kind: &syncv1.Event_UserInvited_{UserInvited: &syncv1.Event_UserInvited{UserId: 1, InviterId: 2, InviteId: "x"}}})
	del, _ := c.EncodeDelivery(domain.PushResumed{FromSeq: 3, Reason: domain.ResumeProbe})
	rec, _ := c.EncodeReceived(Received{Event: &syncv1.Event{Kind: &syncv1.Event_UserRejectedInvite_{UserRejectedInvite: &syncv1.Event_UserRejectedInvite{GuildId: 7, UserId: 8, InviteId: "y"}}},
		Via: eventsv1.EventReceived_VIA_PULL, SenderSeq: &seq, SenderEpoch: 5, SenderEventID: []byte{1}, SenderTerm: 3})
	big, _ := c.EncodeReceived(Received{Via: eventsv1.EventReceived_VIA_PUSH, TooLargeBytes: &size})
	db, _ := c.EncodeDatabaseCreated("d1")
	owner, _ := c.EncodeOwnerTerm(domain.OwnerTerm{Term: 4, Replica: "r2"}, "r1")
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := []struct {
		stream string
		data   eventstore.EventData
		kind   domain.StreamKind
		peer   domain.PeerID
		event  any
	}{
		{Outbox("pa"), enq, domain.StreamOutbox, "pa", domain.EventEnqueued{Event: domain.UserInvited{UserID: 1, InviterID: 2, InviteID: "x"}}},
		{Delivery("pa"), del[0], domain.StreamDelivery, "pa", domain.PushResumed{FromSeq: 3, Reason: domain.ResumeProbe}},
		{Delivery("pa"), owner, domain.StreamDelivery, "pa", domain.OwnerTermStarted{Term: 4, Replica: "r2", Previous: "r1"}},
		{Inbox("pa"), rec, domain.StreamInbox, "pa", domain.EventReceived{Event: domain.UserRejectedInvite{GuildID: 7, UserID: 8, InviteID: "y"},
			ViaPull: true, SenderSeq: &seq, SenderEpoch: 5, SenderEventID: []byte{1}, SenderTerm: 3}},
		{Inbox("pa"), big, domain.StreamInbox, "pa", domain.EventReceived{TooLargeBytes: &size}},
		{Database, db, domain.StreamDatabase, "", domain.DatabaseCreated{ID: "d1"}},
		{"another-app", db, domain.StreamOther, "", nil},
	}
	for _, tc := range cases {
		r := recorded(tc.data)
		r.Stream, r.Revision, r.Position, r.Created = tc.stream, 3, eventstore.Position{Commit: 9, Prepare: 8}, at
		got := Decode(r)
		want := domain.Record{Stream: tc.stream, Revision: 3, Position: domain.Position{Commit: 9, Prepare: 8}, Created: at, Kind: tc.kind, Peer: tc.peer, Event: tc.event}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s %s:\n got %#v\nwant %#v", tc.stream, tc.data.Type, got, want)
		}
	}
	for _, stream := range []string{Peers, Outbox("pa"), Delivery("pa"), Inbox("pa"), Database} {
		if got := Decode(eventstore.RecordedEvent{Stream: stream, Type: "SomethingNew", Data: []byte("{}")}); !got.Unknown || got.Event != nil || got.Err != nil {
			t.Errorf("%s: a record of an unknown type: %#v", stream, got)
		}
	}
	for _, typ := range []string{TypePeerSeen, TypeEventEnqueued, TypeEventPushed, TypeEventReceived, TypeDatabaseCreated} {
		stream := map[string]string{TypePeerSeen: Peers, TypeEventEnqueued: Outbox("pa"), TypeEventPushed: Delivery("pa"), TypeEventReceived: Inbox("pa"), TypeDatabaseCreated: Database}[typ]
		if got := Decode(eventstore.RecordedEvent{Stream: stream, Type: typ, Data: []byte("{not json")}); got.Err == nil || got.Event != nil || got.Unknown {
			t.Errorf("%s: an unreadable record: %#v", typ, got)
		}
	}
	// A registration naming no valid server ID is unreadable too.
	bad, _ := c.Encode(TypePeerSeen, &eventsv1.PeerSeen{PeerId: "pb", ServerId: "no port"})
	if got := Decode(eventstore.RecordedEvent{Stream: Peers, Type: bad.Type, Data: bad.Data}); got.Err == nil {
		t.Errorf("a registration of %q decoded", "no port")
	}
}

// Records in a store may have been written by anything sharing it: Decode
// never panics, and a record either says something, is of an unknown type,
// or carries an error.
func FuzzDecode(f *testing.F) {
	c := NewCodecWithBodies(rand.Reader, BinaryBodies)
	peers, _ := c.EncodePeers(domain.PeerRenamed{Peer: "p", Old: domain.MustParseServerID("a.example:1"), New: domain.MustParseServerID("b.example:1")})
	del, _ := c.EncodeDelivery(domain.EventPushed{Seq: 1, Through: 3})
	f.Add(Peers, peers[0].Type, peers[0].Data)
	f.Add(Delivery("p"), del[0].Type, del[0].Data)
	f.Add(Inbox("p"), TypeEventReceived, []byte(`{"eventBytes":"AAEC"}`))
	f.Add(Database, TypeDatabaseCreated, []byte{})
	f.Fuzz(func(t *testing.T, stream, typ string, data []byte) {
		got := Decode(eventstore.RecordedEvent{Stream: stream, Type: typ, Data: data})
		says := got.Event != nil || got.Kind == domain.StreamOther
		if n := btoi(says) + btoi(got.Unknown) + btoi(got.Err != nil); n != 1 {
			t.Fatalf("%s %s %x: %#v", stream, typ, data, got)
		}
	})
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
