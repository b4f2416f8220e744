package projections

import (
	"bytes"
	"crypto/ed25519"
	"strings"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// peersHistory is database d1 with peers pa and pb registered and pb
// renamed from b to b2: three records of the peers stream.
func peersHistory(t *testing.T) *history {
	t.Helper()
	h := newHistory(t)
	db, err := h.codec.EncodeDatabaseCreated(snapshotDB)
	if err != nil {
		t.Fatal(err)
	}
	h.steps = append(h.steps, step{streams.Database, db})
	return h.seen("pa", "a.example:2289").seen("pb", "b.example:2289").renamed("pb", "b.example:2289", "b2.example:2289")
}

func key(seed byte) ed25519.PublicKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, 32)).Public().(ed25519.PublicKey)
}

var (
	srvA  = domain.MustParseServerID("a.example:2289")
	srvB  = domain.MustParseServerID("b.example:2289")
	srvB2 = domain.MustParseServerID("b2.example:2289")
	srvB3 = domain.MustParseServerID("b3.example:2289")
	srvC  = domain.MustParseServerID("c.example:2289")
)

// foldOf folds peer records, each at base.
func foldOf(t *testing.T, records ...domain.PeerEvent) *domain.Peers {
	t.Helper()
	p := domain.NewPeers()
	for _, e := range records {
		if err := p.Apply(e, base); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// Given a state started from a registry snapshot covering the first three
// records of the peers stream (in which pb went on to b3), when every
// record is applied, then those three are passed over (pb stays b3, not
// the b2 of its third record) and the records after them are folded; a
// clone passes them over too.
func TestAStateStartedFromARegistrySnapshotPassesOverWhatItCovers(t *testing.T) {
	t.Parallel()
	h := peersHistory(t).seen("pc", "c.example:2289")
	recs := h.records()
	snap := foldOf(t, domain.PeerRegistered{Peer: "pa", ServerID: srvA}, domain.PeerRegistered{Peer: "pb", ServerID: srvB},
		domain.PeerRenamed{Peer: "pb", Old: srvB, New: srvB3})
	for _, clone := range []bool{false, true} {
		s := NewState()
		s.SeedRegistry(snap.Clone(), 3)
		if clone {
			s = s.Clone()
		}
		if s.PeersFrom() != 3 {
			t.Fatalf("PeersFrom %d, want 3", s.PeersFrom())
		}
		apply(t, s, recs...)
		if got := s.ServerIDOf("pb"); got != srvB3.String() {
			t.Fatalf("clone %v: pb is %s, want b3 (the snapshot's)", clone, got)
		}
		if got := s.ServerIDOf("pc"); got != srvC.String() {
			t.Fatalf("clone %v: pc is %q, want the record after the snapshot folded", clone, got)
		}
	}
	// Without a snapshot, the same records fold as they say.
	if got := given(t, recs...).ServerIDOf("pb"); got != srvB2.String() {
		t.Fatalf("pb is %s from the records, want b2", got)
	}
}

// The audit compares each peers snapshot it meets with its fold of the
// records before the revision the snapshot covers.
func TestTheAuditComparesPeersSnapshotsWithTheirRecords(t *testing.T) {
	t.Parallel()
	recs := peersHistory(t).records()
	fold := given(t, recs...).registry.Image()
	other := foldOf(t, domain.PeerRegistered{Peer: "pa", ServerID: srvA}).Image()
	snap := func(db string, covers uint64, img domain.PeersImage) PeersSnapshot {
		return PeersSnapshot{Record: streams.PeersSnapshot, RecordRevision: 4, DatabaseID: db, Covers: covers, Fold: img}
	}
	cases := []struct {
		name               string
		noDB               bool   // the audit meets no database record
		from               uint64 // the snapshot the audit started from covers this
		snap               PeersSnapshot
		checked, unchecked uint64
		violation          string
	}{
		{name: "equal", snap: snap(snapshotDB, 3, fold), checked: 1},
		{name: "different", snap: snap(snapshotDB, 3, other), checked: 1, violation: "differs from its records' fold"},
		{name: "covering more than was written", snap: snap(snapshotDB, 4, fold), violation: "which held 3 when it was written"},
		{name: "met after later records", snap: snap(snapshotDB, 2, other), unchecked: 1},
		{name: "of another database", snap: snap("d2", 3, other)},
		{name: "the one started from", from: 3, snap: snap(snapshotDB, 3, other)},
		{name: "with no database known", noDB: true, snap: snap("", 3, other)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			a := NewAuditor()
			if c.from > 0 {
				a.RegistryFromSnapshot(streams.Peers, given(t, recs...).registry, c.from, domain.Position{Commit: 4, Prepare: 4})
			}
			for _, r := range recs {
				if c.noDB && r.Stream == streams.Database {
					continue
				}
				a.Check(streams.Decode(r))
			}
			a.CheckPeersSnapshot(c.snap)
			rep := a.Report()
			wantSnapshots(t, rep, c.checked, c.unchecked)
			switch {
			case c.violation == "" && !rep.Clean():
				t.Fatalf("violations %v", rep.Violations)
			case c.violation != "" && (len(rep.Violations) != 1 || rep.Violations[0].Rule != RuleSnapshotMatchesFold ||
				!strings.Contains(rep.Violations[0].Detail, c.violation) || rep.Violations[0].Stream != streams.PeersSnapshot):
				t.Fatalf("violations %v, want one of %s saying %q", rep.Violations, RuleSnapshotMatchesFold, c.violation)
			}
		})
	}
}

// Every way a snapshot's fold can differ from the records' is reported;
// the same instant in another location is no difference.
func TestPeersDiffNamesEachDifference(t *testing.T) {
	t.Parallel()
	entry := domain.PeerEntry{ID: "pb", ServerID: srvB2, Former: []domain.ServerID{srvB}, Key: key(1),
		FormerKeys: map[domain.ServerID]ed25519.PublicKey{srvB: key(2)}, KnowsUsAs: srvA}
	img := func(edit func(*domain.PeersImage)) domain.PeersImage {
		e := entry
		i := domain.PeersImage{Peers: []domain.PeerEntry{e}, Servers: map[domain.ServerID]domain.PeerID{srvB: "pb", srvB2: "pb"},
			OwnIDs: []domain.OwnID{{ID: srvC, Since: base}}}
		if edit != nil {
			edit(&i)
		}
		return i
	}
	if d := peersDiff(img(nil), img(func(i *domain.PeersImage) { i.OwnIDs[0].Since = base.In(time.FixedZone("x", 3600)) })); d != "" {
		t.Fatalf("the same fold differs: %s", d)
	}
	for name, edit := range map[string]func(*domain.PeersImage){
		"own ID":        func(i *domain.PeersImage) { i.OwnIDs[0].ID = srvA },
		"own ID's time": func(i *domain.PeersImage) { i.OwnIDs[0].Since = base.Add(time.Second) },
		"own IDs":       func(i *domain.PeersImage) { i.OwnIDs = nil },
		"servers":       func(i *domain.PeersImage) { i.Servers[srvB] = "pa" },
		"peer ID":       func(i *domain.PeersImage) { i.Peers[0].ID = "pa" },
		"server ID":     func(i *domain.PeersImage) { i.Peers[0].ServerID = srvB3 },
		"known as":      func(i *domain.PeersImage) { i.Peers[0].KnowsUsAs = srvC },
		"key":           func(i *domain.PeersImage) { i.Peers[0].Key = key(3) },
		"former IDs":    func(i *domain.PeersImage) { i.Peers[0].Former = nil },
		"former keys":   func(i *domain.PeersImage) { i.Peers[0].FormerKeys = nil },
		"a former key": func(i *domain.PeersImage) {
			i.Peers[0].FormerKeys = map[domain.ServerID]ed25519.PublicKey{srvB: key(3)}
		},
		"a former key ID": func(i *domain.PeersImage) {
			i.Peers[0].FormerKeys = map[domain.ServerID]ed25519.PublicKey{srvB3: key(2)}
		},
		"peers": func(i *domain.PeersImage) { i.Peers = nil },
	} {
		if d := peersDiff(img(nil), img(edit)); d == "" {
			t.Errorf("%s: no difference found", name)
		}
	}
}

// Given the audit started from a registry snapshot, then a record about a
// peer only the snapshot registered is readable, the report names where
// the peers stream was checked from, and a checkpoint from before the
// snapshot's records is not compared.
func TestAnAuditStartedFromARegistrySnapshot(t *testing.T) {
	t.Parallel()
	h := newHistory(t)
	db, err := h.codec.EncodeDatabaseCreated(snapshotDB)
	if err != nil {
		t.Fatal(err)
	}
	h.steps = append(h.steps, step{streams.Database, db})
	recs := h.seen("pa", "a.example:2289").renamed("pz", "z.example:2289", "z2.example:2289").records()
	// A checkpoint at the first record, which knows no pz.
	cp := given(t, recs[:2]...)
	for _, at := range []uint64{1, 3} {
		a := NewAuditor()
		a.CompareCheckpoint("cp", cp.Clone())
		snap := foldOf(t, domain.PeerRegistered{Peer: "pz", ServerID: domain.MustParseServerID("z.example:2289")})
		a.RegistryFromSnapshot(streams.Peers, snap, 1, domain.Position{Commit: at, Prepare: at})
		for _, r := range recs {
			a.Check(streams.Decode(r))
		}
		rep := a.Report()
		if at == 3 && (!rep.Clean() || rep.CheckpointChecked) {
			t.Fatalf("seeded at 3: violations %v, checkpoint checked %v; want none, not checked", rep.Violations, rep.CheckpointChecked)
		}
		if at == 1 && (rep.Clean() || !rep.CheckpointChecked) {
			t.Fatalf("seeded at 1: violations %v, checkpoint checked %v; want the checkpoint compared and found different", rep.Violations, rep.CheckpointChecked)
		}
		if len(rep.Retained) != 1 || rep.Retained[0] != (Retained{Stream: streams.Peers, From: 1, FromSnapshot: true}) {
			t.Fatalf("retained %+v, want the peers stream from 1, from a snapshot", rep.Retained)
		}
		if got := a.state.ServerIDOf("pz"); got != "z2.example:2289" {
			t.Fatalf("pz is %q, want renamed by the record after the snapshot", got)
		}
	}
	// Seeded twice (effects and registry, in either order), the later
	// position bounds the checkpoints compared.
	for _, registryFirst := range []bool{false, true} {
		a := NewAuditor()
		a.CompareCheckpoint("cp", cp.Clone())
		seedRegistry := func() {
			a.RegistryFromSnapshot(streams.Peers, foldOf(t, domain.PeerRegistered{Peer: "pz", ServerID: domain.MustParseServerID("z.example:2289")}), 1,
				domain.Position{Commit: 3, Prepare: 3})
		}
		if registryFirst {
			seedRegistry()
		}
		a.EffectsFromSnapshot("pa", NewState(), domain.Position{Commit: 1, Prepare: 1})
		if !registryFirst {
			seedRegistry()
		}
		for _, r := range recs {
			a.Check(streams.Decode(r))
		}
		if rep := a.Report(); !rep.Clean() || rep.CheckpointChecked {
			t.Fatalf("registry first %v: violations %v, checkpoint checked %v; want none, not checked", registryFirst, rep.Violations, rep.CheckpointChecked)
		}
	}
	a := NewAuditor()
	a.PeersTruncatedWithoutSnapshot(streams.Peers, 7, "no snapshot")
	rep := a.Report()
	if len(rep.Violations) != 1 || rep.Violations[0].Rule != RuleTruncatedBehindSnapshot || rep.Violations[0].Revision != 7 ||
		!strings.Contains(rep.Violations[0].Detail, "before 7") {
		t.Fatalf("violations %v, want one of %s", rep.Violations, RuleTruncatedBehindSnapshot)
	}
}
