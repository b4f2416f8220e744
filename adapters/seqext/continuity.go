package seqext

import (
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// The continuity extension (README "Interoperability notes"): a sender and
// a receiver compare what the receiver last applied, by sequence number and
// by the ID of the sender's outbox record, so a restored or recreated store
// on either side is noticed instead of silently dropping or skipping events.
const (
	pushEpoch           protowire.Number = 102 // PushRequestExt.epoch
	pushContinuity      protowire.Number = 103 // PushRequestExt.continuity
	pushPrevSeq         protowire.Number = 104 // PushRequestExt.prev_seq
	pushPrevID          protowire.Number = 105 // PushRequestExt.prev_id
	pushLastID          protowire.Number = 106 // PushRequestExt.last_id
	pushOwnerTerm       protowire.Number = 107 // PushRequestExt.owner_term
	replyContinuity     protowire.Number = 103 // PushResponseExt.continuity
	replyRefused        protowire.Number = 104 // PushResponseExt.refused
	replyAppliedSeq     protowire.Number = 105 // PushResponseExt.applied_seq
	replyAppliedID      protowire.Number = 106 // PushResponseExt.applied_id
	replyHasApplied     protowire.Number = 107 // PushResponseExt.has_applied
	pullContinuity      protowire.Number = 102 // PullRequestExt.continuity
	pullEpoch           protowire.Number = 103 // PullRequestExt.epoch
	pullAckID           protowire.Number = 104 // PullRequestExt.ack_id
	pullReplyEpoch      protowire.Number = 101 // PullResponseExt.epoch
	pullReplyLastID     protowire.Number = 102 // PullResponseExt.last_id
	pullReplyHeld       protowire.Number = 103 // PullResponseExt.held
	pullReplyHeldEpoch  protowire.Number = 104 // PullResponseExt.held_epoch
	pullReplyHeldSeq    protowire.Number = 105 // PullResponseExt.held_seq
	pullReplyHeldID     protowire.Number = 106 // PullResponseExt.held_id
	pullReplyHasHeldSeq protowire.Number = 107 // PullResponseExt.has_held_seq
	maxOutboxIDLength                    = 16
)

// Ref names one event of a sender's outbox: its sequence number and the ID
// of its outbox record (nil when not known).
type Ref struct {
	Seq uint64
	ID  []byte
}

// Continuity is what a continuity-checking party says alongside a push or
// a Pull: the sender's epoch for the receiver, and the last event applied in
// it (by the sender's belief on a push, by the receiver's own record on a
// Pull; nil: none).
type Continuity struct {
	Epoch uint64
	Last  *Ref
}

// SetPushContinuity adds a sender's continuity claim to a push, and the
// outbox ID of the push's last event.
func SetPushContinuity(m *syncv1.PushRequest, c Continuity, lastID []byte) {
	setVarint(m, pushContinuity, 1)
	if c.Epoch != 0 {
		setVarint(m, pushEpoch, c.Epoch)
	}
	if c.Last != nil {
		setVarint(m, pushPrevSeq, c.Last.Seq)
		setBytes(m, pushPrevID, c.Last.ID)
	}
	if len(lastID) > 0 {
		setBytes(m, pushLastID, lastID)
	}
}

// PushContinuity reads a push's continuity claim; ok is false for a sender
// that makes none (an upstream or older Postbox sender).
func PushContinuity(m *syncv1.PushRequest) (c Continuity, lastID []byte, ok bool) {
	raw := m.ProtoReflect().GetUnknown()
	if v, _ := lastVarint(raw, pushContinuity); v == 0 {
		return Continuity{}, nil, false
	}
	c.Epoch, _ = lastVarint(raw, pushEpoch)
	if seq, has := lastVarint(raw, pushPrevSeq); has {
		id, _ := lastBytes(raw, pushPrevID)
		c.Last = &Ref{Seq: seq, ID: id}
	}
	lastID, _ = lastBytes(raw, pushLastID)
	return c, lastID, true
}

// SetPushTerm stamps a push with the owner term its sender's replica
// pushes under; a term of 0 (a single process) is left out, which reads
// the same.
func SetPushTerm(m *syncv1.PushRequest, term uint64) {
	if term != 0 {
		setVarint(m, pushOwnerTerm, term)
	}
}

// PushTerm reads a push's owner term: 0 when absent (a single process, an
// older or upstream sender).
func PushTerm(m *syncv1.PushRequest) uint64 {
	term, _ := lastVarint(m.ProtoReflect().GetUnknown(), pushOwnerTerm)
	return term
}

// PushOutcome is a continuity-checking receiver's account in its answer to
// a push: whether it refused the push (applied nothing) because the
// sender's claim does not match what it holds, and what it holds.
type PushOutcome struct {
	Refused bool
	Applied *Ref // the last event it applied in the push's epoch; nil: none
}

// SetPushOutcome adds a receiver's account to a push's answer.
func SetPushOutcome(m *syncv1.PushResponse, o PushOutcome) {
	setVarint(m, replyContinuity, 1)
	if o.Refused {
		setVarint(m, replyRefused, 1)
	}
	if o.Applied != nil {
		setVarint(m, replyHasApplied, 1)
		setVarint(m, replyAppliedSeq, o.Applied.Seq)
		setBytes(m, replyAppliedID, o.Applied.ID)
	}
}

// GetPushOutcome reads a receiver's account; ok is false for a receiver that
// does not check continuity.
func GetPushOutcome(m *syncv1.PushResponse) (o PushOutcome, ok bool) {
	raw := m.ProtoReflect().GetUnknown()
	if v, _ := lastVarint(raw, replyContinuity); v == 0 {
		return PushOutcome{}, false
	}
	refused, _ := lastVarint(raw, replyRefused)
	o.Refused = refused != 0
	if has, _ := lastVarint(raw, replyHasApplied); has != 0 {
		seq, _ := lastVarint(raw, replyAppliedSeq)
		id, _ := lastBytes(raw, replyAppliedID)
		o.Applied = &Ref{Seq: seq, ID: id}
	}
	return o, true
}

// SetPullContinuity adds the caller's account of what it applied from the
// receiver to a Pull: its epoch and the ID of its acknowledged event.
func SetPullContinuity(m *syncv1.PullRequest, epoch uint64, ackID []byte) {
	setVarint(m, pullContinuity, 1)
	if epoch != 0 {
		setVarint(m, pullEpoch, epoch)
	}
	if len(ackID) > 0 {
		setBytes(m, pullAckID, ackID)
	}
}

// PullContinuity reads a Pull's continuity account; ok is false for a
// caller that gives none. The acknowledged sequence number is Ack's.
func PullContinuity(m *syncv1.PullRequest) (epoch uint64, ackID []byte, ok bool) {
	raw := m.ProtoReflect().GetUnknown()
	if v, _ := lastVarint(raw, pullContinuity); v == 0 {
		return 0, nil, false
	}
	epoch, _ = lastVarint(raw, pullEpoch)
	ackID, _ = lastBytes(raw, pullAckID)
	return epoch, ackID, true
}

// SetPullReplyContinuity stamps a Pull reply with the sender's epoch and the
// outbox ID of its last event.
func SetPullReplyContinuity(m *syncv1.PullResponse, epoch uint64, lastID []byte) {
	if epoch != 0 {
		setVarint(m, pullReplyEpoch, epoch)
	}
	if len(lastID) > 0 {
		setBytes(m, pullReplyLastID, lastID)
	}
}

// PullReplyContinuity reads a Pull reply's epoch (0: none) and its last
// event's outbox ID (nil: not sent).
func PullReplyContinuity(m *syncv1.PullResponse) (epoch uint64, lastID []byte) {
	raw := m.ProtoReflect().GetUnknown()
	epoch, _ = lastVarint(raw, pullReplyEpoch)
	lastID, _ = lastBytes(raw, pullReplyLastID)
	return epoch, lastID
}

// SetPullReplyHeld adds to a Pull reply what the replying server holds of
// the caller's own events: their epoch and the last one applied there
// (Continuity.Last nil: none; Epoch 0: nothing at all).
func SetPullReplyHeld(m *syncv1.PullResponse, held Continuity) {
	setVarint(m, pullReplyHeld, 1)
	if held.Epoch != 0 {
		setVarint(m, pullReplyHeldEpoch, held.Epoch)
	}
	if held.Last != nil {
		setVarint(m, pullReplyHasHeldSeq, 1)
		setVarint(m, pullReplyHeldSeq, held.Last.Seq)
		setBytes(m, pullReplyHeldID, held.Last.ID)
	}
}

// PullReplyHeld reads what a Pull reply says its server holds of the
// caller's events; ok is false for a server that does not say (upstream,
// or an older Postbox).
func PullReplyHeld(m *syncv1.PullResponse) (held Continuity, ok bool) {
	raw := m.ProtoReflect().GetUnknown()
	if v, _ := lastVarint(raw, pullReplyHeld); v == 0 {
		return Continuity{}, false
	}
	held.Epoch, _ = lastVarint(raw, pullReplyHeldEpoch)
	if has, _ := lastVarint(raw, pullReplyHasHeldSeq); has != 0 {
		seq, _ := lastVarint(raw, pullReplyHeldSeq)
		id, _ := lastBytes(raw, pullReplyHeldID)
		held.Last = &Ref{Seq: seq, ID: id}
	}
	return held, true
}

func setBytes(m proto.Message, n protowire.Number, v []byte) {
	r := m.ProtoReflect()
	b := append([]byte(nil), r.GetUnknown()...)
	b = protowire.AppendTag(b, n, protowire.BytesType)
	b = protowire.AppendBytes(b, v)
	r.SetUnknown(b)
}

// lastBytes finds field n as bytes in raw, the last occurrence winning;
// longer than an outbox ID, or malformed, it is ignored.
func lastBytes(raw []byte, n protowire.Number) (v []byte, ok bool) {
	for len(raw) > 0 {
		num, typ, tagLen := protowire.ConsumeTag(raw)
		if tagLen < 0 {
			return v, ok
		}
		raw = raw[tagLen:]
		l := protowire.ConsumeFieldValue(num, typ, raw)
		if l < 0 {
			return v, ok
		}
		if num == n && typ == protowire.BytesType {
			if b, bl := protowire.ConsumeBytes(raw); bl >= 0 && len(b) <= maxOutboxIDLength {
				v, ok = append([]byte(nil), b...), true
			}
		}
		raw = raw[l:]
	}
	return v, ok
}
