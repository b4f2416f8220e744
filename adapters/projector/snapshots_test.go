package projector

import (
	"slices"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	"github.com/harmony-postbox/postbox/projections"
)

// snapshotted is a peer's 4 outbox events, 3 pushed, in database "db1",
// and then the snapshot snap of its delivery stream.
func snapshotted(t *testing.T, snap streams.OutboxSnapshot) *history {
	t.Helper()
	h := newHistory(t)
	db, err := h.codec.EncodeDatabaseCreated("db1")
	if err != nil {
		t.Fatal(err)
	}
	h.steps = append(h.steps, step{streams.Database, db})
	h.enqueueN("p", 4)
	for seq := range uint64(3) {
		h.delivery("p", domain.EventPushed{Seq: seq, Attempts: 1})
	}
	d, err := h.codec.EncodeSnapshot(snap)
	if err != nil {
		t.Fatal(err)
	}
	h.steps = append(h.steps, step{streams.DeliverySnapshot("p"), d})
	return h
}

func TestAuditComparesEachSnapshotWithTheFoldOfItsRecords(t *testing.T) {
	t.Parallel()
	fold := func(delivered uint64) domain.Outbox {
		return domain.Outbox{Head: 4, Delivered: delivered, HandedOver: delivered, Given: delivered - 1, HasGiven: true}
	}
	for _, c := range []struct {
		name    string
		snap    streams.OutboxSnapshot
		finding bool
		checked uint64
	}{
		{"a snapshot of the first two records is checked and clean",
			streams.NewOutboxSnapshot("db1", "delivery-p", 2, fold(2)), false, 1},
		{"one of all three too",
			streams.NewOutboxSnapshot("db1", "delivery-p", 3, fold(3)), false, 1},
		{"one that says more was delivered than its records do is a finding",
			streams.NewOutboxSnapshot("db1", "delivery-p", 2, fold(3)), true, 1},
		{"one that names more events than the outbox held is a finding",
			streams.NewOutboxSnapshot("db1", "delivery-p", 3, domain.Outbox{Head: 9, Delivered: 3, HandedOver: 3, Given: 2, HasGiven: true}), true, 1},
		{"one that covers more records than the stream held is a finding",
			streams.NewOutboxSnapshot("db1", "delivery-p", 5, fold(3)), true, 0},
		{"one of another database is not checked: the engine ignores it too",
			streams.NewOutboxSnapshot("db2", "delivery-p", 2, fold(3)), false, 0},
		{"one of another stream is not checked",
			streams.NewOutboxSnapshot("db1", "delivery-q", 2, fold(3)), false, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			store := snapshotted(t, c.snap).store()
			rep, err := Audit(t.Context(), store, AuditOptions{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			found := slices.ContainsFunc(rep.Violations, func(v projections.Violation) bool {
				return v.Rule == projections.RuleSnapshotMatchesFold && v.Stream == "snapshot-delivery-p" && v.Revision == 0
			})
			if found != c.finding || len(rep.Violations) != map[bool]int{false: 0, true: 1}[c.finding] {
				t.Fatalf("violations %v, want a snapshot finding: %v", rep.Violations, c.finding)
			}
			if rep.SnapshotsChecked != c.checked {
				t.Fatalf("%d snapshots checked, want %d", rep.SnapshotsChecked, c.checked)
			}
		})
	}
}
