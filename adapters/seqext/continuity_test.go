package seqext

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/proto"

	federationv1 "github.com/harmony-postbox/postbox/gen/postbox/federation/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

var (
	idA = []byte("0123456789abcdef")
	idB = []byte("fedcba9876543210")
)

// roundTrip marshals m and reads it back into out, as the far side would.
func roundTrip(t *testing.T, m, out proto.Message) {
	t.Helper()
	raw, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := proto.Unmarshal(raw, out); err != nil {
		t.Fatal(err)
	}
}

// TestContinuityMatchesDeclaredMessages checks the continuity fields
// written on the upstream messages against the messages that declare them,
// and reads them back.
func TestContinuityMatchesDeclaredMessages(t *testing.T) {
	t.Parallel()
	t.Run("push claim", func(t *testing.T) {
		req := &syncv1.PushRequest{Event: added(1, 10)}
		SetPushSeq(req, 8)
		SetPushContinuity(req, Continuity{Epoch: 77, Last: &Ref{Seq: 7, ID: idA}}, idB)
		var declared federationv1.PushRequestExt
		roundTrip(t, req, &declared)
		if !declared.GetContinuity() || declared.GetEpoch() != 77 || declared.GetPrevSeq() != 7 ||
			!bytes.Equal(declared.GetPrevId(), idA) || !bytes.Equal(declared.GetLastId(), idB) {
			t.Fatalf("declared view: %v", &declared)
		}
		var back syncv1.PushRequest
		roundTrip(t, req, &back)
		c, lastID, ok := PushContinuity(&back)
		if !ok || c.Epoch != 77 || c.Last == nil || c.Last.Seq != 7 || !bytes.Equal(c.Last.ID, idA) || !bytes.Equal(lastID, idB) {
			t.Fatalf("PushContinuity = %+v, %x, %v", c, lastID, ok)
		}
	})
	t.Run("owner term", func(t *testing.T) {
		req := &syncv1.PushRequest{Event: added(1, 10)}
		SetPushSeq(req, 8)
		SetPushTerm(req, 27)
		SetPushContinuity(req, Continuity{Epoch: 77}, idB)
		var declared federationv1.PushRequestExt
		roundTrip(t, req, &declared)
		if declared.GetOwnerTerm() != 27 || declared.GetSeq() != 8 {
			t.Fatalf("declared view: %v", &declared)
		}
		var back syncv1.PushRequest
		roundTrip(t, req, &back)
		if got := PushTerm(&back); got != 27 {
			t.Fatalf("PushTerm = %d, want 27", got)
		}
		// A single process's term 0 is left out: an older receiver sees
		// the same bytes as before terms existed, and absent reads as 0.
		single := &syncv1.PushRequest{Event: added(1, 10)}
		SetPushSeq(single, 8)
		before := proto.Size(single)
		SetPushTerm(single, 0)
		if proto.Size(single) != before || PushTerm(single) != 0 {
			t.Fatalf("term 0 added %d bytes, reads %d", proto.Size(single)-before, PushTerm(single))
		}
	})
	t.Run("a claim of nothing given, in epoch 0, is still a claim", func(t *testing.T) {
		req := &syncv1.PushRequest{Event: added(1, 10)}
		SetPushContinuity(req, Continuity{}, nil)
		var back syncv1.PushRequest
		roundTrip(t, req, &back)
		if c, _, ok := PushContinuity(&back); !ok || c.Epoch != 0 || c.Last != nil {
			t.Fatalf("PushContinuity = %+v, %v", c, ok)
		}
		if _, _, ok := PushContinuity(&syncv1.PushRequest{Event: added(1, 10)}); ok {
			t.Fatal("a push without the extension reads as a claim")
		}
	})
	t.Run("push outcome", func(t *testing.T) {
		res := &syncv1.PushResponse{}
		SetPushLimits(res, 1<<20, 100)
		SetPushOutcome(res, PushOutcome{Refused: true, Applied: &Ref{Seq: 0, ID: idA}})
		var declared federationv1.PushResponseExt
		roundTrip(t, res, &declared)
		if !declared.GetContinuity() || !declared.GetRefused() || !declared.GetHasApplied() || declared.GetAppliedSeq() != 0 ||
			!bytes.Equal(declared.GetAppliedId(), idA) || declared.GetBatchBytes() != 1<<20 {
			t.Fatalf("declared view: %v", &declared)
		}
		var back syncv1.PushResponse
		roundTrip(t, res, &back)
		o, ok := GetPushOutcome(&back)
		if !ok || !o.Refused || o.Applied == nil || o.Applied.Seq != 0 || !bytes.Equal(o.Applied.ID, idA) {
			t.Fatalf("GetPushOutcome = %+v, %v", o, ok)
		}
		// A refused push carries no last_seq, which would count events delivered.
		if _, ok := GetPushReply(&back); ok {
			t.Fatal("a refusal reads as a push answer with last_seq")
		}
		if _, ok := GetPushOutcome(&syncv1.PushResponse{}); ok {
			t.Fatal("an answer without the extension reads as a checked one")
		}
	})
	t.Run("an outcome of nothing held", func(t *testing.T) {
		res := &syncv1.PushResponse{}
		SetPushOutcome(res, PushOutcome{Refused: true})
		var back syncv1.PushResponse
		roundTrip(t, res, &back)
		if o, ok := GetPushOutcome(&back); !ok || !o.Refused || o.Applied != nil {
			t.Fatalf("GetPushOutcome = %+v, %v", o, ok)
		}
	})
	t.Run("pull account and reply", func(t *testing.T) {
		req := &syncv1.PullRequest{}
		SetAck(req, 99)
		SetPullContinuity(req, 5, idA)
		var declared federationv1.PullRequestExt
		roundTrip(t, req, &declared)
		if !declared.GetContinuity() || declared.GetEpoch() != 5 || !bytes.Equal(declared.GetAckId(), idA) || declared.GetAck() != 99 {
			t.Fatalf("declared view: %v", &declared)
		}
		var back syncv1.PullRequest
		roundTrip(t, req, &back)
		if epoch, id, ok := PullContinuity(&back); !ok || epoch != 5 || !bytes.Equal(id, idA) {
			t.Fatalf("PullContinuity = %d, %x, %v", epoch, id, ok)
		}
		res := &syncv1.PullResponse{EventQueue: []*syncv1.Event{added(1, 1)}}
		SetFirstSeq(res, 50)
		SetPullReplyContinuity(res, 5, idB)
		var declaredRes federationv1.PullResponseExt
		roundTrip(t, res, &declaredRes)
		if declaredRes.GetEpoch() != 5 || !bytes.Equal(declaredRes.GetLastId(), idB) || declaredRes.GetFirstSeq() != 50 {
			t.Fatalf("declared view: %v", &declaredRes)
		}
		var backRes syncv1.PullResponse
		roundTrip(t, res, &backRes)
		if epoch, id := PullReplyContinuity(&backRes); epoch != 5 || !bytes.Equal(id, idB) {
			t.Fatalf("PullReplyContinuity = %d, %x", epoch, id)
		}
	})
	t.Run("what a Pull reply's server holds of the caller", func(t *testing.T) {
		res := &syncv1.PullResponse{}
		SetPullReplyHeld(res, Continuity{Epoch: 9, Last: &Ref{Seq: 5, ID: idA}})
		var declared federationv1.PullResponseExt
		roundTrip(t, res, &declared)
		if !declared.GetHeld() || declared.GetHeldEpoch() != 9 || !declared.GetHasHeldSeq() || declared.GetHeldSeq() != 5 ||
			!bytes.Equal(declared.GetHeldId(), idA) {
			t.Fatalf("declared view: %v", &declared)
		}
		var back syncv1.PullResponse
		roundTrip(t, res, &back)
		held, ok := PullReplyHeld(&back)
		if !ok || held.Epoch != 9 || held.Last == nil || held.Last.Seq != 5 || !bytes.Equal(held.Last.ID, idA) {
			t.Fatalf("PullReplyHeld = %+v, %v", held, ok)
		}
		// Held at seq 0 is held, unlike nothing at all, which is still an
		// account, unlike no account.
		zero := &syncv1.PullResponse{}
		SetPullReplyHeld(zero, Continuity{Epoch: 9, Last: &Ref{}})
		roundTrip(t, zero, &back)
		if held, ok := PullReplyHeld(&back); !ok || held.Last == nil || held.Last.Seq != 0 {
			t.Fatalf("held at seq 0 reads %+v, %v", held, ok)
		}
		nothing := &syncv1.PullResponse{}
		SetPullReplyHeld(nothing, Continuity{})
		roundTrip(t, nothing, &back)
		if held, ok := PullReplyHeld(&back); !ok || held.Epoch != 0 || held.Last != nil {
			t.Fatalf("nothing held reads %+v, %v", held, ok)
		}
		if _, ok := PullReplyHeld(&syncv1.PullResponse{}); ok {
			t.Fatal("a reply without the extension reads as an account")
		}
	})
}

// FuzzContinuity feeds arbitrary bytes, as a peer could send them, to every
// reader of the extension: none may panic, and an ID is never longer than
// an outbox ID.
func FuzzContinuity(f *testing.F) {
	req := &syncv1.PushRequest{Event: added(1, 10)}
	SetPushContinuity(req, Continuity{Epoch: 3, Last: &Ref{Seq: 2, ID: idA}}, idB)
	SetPushTerm(req, 5)
	seed, _ := proto.Marshal(req)
	f.Add(seed)
	f.Add([]byte{0xaa, 0x06, 0x20, 0x01})
	f.Fuzz(func(t *testing.T, raw []byte) {
		var push syncv1.PushRequest
		if proto.Unmarshal(raw, &push) == nil {
			c, lastID, _ := PushContinuity(&push)
			if len(lastID) > maxOutboxIDLength || (c.Last != nil && len(c.Last.ID) > maxOutboxIDLength) {
				t.Fatal("an ID longer than an outbox ID was taken")
			}
			// The term reads as the declared message reads it.
			var declared federationv1.PushRequestExt
			if proto.Unmarshal(raw, &declared) == nil && PushTerm(&push) != declared.GetOwnerTerm() {
				t.Fatalf("PushTerm = %d, the declared message reads %d", PushTerm(&push), declared.GetOwnerTerm())
			}
		}
		var res syncv1.PushResponse
		if proto.Unmarshal(raw, &res) == nil {
			_, _ = GetPushOutcome(&res)
		}
		var pull syncv1.PullRequest
		if proto.Unmarshal(raw, &pull) == nil {
			_, _, _ = PullContinuity(&pull)
		}
		var reply syncv1.PullResponse
		if proto.Unmarshal(raw, &reply) == nil {
			_, _ = PullReplyContinuity(&reply)
			held, ok := PullReplyHeld(&reply)
			if held.Last != nil && len(held.Last.ID) > maxOutboxIDLength {
				t.Fatal("a held ID longer than an outbox ID was taken")
			}
			// What is read agrees with the declared message.
			var declared federationv1.PullResponseExt
			if proto.Unmarshal(raw, &declared) == nil && (ok != declared.GetHeld() ||
				ok && (held.Epoch != declared.GetHeldEpoch() || (held.Last != nil) != declared.GetHasHeldSeq() ||
					held.Last != nil && held.Last.Seq != declared.GetHeldSeq())) {
				t.Fatalf("PullReplyHeld = %+v, %v; the declared message reads %v", held, ok, &declared)
			}
		}
	})
}
