package seqext

import (
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	federationv1 "github.com/harmony-postbox/postbox/gen/postbox/federation/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

func added(user, guild uint64) *syncv1.Event {
	return &syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: user, GuildId: guild}}}
}

// TestBatchedPushMatchesDeclaredMessages checks the field numbers written
// on the upstream messages against the messages that declare them.
func TestBatchedPushMatchesDeclaredMessages(t *testing.T) {
	t.Parallel()
	req := &syncv1.PushRequest{Event: added(1, 10)}
	SetPushSeq(req, 7)
	if err := AddFollowing(req, added(2, 10), added(3, 10)); err != nil {
		t.Fatal(err)
	}
	raw, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	var declared federationv1.PushRequestExt
	if err := proto.Unmarshal(raw, &declared); err != nil {
		t.Fatal(err)
	}
	if declared.GetSeq() != 7 || len(declared.GetFollowing()) != 2 ||
		declared.GetFollowing()[1].GetUserAddedToGuild().GetUserId() != 3 {
		t.Fatalf("declared view: %v", &declared)
	}

	var back syncv1.PushRequest
	if err := proto.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	following, err := Following(&back)
	if err != nil {
		t.Fatal(err)
	}
	if len(following) != 2 || !proto.Equal(following[0], added(2, 10)) || !proto.Equal(following[1], added(3, 10)) {
		t.Fatalf("Following = %v", following)
	}
	if seq, ok := PushSeq(&back); !ok || seq != 7 {
		t.Fatalf("PushSeq = %d, %v", seq, ok)
	}

	sizeBefore := proto.Size(req)
	if err := AddFollowing(req, added(4, 10)); err != nil {
		t.Fatal(err)
	}
	if got, want := proto.Size(req)-sizeBefore, FollowingSize(added(4, 10)); got != want {
		t.Fatalf("a following event added %d bytes, FollowingSize says %d", got, want)
	}

	res := &syncv1.PushResponse{}
	SetPushReply(res, PushReply{LastSeq: 0, BatchBytes: 4 << 20, BatchEvents: 500})
	raw, err = proto.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var declaredRes federationv1.PushResponseExt
	if err := proto.Unmarshal(raw, &declaredRes); err != nil {
		t.Fatal(err)
	}
	if declaredRes.GetBatchBytes() != 4<<20 || declaredRes.GetBatchEvents() != 500 {
		t.Fatalf("declared view: %v", &declaredRes)
	}
	var backRes syncv1.PushResponse
	if err := proto.Unmarshal(raw, &backRes); err != nil {
		t.Fatal(err)
	}
	// A last_seq of 0 is still a Postbox answer: presence is the signal.
	if r, ok := GetPushReply(&backRes); !ok || r != (PushReply{LastSeq: 0, BatchBytes: 4 << 20, BatchEvents: 500}) {
		t.Fatalf("GetPushReply = %+v, %v", r, ok)
	}
	if _, ok := GetPushReply(&syncv1.PushResponse{}); ok {
		t.Fatal("an upstream receiver's empty answer reads as a Postbox one")
	}
}

func TestFollowingRefusesMalformedEvents(t *testing.T) {
	t.Parallel()
	for name, unknown := range map[string][]byte{
		"wrong wire type":  protowire.AppendVarint(protowire.AppendTag(nil, pushFollowing, protowire.VarintType), 3),
		"truncated length": protowire.AppendTag(nil, pushFollowing, protowire.BytesType),
		"not an event":     protowire.AppendBytes(protowire.AppendTag(nil, pushFollowing, protowire.BytesType), []byte{0xff}),
	} {
		req := &syncv1.PushRequest{Event: added(1, 1)}
		req.ProtoReflect().SetUnknown(unknown)
		if _, err := Following(req); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzFollowing feeds arbitrary request bodies through the decoding a
// receiver does; whatever decodes must survive a round trip.
func FuzzFollowing(f *testing.F) {
	req := &syncv1.PushRequest{Event: added(1, 1)}
	SetPushSeq(req, 3)
	_ = AddFollowing(req, added(2, 1))
	seed, _ := proto.Marshal(req)
	f.Add(seed)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, body []byte) {
		var m syncv1.PushRequest
		if err := proto.Unmarshal(body, &m); err != nil {
			return
		}
		events, err := Following(&m)
		if err != nil {
			return
		}
		again := &syncv1.PushRequest{}
		if err := AddFollowing(again, events...); err != nil {
			t.Fatal(err)
		}
		back, err := Following(again)
		if err != nil || len(back) != len(events) {
			t.Fatalf("round trip: %d events, then %d, %v", len(events), len(back), err)
		}
	})
}
