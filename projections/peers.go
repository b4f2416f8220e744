package projections

import (
	"fmt"
	"reflect"
	"slices"

	"github.com/harmony-postbox/postbox/domain"
)

// SeedRegistry starts the fold of the peers stream from peers, the fold
// of its records before covers (a snapshot of the registry): the records
// before covers are passed over from now on. A follower of a store whose
// peers stream retention compacted past what it applied does so, and so
// does the audit.
func (s *State) SeedRegistry(peers *domain.Peers, covers uint64) {
	s.registry, s.peersFrom = peers, covers
}

// PeersFrom is the revision of the peers stream the registry was started
// from by SeedRegistry (0: from the start).
func (s *State) PeersFrom() uint64 { return s.peersFrom }

// PeersSnapshot is a snapshot of the peers stream the audit meets: it says
// Fold is the fold of the stream's records before Covers, in database
// DatabaseID.
type PeersSnapshot struct {
	Record         string // the snapshot's own stream
	RecordRevision uint64
	DatabaseID     string
	Covers         uint64
	Fold           domain.PeersImage
}

// RegistryFromSnapshot starts the audit, before any record, from peers,
// the fold of the records of the peers stream (named stream) before
// covers, which a snapshot holds; at is the position of the last record it
// covers, or of the first one kept after it. A checkpoint before at cannot
// be compared with such a replay, and is not.
func (a *Auditor) RegistryFromSnapshot(stream string, peers *domain.Peers, covers uint64, at domain.Position) {
	a.state.SeedRegistry(peers, covers)
	a.seedAt(at)
	a.retained = append(a.retained, Retained{Stream: stream, From: covers, FromSnapshot: true})
}

// PeersTruncatedWithoutSnapshot reports the peers stream truncated before
// before with no snapshot to start from: the records after it are folded
// from an empty registry, which reports those about peers it lost.
func (a *Auditor) PeersTruncatedWithoutSnapshot(stream string, before uint64, why string) {
	a.violate(stream, before, RuleTruncatedBehindSnapshot, fmt.Sprintf("truncated before %d without a snapshot to start from: %s", before, why))
}

// CheckPeersSnapshot compares s, met at this point of the global order,
// with the fold of the peers stream's records before the revision it
// covers. Snapshots of another database, and those covering no more than
// the one the audit started from, are not checked; nor is one met after
// later records of the stream (another replica's), whose fold has moved
// on.
func (a *Auditor) CheckPeersSnapshot(s PeersSnapshot) {
	if db := a.state.databaseID; db == "" || s.DatabaseID != db || s.Covers <= a.state.peersFrom {
		return
	}
	switch {
	case s.Covers > a.peersNext:
		a.violate(s.Record, s.RecordRevision, RuleSnapshotMatchesFold,
			fmt.Sprintf("covers %d records of the peers stream, which held %d when it was written", s.Covers, a.peersNext))
		return
	case s.Covers < a.peersNext:
		a.snapshotsUnchecked++
		return
	}
	a.snapshotsChecked++
	if diff := peersDiff(s.Fold, a.state.registry.Image()); diff != "" {
		a.violate(s.Record, s.RecordRevision, RuleSnapshotMatchesFold,
			fmt.Sprintf("the snapshot of the peers stream before %d differs from its records' fold: %s", s.Covers, diff))
	}
}

// peersDiff says how a snapshot's fold differs from the records', ""
// if it does not. Times are compared as instants: a snapshot's encoding
// keeps no location.
func peersDiff(snap, fold domain.PeersImage) string {
	sameTime := func(a, b domain.OwnID) bool { return a.ID == b.ID && a.Since.Equal(b.Since) }
	if !slices.EqualFunc(snap.OwnIDs, fold.OwnIDs, sameTime) {
		return fmt.Sprintf("own IDs %v, records %v", snap.OwnIDs, fold.OwnIDs)
	}
	if !reflect.DeepEqual(snap.Servers, fold.Servers) {
		return fmt.Sprintf("server IDs %v, records %v", snap.Servers, fold.Servers)
	}
	if !slices.EqualFunc(snap.Peers, fold.Peers, samePeer) {
		return fmt.Sprintf("peers %+v, records %+v", snap.Peers, fold.Peers)
	}
	return ""
}

// samePeer compares two entries, an empty list or map equal to none.
func samePeer(a, b domain.PeerEntry) bool {
	if a.ID != b.ID || a.ServerID != b.ServerID || a.KnowsUsAs != b.KnowsUsAs || !a.Key.Equal(b.Key) ||
		!slices.Equal(a.Former, b.Former) || len(a.FormerKeys) != len(b.FormerKeys) {
		return false
	}
	for id, key := range a.FormerKeys {
		if !key.Equal(b.FormerKeys[id]) {
			return false
		}
	}
	return true
}
