package projections

import (
	"strings"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// Given an outbox truncated whole (no event of it left to read) and a
// delivery snapshot older than the records kept after it,
// when the audit checks those records,
// then the removed events still count: the pushes are within the outbox,
// whose head is where the truncation was.
func TestAnOutboxTruncatedWholeStillCountsItsEvents(t *testing.T) {
	t.Parallel()
	h := newHistory(t).enqueueN("p", 12)
	for seq := range uint64(12) {
		h.delivery("p", domain.EventPushed{Seq: seq, Attempts: 1})
	}
	a := NewAuditor()
	a.OutboxTruncated("p", "outbox-p", 12)
	a.DeliveryFromSnapshot("p", "delivery-p", domain.Outbox{Delivered: 6, Given: 5, HasGiven: true, Head: 6}, 6)
	for _, r := range h.records() {
		if r.Stream == "outbox-p" || (r.Stream == "delivery-p" && r.Revision < 6) {
			continue
		}
		a.Check(streams.Decode(r))
	}
	rep := a.Report()
	if !rep.Clean() {
		t.Fatalf("violations %v", rep.Violations)
	}
	if p := rep.Peers; len(p) != 1 || p[0].Head != 12 || p[0].Delivered != 12 {
		t.Fatalf("peers %+v, want 12 delivered of 12", p)
	}
}

// The owner-terms finding names the predecessor a record claims, or says
// it claims none.
func TestAnOwnerTermFindingNamesThePredecessorClaimed(t *testing.T) {
	t.Parallel()
	a := NewAuditor()
	h := newHistory(t).enqueueN("pa", 1).
		delivery("pa", domain.OwnerTermStarted{Term: 1, Replica: "r1"}).
		delivery("pa", domain.OwnerTermStarted{Term: 2, Replica: "r2"}).
		delivery("pa", domain.OwnerTermStarted{Term: 3, Replica: "r3", Previous: "r9"})
	for _, r := range h.records() {
		a.Check(streams.Decode(r))
	}
	v := a.Report().Violations
	if len(v) != 2 || !strings.Contains(v[0].Detail, "term 2 of r2 after no replica") || !strings.Contains(v[1].Detail, `term 3 of r3 after "r9"`) {
		t.Fatalf("violations %v", v)
	}
}
