package seqext

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"

	federationv1 "github.com/harmony-postbox/postbox/gen/postbox/federation/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

func TestAckReadsBackOnlyWhenSent(t *testing.T) {
	t.Parallel()
	for _, ack := range []uint64{0, 99} {
		req := &syncv1.PullRequest{}
		SetAck(req, ack)
		var back syncv1.PullRequest
		roundTrip(t, req, &back)
		if got, ok := Ack(&back); !ok || got != ack {
			t.Errorf("Ack = %d, %v; want %d, true", got, ok, ack)
		}
	}
	if got, ok := Ack(&syncv1.PullRequest{}); ok || got != 0 {
		t.Errorf("a Pull without an acknowledgement: Ack = %d, %v", got, ok)
	}
}

func TestAbsentContinuityReadsAsAbsent(t *testing.T) {
	t.Parallel()
	req := &syncv1.PullRequest{}
	SetAck(req, 3)
	if epoch, id, ok := PullContinuity(req); ok || epoch != 0 || id != nil {
		t.Fatalf("a Pull without the continuity extension: %d, %x, %v", epoch, id, ok)
	}
}

// The smallest forms write exactly their presence field and nothing else:
// an empty ID is left out, not sent as zero bytes.
func TestEmptyIDsAreNotWritten(t *testing.T) {
	t.Parallel()
	presence := func(n protowire.Number) []byte {
		return protowire.AppendVarint(protowire.AppendTag(nil, n, protowire.VarintType), 1)
	}
	pull := &syncv1.PullRequest{}
	SetPullContinuity(pull, 0, nil)
	if got := pull.ProtoReflect().GetUnknown(); !bytes.Equal(got, presence(pullContinuity)) {
		t.Errorf("Pull account of nothing: %x", got)
	}
	push := &syncv1.PushRequest{}
	SetPushContinuity(push, Continuity{}, nil)
	if got := push.ProtoReflect().GetUnknown(); !bytes.Equal(got, presence(pushContinuity)) {
		t.Errorf("push claim of nothing: %x", got)
	}
	reply := &syncv1.PullResponse{}
	SetPullReplyContinuity(reply, 0, nil)
	if got := reply.ProtoReflect().GetUnknown(); len(got) != 0 {
		t.Errorf("Pull reply in epoch 0 without an ID: %x", got)
	}
}

func TestAnIDLongerThanAnOutboxIDIsIgnored(t *testing.T) {
	t.Parallel()
	req := &syncv1.PushRequest{}
	SetPushContinuity(req, Continuity{Epoch: 1, Last: &Ref{Seq: 2, ID: idA}}, append(bytes.Clone(idB), 'x'))
	var back syncv1.PushRequest
	roundTrip(t, req, &back)
	c, lastID, ok := PushContinuity(&back)
	if !ok || lastID != nil || c.Last == nil || !bytes.Equal(c.Last.ID, idA) {
		t.Fatalf("PushContinuity = %+v, %x, %v; want the 17-byte last ID ignored", c, lastID, ok)
	}
}

func TestPushAnswersCarryEveryValue(t *testing.T) {
	t.Parallel()
	t.Run("an outcome's applied event", func(t *testing.T) {
		res := &syncv1.PushResponse{}
		SetPushOutcome(res, PushOutcome{Applied: &Ref{Seq: 7, ID: idA}})
		var back syncv1.PushResponse
		roundTrip(t, res, &back)
		if o, ok := GetPushOutcome(&back); !ok || o.Refused || o.Applied == nil || o.Applied.Seq != 7 {
			t.Fatalf("GetPushOutcome = %+v, %v", o, ok)
		}
	})
	t.Run("the limits alone", func(t *testing.T) {
		res := &syncv1.PushResponse{}
		SetPushLimits(res, 1<<20, 100)
		var declared federationv1.PushResponseExt
		roundTrip(t, res, &declared)
		if declared.GetBatchBytes() != 1<<20 || declared.GetBatchEvents() != 100 {
			t.Fatalf("declared view: %v", &declared)
		}
	})
}

func TestAddFollowingRefusesAnEventThatCannotBeEncoded(t *testing.T) {
	t.Parallel()
	req := &syncv1.PushRequest{Event: added(1, 1)}
	bad := &syncv1.Event{Kind: &syncv1.Event_UserInvited_{UserInvited: &syncv1.Event_UserInvited{InviteId: "\xff"}}}
	if err := AddFollowing(req, bad); err == nil {
		t.Fatal("an event with invalid UTF-8 was added")
	}
	if len(req.ProtoReflect().GetUnknown()) != 0 {
		t.Fatal("a refused event changed the push")
	}
}
