package projections

import (
	"fmt"
	"reflect"
	"slices"

	"github.com/harmony-postbox/postbox/domain"
)

// RuleSnapshotMatchesFold: each delivery snapshot the audit meets (after
// the one it started from) equals the fold of its delivery stream's
// records before the revision it covers; a start trusts snapshots, so one
// that lies would make the engine push again or skip events. The same
// holds for each snapshot of the peers stream (peers.go): one that lies
// would lose or invent peers, keys or renames.
const RuleSnapshotMatchesFold = "snapshot-matches-fold"

// foldsKept is how many recent folds of each delivery stream the audit
// keeps: a snapshot is written just after the records it covers, but a
// record of another writer (a replica taking the peer over) may come
// between them in the global order.
const foldsKept = 8

// DeliverySnapshot is a snapshot record the audit meets: it says Fold is
// the fold of Stream's records before Covers, in database DatabaseID.
type DeliverySnapshot struct {
	Record         string // the snapshot's own stream
	RecordRevision uint64
	DatabaseID     string
	Stream         string
	Covers         uint64
	Fold           domain.Outbox
}

// foldAt is a delivery stream's fold of the records before next.
type foldAt struct {
	next uint64
	out  domain.Outbox
}

// keepFold remembers o as the fold of stream's records before next.
func (a *Auditor) keepFold(stream string, next uint64, o domain.Outbox) {
	o.PastEpochs = slices.Clone(o.PastEpochs) // the fold appends to it
	ring := a.folds[stream]
	if len(ring) == foldsKept {
		copy(ring, ring[1:])
		ring = ring[:foldsKept-1]
	}
	a.folds[stream] = append(ring, foldAt{next: next, out: o})
}

// CheckDeliverySnapshot compares s, met at this point of the global order,
// with the fold of peer's delivery stream up to the revision s covers.
// Snapshots of another database, the one the audit started from on a
// truncated stream and older ones are not checked: the engine would not
// trust the first, the records of the others are gone.
func (a *Auditor) CheckDeliverySnapshot(peer domain.PeerID, s DeliverySnapshot) {
	if db := a.state.databaseID; db == "" || s.DatabaseID != db {
		return
	}
	if covered, ok := a.covered[s.Stream]; ok && s.Covers <= covered {
		return
	}
	ring := a.folds[s.Stream]
	next := uint64(0)
	if n := len(ring); n > 0 {
		next = ring[n-1].next
	}
	if s.Covers > next {
		a.violate(s.Record, s.RecordRevision, RuleSnapshotMatchesFold,
			fmt.Sprintf("covers %d records of %s, which held %d when it was written", s.Covers, s.Stream, next))
		return
	}
	var fold domain.Outbox
	found := s.Covers == 0
	for _, f := range ring {
		if f.next == s.Covers {
			fold, found = f.out, true
		}
	}
	if !found {
		a.snapshotsUnchecked++
		return
	}
	a.snapshotsChecked++
	head := uint64(0)
	if p, ok := a.state.peers[peer]; ok {
		head = p.out.Head
	}
	if diff := foldDiff(s.Fold, fold, head); diff != "" {
		a.violate(s.Record, s.RecordRevision, RuleSnapshotMatchesFold,
			fmt.Sprintf("the snapshot of %s before %d differs from its records' fold: %s", s.Stream, s.Covers, diff))
	}
}

// foldDiff says how snapshot differs from fold, "" if it does not. The
// head is the outbox's, not the delivery records': a snapshot may only
// name events already in the outbox (head) when it was written.
func foldDiff(snap, fold domain.Outbox, head uint64) string {
	if snap.Head > head {
		return fmt.Sprintf("head %d, but the outbox held %d events", snap.Head, head)
	}
	s, f := snap, fold
	s.Head, f.Head, s.PastEpochs, f.PastEpochs = 0, 0, nil, nil
	if slices.Equal(snap.PastEpochs, fold.PastEpochs) && reflect.DeepEqual(s, f) {
		return ""
	}
	snap.Head, fold.Head = 0, 0
	return fmt.Sprintf("snapshot %+v, records %+v", snap, fold)
}
