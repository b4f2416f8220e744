package projections

import (
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// retainedHistory is a peer's 12 outbox events, each pushed, with the
// outbox truncated before 10 and the delivery stream before 5 (a snapshot
// covers the records before 6).
func retainedHistory(t *testing.T) []eventstore.RecordedEvent {
	h := newHistory(t).enqueueN("p", 12)
	for seq := range uint64(12) {
		h.delivery("p", domain.EventPushed{Seq: seq, Attempts: 1})
	}
	var kept []eventstore.RecordedEvent
	for _, r := range h.records() {
		if (r.Stream == "outbox-p" && r.Revision < 10) || (r.Stream == "delivery-p" && r.Revision < 5) {
			continue
		}
		kept = append(kept, r)
	}
	return kept
}

func TestAnAuditOfARetainedStoreStartsWhereRetentionLeftIt(t *testing.T) {
	t.Parallel()
	t.Run("given where retention truncated, the audit is clean and says where it began", func(t *testing.T) {
		a := NewAuditor()
		a.OutboxTruncated("p", "outbox-p", 10)
		a.DeliveryFromSnapshot("p", "delivery-p", domain.Outbox{Delivered: 6, Given: 5, HasGiven: true, Head: 6}, 6)
		for _, r := range retainedHistory(t) {
			a.Check(streams.Decode(r))
		}
		rep := a.Report()
		if !rep.Clean() {
			t.Fatalf("violations %v", rep.Violations)
		}
		want := []Retained{{Stream: "outbox-p", From: 10}, {Stream: "delivery-p", From: 6, FromSnapshot: true}}
		if len(rep.Retained) != 2 || rep.Retained[0] != want[0] || rep.Retained[1] != want[1] {
			t.Fatalf("retained %+v, want %+v", rep.Retained, want)
		}
		if p := rep.Peers; len(p) != 1 || p[0].Delivered != 12 || p[0].Head != 12 {
			t.Fatalf("peers %+v, want 12 delivered of 12", p)
		}
	})
	t.Run("not told, it reports the gaps", func(t *testing.T) {
		a := NewAuditor()
		for _, r := range retainedHistory(t) {
			a.Check(streams.Decode(r))
		}
		if a.Report().Clean() {
			t.Fatal("a truncated history audited as if whole is clean")
		}
	})
	t.Run("a delivery stream truncated without a snapshot is reported", func(t *testing.T) {
		a := NewAuditor()
		a.DeliveryTruncatedWithoutSnapshot("delivery-p", 5, "no snapshot")
		if v := a.Report().Violations; len(v) != 1 || v[0].Rule != RuleTruncatedBehindSnapshot || v[0].Revision != 5 {
			t.Fatalf("violations %v", v)
		}
	})
}
