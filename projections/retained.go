package projections

import (
	"strconv"

	"github.com/harmony-postbox/postbox/domain"
)

// RuleTruncatedBehindSnapshot: a delivery stream, or the peers stream, is
// truncated only behind a snapshot of its fold, which the audit starts
// from; one truncated without such a snapshot cannot be checked.
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

// EffectsFromSnapshot starts the audit, before any record, with what snap
// (the projections' state at position at, a snapshot retention wrote
// before it removed records) says of peer's guilds and invites, received
// or sent: the records that made them may be gone. Replaying the kept
// records over them ends where a full replay would, since each record
// sets its key's value whatever it was. A checkpoint older than at cannot
// be compared with such a replay, and is not.
func (a *Auditor) EffectsFromSnapshot(peer domain.PeerID, snap *State, at domain.Position) {
	a.seedAt(at)
	// Unlike the effects, a count is not set again by the kept records: it
	// starts from the snapshot's, which counted the records up to at.
	p := a.state.peer(peer)
	if sp, ok := snap.peers[peer]; ok {
		p.received = sp.received
	}
	p.receivedAt, p.receivedSeeded = at, true
	for user, g := range snap.guilds {
		for k := range g {
			if k.peer != peer {
				continue
			}
			if a.state.guilds[user] == nil {
				a.state.guilds[user] = map[guildKey]struct{}{}
			}
			a.state.guilds[user][k] = struct{}{}
		}
	}
	for user, inv := range snap.invites {
		for k, inviter := range inv {
			if k.peer != peer {
				continue
			}
			if a.state.invites[user] == nil {
				a.state.invites[user] = map[inviteKey]uint64{}
			}
			a.state.invites[user][k] = inviter
		}
	}
	for k, v := range snap.sent {
		if k.peer == peer {
			a.state.sent[k] = v
		}
	}
}

// seedAt records that the replay holds, from its start, what a snapshot
// at position at says: the latest such position bounds the checkpoints
// it can be compared with.
func (a *Auditor) seedAt(at domain.Position) {
	if !a.seeded || a.seededAt.Less(at) {
		a.seeded, a.seededAt = true, at
	}
}

// InboxTruncated tells the audit that peer's inbox stream starts at
// before: the records before it were removed behind an inbox snapshot and
// the projections snapshot whose effects it started from.
func (a *Auditor) InboxTruncated(stream string, before uint64) {
	if before > 0 {
		a.retained = append(a.retained, Retained{Stream: stream, From: before, FromSnapshot: true})
	}
}

// InboxTruncatedWithoutSnapshot reports an inbox stream truncated with no
// projections snapshot to start its effects from.
func (a *Auditor) InboxTruncatedWithoutSnapshot(stream string, before uint64, why string) {
	a.violate(stream, before, RuleTruncatedBehindSnapshot, "truncated before "+strconv.FormatUint(before, 10)+" without a projections snapshot to start from: "+why)
}
