package projections

import (
	"strconv"

	"github.com/harmony-postbox/postbox/domain"
)

// RuleTruncatedBehindSnapshot: a delivery stream is truncated only behind
// a snapshot of its fold, which the audit starts from; one truncated
// without such a snapshot cannot be checked.
const RuleTruncatedBehindSnapshot = "truncated-behind-snapshot"

// Retained says where the audit started on a stream that retention
// truncated: its records from From on were checked; for a delivery stream,
// from a snapshot of the fold of the records before From.
type Retained struct {
	Stream       string `json:"stream"`
	From         uint64 `json:"from"`
	FromSnapshot bool   `json:"from_snapshot"`
}

// OutboxTruncated tells the audit, before it meets peer's outbox stream,
// that the events before before were removed: they existed, and the
// stream's records start there.
func (a *Auditor) OutboxTruncated(peer domain.PeerID, stream string, before uint64) {
	if before == 0 {
		return
	}
	a.state.peer(peer).out.Stored(before - 1)
	a.outboxNext[stream] = max(a.outboxNext[stream], before)
	a.retained = append(a.retained, Retained{Stream: stream, From: before})
}

// DeliveryFromSnapshot tells the audit, before it meets peer's delivery
// stream, that o is the fold of that stream's records before covers: the
// audit starts from it and checks the records from covers on.
func (a *Auditor) DeliveryFromSnapshot(peer domain.PeerID, stream string, o domain.Outbox, covers uint64) {
	p := a.state.peer(peer)
	head := p.out.Head
	p.out = o
	p.out.Head = max(head, o.Head)
	a.covered[stream] = covers
	a.keepFold(stream, covers, p.out)
	a.retained = append(a.retained, Retained{Stream: stream, From: covers, FromSnapshot: true})
}

// DeliveryTruncatedWithoutSnapshot reports a delivery stream truncated
// before before with no snapshot to start from: its rules are checked from
// an empty fold, which may report what the removed records explained.
func (a *Auditor) DeliveryTruncatedWithoutSnapshot(stream string, before uint64, why string) {
	a.violate(stream, before, RuleTruncatedBehindSnapshot, "truncated before "+strconv.FormatUint(before, 10)+" without a snapshot to start from: "+why)
}
