// Package seqext reads and writes Postbox's sequence extension (PROTOCOL.md
// §4) on the upstream sync.v1 messages. The extension fields ride as unknown
// fields, so upstream peers decode the messages unchanged; their numbers are
// declared in postbox.federation.v1. A value is written explicitly even when
// it is zero, because presence is what tells a Postbox peer from an upstream
// one (proto3 would leave a zero out).
package seqext

import (
	"errors"
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// Field numbers, as in postbox.federation.v1.
const (
	pushSeq       protowire.Number = 100 // PushRequestExt.seq
	pushFollowing protowire.Number = 101 // PushRequestExt.following
	pushLastSeq   protowire.Number = 100 // PushResponseExt.last_seq
	pushBatch     protowire.Number = 101 // PushResponseExt.batch_bytes
	pushBatchN    protowire.Number = 102 // PushResponseExt.batch_events
	pullFirstSeq  protowire.Number = 100 // PullResponseExt.first_seq
	pullAck       protowire.Number = 100 // PullRequestExt.ack
	pullHasAck    protowire.Number = 101 // PullRequestExt.has_ack
)

// PushSeq returns the sequence number of a pushed event, if the sender sent one.
func PushSeq(m *syncv1.PushRequest) (uint64, bool) {
	return lastVarint(m.ProtoReflect().GetUnknown(), pushSeq)
}

// SetPushSeq stamps a push with its sequence number.
func SetPushSeq(m *syncv1.PushRequest, seq uint64) {
	setVarint(m, pushSeq, seq)
}

// Following returns the events a push carries after its first one, in
// order. Bytes that do not decode as events are an error: the request is
// refused rather than partly applied.
func Following(m *syncv1.PushRequest) ([]*syncv1.Event, error) {
	var events []*syncv1.Event
	raw := m.ProtoReflect().GetUnknown()
	for len(raw) > 0 {
		num, typ, tagLen := protowire.ConsumeTag(raw)
		if tagLen < 0 {
			return nil, errMalformed
		}
		raw = raw[tagLen:]
		if num != pushFollowing {
			l := protowire.ConsumeFieldValue(num, typ, raw)
			if l < 0 {
				return nil, errMalformed
			}
			raw = raw[l:]
			continue
		}
		if typ != protowire.BytesType {
			return nil, fmt.Errorf("%w: following event of wire type %d", errMalformed, typ)
		}
		b, l := protowire.ConsumeBytes(raw)
		if l < 0 {
			return nil, errMalformed
		}
		raw = raw[l:]
		ev := &syncv1.Event{}
		if err := proto.Unmarshal(b, ev); err != nil {
			return nil, fmt.Errorf("%w: following event %d: %w", errMalformed, len(events), err)
		}
		events = append(events, ev)
	}
	return events, nil
}

var errMalformed = errors.New("malformed push extension")

// AddFollowing appends events to a push after its first one.
func AddFollowing(m *syncv1.PushRequest, events ...*syncv1.Event) error {
	r := m.ProtoReflect()
	b := append([]byte(nil), r.GetUnknown()...)
	for _, ev := range events {
		raw, err := proto.Marshal(ev)
		if err != nil {
			return err
		}
		b = protowire.AppendTag(b, pushFollowing, protowire.BytesType)
		b = protowire.AppendBytes(b, raw)
	}
	r.SetUnknown(b)
	return nil
}

// FollowingSize is how many bytes ev adds to a push as a following event.
func FollowingSize(ev *syncv1.Event) int {
	n := proto.Size(ev)
	return protowire.SizeTag(pushFollowing) + protowire.SizeBytes(n)
}

// PushReply is what a Postbox receiver adds to its answer to a push.
type PushReply struct {
	// LastSeq: every event of the push up to it is applied.
	LastSeq uint64
	// BatchBytes: the largest push request the receiver reads.
	BatchBytes uint64
	// BatchEvents: the most events one push may carry.
	BatchEvents uint32
}

// SetPushReply adds r to a push's answer.
func SetPushReply(m *syncv1.PushResponse, r PushReply) {
	setVarint(m, pushLastSeq, r.LastSeq)
	setVarint(m, pushBatch, r.BatchBytes)
	setVarint(m, pushBatchN, uint64(r.BatchEvents))
}

// SetPushLimits adds only the receiver's limits to a push's answer: for a
// push it applied nothing of.
func SetPushLimits(m *syncv1.PushResponse, batchBytes uint64, batchEvents uint32) {
	setVarint(m, pushBatch, batchBytes)
	setVarint(m, pushBatchN, uint64(batchEvents))
}

// GetPushReply reads a push's answer; ok is false for an upstream receiver's
// empty answer.
func GetPushReply(m *syncv1.PushResponse) (r PushReply, ok bool) {
	raw := m.ProtoReflect().GetUnknown()
	r.LastSeq, ok = lastVarint(raw, pushLastSeq)
	r.BatchBytes, _ = lastVarint(raw, pushBatch)
	n, _ := lastVarint(raw, pushBatchN)
	r.BatchEvents = uint32(min(n, math.MaxUint32))
	return r, ok
}

// FirstSeq returns the sequence number of a pull reply's first event.
func FirstSeq(m *syncv1.PullResponse) (uint64, bool) {
	return lastVarint(m.ProtoReflect().GetUnknown(), pullFirstSeq)
}

// SetFirstSeq stamps a pull reply with its first event's sequence number.
func SetFirstSeq(m *syncv1.PullResponse, seq uint64) {
	setVarint(m, pullFirstSeq, seq)
}

// Ack returns a Pull's acknowledgement, if the caller sent one.
func Ack(m *syncv1.PullRequest) (uint64, bool) {
	raw := m.ProtoReflect().GetUnknown()
	has, _ := lastVarint(raw, pullHasAck)
	if has == 0 {
		return 0, false
	}
	ack, _ := lastVarint(raw, pullAck)
	return ack, true
}

// SetAck adds an acknowledgement to a Pull.
func SetAck(m *syncv1.PullRequest, ack uint64) {
	setVarint(m, pullAck, ack)
	setVarint(m, pullHasAck, 1)
}

func setVarint(m proto.Message, n protowire.Number, v uint64) {
	r := m.ProtoReflect()
	b := append([]byte(nil), r.GetUnknown()...)
	b = protowire.AppendTag(b, n, protowire.VarintType)
	b = protowire.AppendVarint(b, v)
	r.SetUnknown(b)
}

// lastVarint finds field n as a varint in raw; like protobuf decoders, the
// last occurrence wins. Malformed or differently typed fields are ignored.
func lastVarint(raw []byte, n protowire.Number) (v uint64, ok bool) {
	for len(raw) > 0 {
		num, typ, tagLen := protowire.ConsumeTag(raw)
		if tagLen < 0 {
			return v, ok
		}
		raw = raw[tagLen:]
		if num == n && typ == protowire.VarintType {
			val, l := protowire.ConsumeVarint(raw)
			if l < 0 {
				return v, ok
			}
			v, ok = val, true
			raw = raw[l:]
			continue
		}
		l := protowire.ConsumeFieldValue(num, typ, raw)
		if l < 0 {
			return v, ok
		}
		raw = raw[l:]
	}
	return v, ok
}
