package projections

import (
	"fmt"
	"strings"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// The rule snapshot-matches-fold, fed records and snapshots as the
// projector meets them in global order.

// snapshotDB is the database every snapshot history below belongs to.
const snapshotDB = "d1"

// snapshotStream is the stream of pa's delivery snapshots.
var snapshotStream = streams.DeliverySnapshot("pa")

// snapshotHistory is database d1 with peer pa's outbox of head events and
// a delivery record of each of evs.
func snapshotHistory(t *testing.T, head int, evs ...domain.DeliveryEvent) *history {
	t.Helper()
	h := newHistory(t)
	db, err := h.codec.EncodeDatabaseCreated(snapshotDB)
	if err != nil {
		t.Fatal(err)
	}
	h.steps = append(h.steps, step{streams.Database, db})
	return h.seen("pa", "a.example:2289").enqueueN("pa", head).delivery("pa", evs...)
}

// foldsOf is the fold of the first k of evs, for each k from 0 to len(evs),
// with the outbox head given.
func foldsOf(head uint64, evs ...domain.DeliveryEvent) []domain.Outbox {
	var o domain.Outbox
	out := []domain.Outbox{o}
	for _, e := range evs {
		o.Apply(e)
		out = append(out, o)
	}
	for i := range out {
		out[i].Head = head
	}
	return out
}

// snapshotOf is a snapshot record of database d1 saying o is the fold of
// pa's delivery records before covers.
func snapshotOf(rev, covers uint64, o domain.Outbox) DeliverySnapshot {
	return DeliverySnapshot{Record: snapshotStream, RecordRevision: rev, DatabaseID: snapshotDB,
		Stream: streams.Delivery("pa"), Covers: covers, Fold: o}
}

// auditOf is an audit that has met every record of h.
func auditOf(h *history) *Auditor {
	a := NewAuditor()
	for _, r := range h.records() {
		a.Check(streams.Decode(r))
	}
	return a
}

// wantSnapshots checks the report's counts of snapshots checked and not.
func wantSnapshots(t *testing.T, rep Report, checked, unchecked uint64) {
	t.Helper()
	if rep.SnapshotsChecked != checked || rep.SnapshotsUnchecked != unchecked {
		t.Fatalf("snapshots checked %d, unchecked %d; want %d and %d (violations %v)",
			rep.SnapshotsChecked, rep.SnapshotsUnchecked, checked, unchecked, rep.Violations)
	}
}

// epochHistory's delivery records: two pushes, a new epoch, two pushes.
var epochHistory = []domain.DeliveryEvent{
	domain.EventPushed{Seq: 0, Attempts: 1},
	domain.EventPushed{Seq: 1, Attempts: 1},
	domain.EpochStarted{Epoch: 7, FromSeq: 2},
	domain.EventPushed{Seq: 2, Attempts: 1},
	domain.EventPushed{Seq: 3, Attempts: 2},
}

func TestASnapshotEqualToItsRecordsFoldPasses(t *testing.T) {
	t.Parallel()
	folds := foldsOf(6, epochHistory...)
	for covers := range uint64(len(folds)) {
		// Given pa's delivery records, then a snapshot of the first covers
		// of them (the last: all of them; the first: none), its head the
		// outbox's,
		a := auditOf(snapshotHistory(t, 6, epochHistory...))
		// when the audit meets it,
		a.CheckDeliverySnapshot("pa", snapshotOf(0, covers, folds[covers]))
		// then it is checked and clean.
		rep := a.Report()
		wantViolations(t, rep)
		wantSnapshots(t, rep, 1, 0)
	}
	t.Run("one audit meeting every snapshot in turn", func(t *testing.T) {
		a := auditOf(snapshotHistory(t, 6, epochHistory...))
		for covers := range uint64(len(folds)) {
			a.CheckDeliverySnapshot("pa", snapshotOf(covers, covers, folds[covers]))
		}
		rep := a.Report()
		wantViolations(t, rep)
		wantSnapshots(t, rep, uint64(len(folds)), 0)
	})
	t.Run("a snapshot whose head is below the outbox's", func(t *testing.T) {
		a := auditOf(snapshotHistory(t, 6, epochHistory...))
		f := folds[5]
		f.Head = 4
		a.CheckDeliverySnapshot("pa", snapshotOf(0, 5, f))
		wantViolations(t, a.Report())
	})
}

func TestASnapshotThatDiffersFromItsRecordsFoldIsReported(t *testing.T) {
	t.Parallel()
	folds := foldsOf(6, epochHistory...)
	for name, change := range map[string]func(o *domain.Outbox){
		"delivered":          func(o *domain.Outbox) { o.Delivered++ },
		"mode":               func(o *domain.Outbox) { o.Mode = domain.ModeQueue },
		"handed over":        func(o *domain.Outbox) { o.HandedOver++ },
		"pulled since queue": func(o *domain.Outbox) { o.PulledSinceQueue = true },
		"skipped":            func(o *domain.Outbox) { o.Skipped++ },
		"epoch":              func(o *domain.Outbox) { o.Epoch++ },
		"epoch from":         func(o *domain.Outbox) { o.EpochFrom++ },
		"no past epochs":     func(o *domain.Outbox) { o.PastEpochs = nil },
		"other past epochs":  func(o *domain.Outbox) { o.PastEpochs = []uint64{5} },
		"more past epochs":   func(o *domain.Outbox) { o.PastEpochs = append(o.PastEpochs, 7) },
		"given":              func(o *domain.Outbox) { o.Given-- },
		"nothing given":      func(o *domain.Outbox) { o.HasGiven = false },
		"owner":              func(o *domain.Outbox) { o.Owner = domain.OwnerTerm{Term: 1, Replica: "r1"} },
		"head past outbox":   func(o *domain.Outbox) { o.Head = 7 },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			// Given pa's records (an epoch among them), and a snapshot of
			// all of them that differs from their fold in one field,
			a := auditOf(snapshotHistory(t, 6, epochHistory...))
			f := folds[5]
			f.PastEpochs = []uint64{0}
			change(&f)
			// when the audit meets it,
			a.CheckDeliverySnapshot("pa", snapshotOf(3, 5, f))
			// then it reports the snapshot record.
			rep := a.Report()
			wantViolations(t, rep, Violation{Stream: snapshotStream, Revision: 3, Rule: RuleSnapshotMatchesFold})
			wantSnapshots(t, rep, 1, 0)
			want := "differs from its records' fold"
			if name == "head past outbox" {
				want = "head 7, but the outbox held 6 events"
			}
			if d := rep.Violations[0].Detail; !strings.Contains(d, want) {
				t.Fatalf("detail %q, want %q", d, want)
			}
		})
	}
	t.Run("the fold's past epochs are its own", func(t *testing.T) {
		// The fold appends to PastEpochs in place; a kept fold must not
		// see a later epoch.
		evs := append(append([]domain.DeliveryEvent{}, epochHistory...), domain.EpochStarted{Epoch: 8, FromSeq: 4})
		a := auditOf(snapshotHistory(t, 6, evs...))
		a.CheckDeliverySnapshot("pa", snapshotOf(0, 5, folds[5]))
		wantViolations(t, a.Report())
	})
}

func TestASnapshotCoveringMoreRecordsThanTheStreamHeldIsReported(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		evs  []domain.DeliveryEvent
		held uint64
	}{
		{"one more than written", epochHistory, 5},
		{"a stream without records", nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// Given pa's delivery records,
			a := auditOf(snapshotHistory(t, 6, tc.evs...))
			// when a snapshot says it covers one more than were written,
			a.CheckDeliverySnapshot("pa", snapshotOf(2, tc.held+1, domain.Outbox{Delivered: 6, Head: 6}))
			// then it is reported: it was written before what it covers.
			rep := a.Report()
			wantViolations(t, rep, Violation{Stream: snapshotStream, Revision: 2, Rule: RuleSnapshotMatchesFold})
			want := fmt.Sprintf("covers %d records of delivery-pa, which held %d when it was written", tc.held+1, tc.held)
			if d := rep.Violations[0].Detail; !strings.Contains(d, want) {
				t.Fatalf("detail %q, want %q", d, want)
			}
		})
	}
	t.Run("a snapshot of no records of a stream without any", func(t *testing.T) {
		a := auditOf(snapshotHistory(t, 6))
		a.CheckDeliverySnapshot("pa", snapshotOf(0, 0, domain.Outbox{Head: 6}))
		rep := a.Report()
		wantViolations(t, rep)
		wantSnapshots(t, rep, 1, 0)
	})
}

func TestOnlySnapshotsOfTheStoresDatabaseAreChecked(t *testing.T) {
	t.Parallel()
	// A snapshot that would be reported if checked: it covers records
	// never written.
	bad := snapshotOf(0, 9, domain.Outbox{Delivered: 9})
	t.Run("given a snapshot of another database, it is not checked", func(t *testing.T) {
		a := auditOf(snapshotHistory(t, 6, epochHistory...))
		other := bad
		other.DatabaseID = "d2"
		a.CheckDeliverySnapshot("pa", other)
		rep := a.Report()
		wantViolations(t, rep)
		wantSnapshots(t, rep, 0, 0)
	})
	t.Run("given a store without an identity, no snapshot is checked", func(t *testing.T) {
		h := newHistory(t).seen("pa", "a.example:2289").enqueueN("pa", 6).delivery("pa", epochHistory...)
		a := auditOf(h)
		a.CheckDeliverySnapshot("pa", bad)
		none := bad
		none.DatabaseID = ""
		a.CheckDeliverySnapshot("pa", none)
		rep := a.Report()
		wantViolations(t, rep)
		wantSnapshots(t, rep, 0, 0)
	})
	t.Run("given a snapshot of the store's database, it is checked", func(t *testing.T) {
		a := auditOf(snapshotHistory(t, 6, epochHistory...))
		a.CheckDeliverySnapshot("pa", bad)
		wantViolations(t, a.Report(), Violation{Stream: snapshotStream, Revision: 0, Rule: RuleSnapshotMatchesFold})
	})
}

// The audit keeps the last foldsKept folds of each delivery stream: a
// snapshot met within them is checked, an older one is counted unchecked.
func TestASnapshotMetLongAfterItsRecordsIsUnchecked(t *testing.T) {
	t.Parallel()
	const n = 20
	var evs []domain.DeliveryEvent
	for seq := range uint64(n) {
		evs = append(evs, domain.EventPushed{Seq: seq, Attempts: 1})
	}
	folds := foldsOf(n, evs...)
	oldest := uint64(n - foldsKept + 1) // the fold of the records before it is the oldest kept
	for _, tc := range []struct {
		covers             uint64
		checked, unchecked uint64
	}{
		{n, 1, 0},
		{oldest, 1, 0},
		{oldest + 2, 1, 0},
		{oldest - 1, 0, 1},
		{1, 0, 1},
	} {
		// Given n records of pa's delivery stream,
		a := auditOf(snapshotHistory(t, n, evs...))
		// when a snapshot of the first covers of them is met,
		a.CheckDeliverySnapshot("pa", snapshotOf(0, tc.covers, folds[tc.covers]))
		// then it is checked if its fold is still kept, else counted.
		rep := a.Report()
		wantViolations(t, rep)
		if rep.SnapshotsChecked != tc.checked || rep.SnapshotsUnchecked != tc.unchecked {
			t.Errorf("covering %d of %d: checked %d, unchecked %d; want %d, %d",
				tc.covers, n, rep.SnapshotsChecked, rep.SnapshotsUnchecked, tc.checked, tc.unchecked)
		}
	}
	t.Run("a differing snapshot too old to check is not reported", func(t *testing.T) {
		a := auditOf(snapshotHistory(t, n, evs...))
		f := folds[oldest-1]
		f.Delivered++
		a.CheckDeliverySnapshot("pa", snapshotOf(0, oldest-1, f))
		rep := a.Report()
		wantViolations(t, rep)
		wantSnapshots(t, rep, 0, 1)
	})
}

// An audit that started on a truncated delivery stream from a snapshot
// checks only the snapshots after it.
func TestSnapshotsAfterTheOneTheAuditStartedFrom(t *testing.T) {
	t.Parallel()
	const covers = 6
	var evs []domain.DeliveryEvent
	for seq := range uint64(10) {
		evs = append(evs, domain.EventPushed{Seq: seq, Attempts: 1})
	}
	folds := foldsOf(10, evs...)
	// started is an audit started from the snapshot of the records before
	// covers, that has met the kept records before kept.
	started := func(t *testing.T, kept uint64) *Auditor {
		a := NewAuditor()
		a.DeliveryFromSnapshot("pa", streams.Delivery("pa"), folds[covers], covers)
		for _, r := range snapshotHistory(t, 10, evs...).records() {
			if r.Stream == streams.Delivery("pa") && (r.Revision < covers || r.Revision >= kept) {
				continue
			}
			a.Check(streams.Decode(r))
		}
		return a
	}
	t.Run("the snapshot started from, and older ones, are neither checked nor counted", func(t *testing.T) {
		a := started(t, 10)
		a.CheckDeliverySnapshot("pa", snapshotOf(1, covers, folds[covers]))
		a.CheckDeliverySnapshot("pa", snapshotOf(0, covers-2, folds[covers-2]))
		bad := folds[covers-1]
		bad.Delivered = 0
		a.CheckDeliverySnapshot("pa", snapshotOf(0, covers-1, bad))
		rep := a.Report()
		wantViolations(t, rep)
		wantSnapshots(t, rep, 0, 0)
	})
	t.Run("a later one is checked", func(t *testing.T) {
		a := started(t, 10)
		a.CheckDeliverySnapshot("pa", snapshotOf(2, covers+2, folds[covers+2]))
		bad := folds[covers+3]
		bad.Delivered++
		a.CheckDeliverySnapshot("pa", snapshotOf(3, covers+3, bad))
		rep := a.Report()
		wantViolations(t, rep, Violation{Stream: snapshotStream, Revision: 3, Rule: RuleSnapshotMatchesFold})
		wantSnapshots(t, rep, 2, 0)
	})
	t.Run("one covering records not yet written counts from the start's", func(t *testing.T) {
		a := started(t, covers) // no record after the start
		a.CheckDeliverySnapshot("pa", snapshotOf(2, covers+1, folds[covers+1]))
		rep := a.Report()
		wantViolations(t, rep, Violation{Stream: snapshotStream, Revision: 2, Rule: RuleSnapshotMatchesFold})
		if d := rep.Violations[0].Detail; !strings.Contains(d, "which held 6 when it was written") {
			t.Fatalf("detail %q", d)
		}
	})
}
