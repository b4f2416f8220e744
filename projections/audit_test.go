package projections

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// cleanHistory is a delivery history that keeps every invariant: pushes,
// queue mode, a pull acknowledged, a resume probe, and receipts with and
// without sender sequence numbers.
func cleanHistory(t *testing.T) *history {
	return newHistory(t).
		seen("pa", "a.example:2289").
		seen("pb", "b.example:2289").
		enqueueN("pa", 2).
		delivery("pa", domain.EventPushed{Seq: 0, Attempts: 1}, domain.EventPushed{Seq: 1, Attempts: 3}).
		enqueueN("pa", 3).
		delivery("pa", domain.QueueModeEntered{FromSeq: 2, Attempts: 6, LastError: "refused"}).
		delivery("pa", domain.PullServed{FromSeq: 2, ToSeq: 3, AwaitsAck: true}).
		delivery("pa", domain.PullAcknowledged{UpToSeq: 3}). // still queue mode: 4 is queued
		delivery("pa", domain.PullServed{FromSeq: 4, ToSeq: 4, AwaitsAck: false}).
		delivery("pa", domain.PushResumed{FromSeq: 5, Reason: domain.ResumeQueueDrained}).
		enqueueN("pb", 2).
		delivery("pb", domain.QueueModeEntered{FromSeq: 0, Attempts: 6, LastError: "timeout"}).
		delivery("pb", domain.PushResumed{FromSeq: 0, Reason: domain.ResumeProbe}, domain.EventPushed{Seq: 0, Attempts: 1}).
		delivery("pb", domain.EventPushed{Seq: 1, Attempts: 1}).
		enqueueN("pb", 4).
		delivery("pb", domain.EventPushed{Seq: 2, Through: 5, Attempts: 2}). // a push of four events
		enqueueN("pb", 3).
		delivery("pb", domain.EventsSkipped{FromSeq: 6, ThroughSeq: 7, Reason: "too large"}). // an operator's skip
		delivery("pb", domain.EventPushed{Seq: 8, Attempts: 1}).
		received("pa", u64(0), added(42, 7), added(42, 8)).
		received("pa", nil, added(42, 9)). // an upstream sender sends no sequence number
		received("pa", u64(5), added(42, 10)).
		received("pb", nil, added(42, 1), added(42, 1))
}

func audit(t *testing.T, store AuditStore, opts AuditOptions) Report {
	t.Helper()
	rep, err := Audit(t.Context(), store, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// wantViolations checks the violations found, ignoring their details.
func wantViolations(t *testing.T, rep Report, want ...Violation) {
	t.Helper()
	got := make([]Violation, len(rep.Violations))
	for i, v := range rep.Violations {
		if v.Detail == "" {
			t.Errorf("violation %v has no detail", v)
		}
		got[i] = Violation{Stream: v.Stream, Revision: v.Revision, Rule: v.Rule}
	}
	if len(want) == 0 {
		want = []Violation{}
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("violations:\n got %+v\nwant %+v\nall: %v", got, want, rep.Violations)
	}
}

func TestAuditCleanStore(t *testing.T) {
	t.Parallel()
	store := cleanHistory(t).store()
	var progress []uint64
	rep, err := Audit(t.Context(), store, AuditOptions{}, func(done uint64) { progress = append(progress, done) })
	if err != nil {
		t.Fatal(err)
	}
	wantViolations(t, rep)
	if !rep.Clean() {
		t.Fatal("a clean store is not clean")
	}
	want := []PeerSummary{
		{ServerID: "a.example:2289", PeerID: "pa", Head: 5, Delivered: 5, Pending: 0, Mode: "push", Received: 4},
		{ServerID: "b.example:2289", PeerID: "pb", Head: 9, Delivered: 7, Skipped: 2, Pending: 0, Mode: "push", Received: 2},
	}
	if !reflect.DeepEqual(rep.Peers, want) {
		t.Fatalf("peers:\n got %+v\nwant %+v", rep.Peers, want)
	}
	wantSkips := []Skip{{Stream: streams.Delivery("pb"), Revision: 5, ServerID: "b.example:2289", FromSeq: 6, ThroughSeq: 7, Reason: "too large"}}
	if !reflect.DeepEqual(rep.Skips, wantSkips) {
		t.Fatalf("skips:\n got %+v\nwant %+v", rep.Skips, wantSkips)
	}
	if n := uint64(len(readAll(t, store))); rep.Records != n || len(progress) == 0 || progress[len(progress)-1] != n {
		t.Fatalf("records %d, progress %v; want %d", rep.Records, progress, n)
	}
	if rep.CheckpointChecked {
		t.Fatal("no checkpoint was given")
	}
}

func TestAuditEmptyStore(t *testing.T) {
	t.Parallel()
	rep := audit(t, newHistory(t).store(), AuditOptions{CheckpointPath: filepath.Join(t.TempDir(), "none")})
	wantViolations(t, rep)
	if len(rep.Peers) != 0 || rep.Records != 0 || rep.CheckpointChecked {
		t.Fatalf("report of an empty store: %+v", rep)
	}
}

func TestAuditFindsBrokenInvariants(t *testing.T) {
	t.Parallel()
	deliveryA, inboxA := streams.Delivery("pa"), streams.Inbox("pa")
	tests := []struct {
		name    string
		history func(h *history)
		want    []Violation
	}{{
		name: "a push past the outbox head",
		history: func(h *history) {
			h.enqueueN("pa", 1).delivery("pa", domain.EventPushed{Seq: 0}, domain.EventPushed{Seq: 1})
		},
		want: []Violation{{Stream: deliveryA, Revision: 1, Rule: RuleCursorWithinHead}},
	}, {
		name: "a push of several events reaching past the outbox head",
		history: func(h *history) {
			h.enqueueN("pa", 3).delivery("pa", domain.EventPushed{Seq: 0, Through: 3})
		},
		want: []Violation{{Stream: deliveryA, Revision: 0, Rule: RuleCursorWithinHead}},
	}, {
		name: "a push recorded before its event was enqueued",
		history: func(h *history) {
			h.delivery("pa", domain.EventPushed{Seq: 0}).enqueueN("pa", 1)
		},
		want: []Violation{{Stream: deliveryA, Revision: 0, Rule: RuleCursorWithinHead}},
	}, {
		name: "pull served and acknowledged past the head",
		history: func(h *history) {
			h.enqueueN("pa", 2).
				delivery("pa", domain.QueueModeEntered{FromSeq: 0, Attempts: 6}).
				delivery("pa", domain.PullServed{FromSeq: 0, ToSeq: 2, AwaitsAck: true}).
				delivery("pa", domain.PullAcknowledged{UpToSeq: 5})
		},
		want: []Violation{{Stream: deliveryA, Revision: 1, Rule: RuleCursorWithinHead}, {Stream: deliveryA, Revision: 2, Rule: RuleCursorWithinHead}},
	}, {
		name: "a push in queue mode",
		history: func(h *history) {
			h.enqueueN("pa", 2).
				delivery("pa", domain.EventPushed{Seq: 0}, domain.QueueModeEntered{FromSeq: 1, Attempts: 6}, domain.EventPushed{Seq: 1})
		},
		want: []Violation{{Stream: deliveryA, Revision: 2, Rule: RuleNoPushInQueueMode}},
	}, {
		name: "a probe resume that is not followed by its push",
		history: func(h *history) {
			h.enqueueN("pa", 2).
				delivery("pa", domain.QueueModeEntered{FromSeq: 0, Attempts: 6}).
				delivery("pa", domain.PushResumed{FromSeq: 0, Reason: domain.ResumeProbe}).
				delivery("pa", domain.PullServed{FromSeq: 0, ToSeq: 1, AwaitsAck: false}).
				delivery("pa", domain.QueueModeEntered{FromSeq: 0, Attempts: 6}).
				delivery("pa", domain.PushResumed{FromSeq: 0, Reason: domain.ResumeProbe}) // and the stream ends
		},
		want: []Violation{{Stream: deliveryA, Revision: 1, Rule: RuleNoPushInQueueMode}, {Stream: deliveryA, Revision: 4, Rule: RuleNoPushInQueueMode}},
	}, {
		name: "skips past the head, and from an event that is not the oldest undelivered one",
		history: func(h *history) {
			h.enqueueN("pa", 4).
				delivery("pa", domain.EventsSkipped{FromSeq: 0, ThroughSeq: 4, Reason: "r"}).
				delivery("pa", domain.EventsSkipped{FromSeq: 1, ThroughSeq: 2, Reason: "r"})
		},
		want: []Violation{{Stream: deliveryA, Revision: 0, Rule: RuleCursorWithinHead}, {Stream: deliveryA, Revision: 1, Rule: RuleCursorIncreasing}},
	}, {
		name: "an epoch not started at the next undelivered event, a peer's report past the head",
		history: func(h *history) {
			h.enqueueN("pa", 3).
				delivery("pa", domain.EventPushed{Seq: 0}).
				delivery("pa", domain.EpochStarted{Epoch: 7, FromSeq: 0, ReceiverSeq: 2, ReceiverHas: true}).
				delivery("pa", domain.ReceiverReported{Seq: 3, Has: true})
		},
		want: []Violation{{Stream: deliveryA, Revision: 1, Rule: RuleCursorIncreasing}, {Stream: deliveryA, Revision: 2, Rule: RuleCursorWithinHead}},
	}, {
		name: "inbox sequence numbers start again in a new epoch, and must rise within it",
		history: func(h *history) {
			h.receivedIn("pa", 0, u64(5), added(1, 1)).
				receivedIn("pa", 9, u64(2), added(1, 2)).
				receivedIn("pa", 9, u64(2), added(1, 3))
		},
		want: []Violation{{Stream: "inbox-pa", Revision: 2, Rule: RuleInboxSeqIncreasing}},
	}, {
		name: "inbox sequence numbers must rise within a run and across runs",
		history: func(h *history) {
			h.receivedRun("pa", 0, added(1, 1), added(1, 2)).
				receivedRun("pa", 2, added(1, 3), added(1, 4)).
				receivedRun("pa", 3, added(1, 5), added(1, 6))
		},
		want: []Violation{{Stream: "inbox-pa", Revision: 2, Rule: RuleInboxSeqIncreasing}},
	}, {
		name: "owner terms that skip a term, repeat one, or name another predecessor",
		history: func(h *history) {
			h.enqueueN("pa", 3).
				delivery("pa", domain.OwnerTermStarted{Term: 1, Replica: "r1"}, domain.EventPushed{Seq: 0, Term: 1}).
				delivery("pa", domain.OwnerTermStarted{Term: 2, Replica: "r2", Previous: "r1"}, domain.EventPushed{Seq: 1, Term: 2}).
				delivery("pa", domain.OwnerTermStarted{Term: 4, Replica: "r1", Previous: "r2"}).
				delivery("pa", domain.OwnerTermStarted{Term: 4, Replica: "r3", Previous: "r1"}).
				delivery("pa", domain.OwnerTermStarted{Term: 5, Replica: "r2", Previous: "r3"}, domain.EventPushed{Seq: 2, Term: 5})
		},
		want: []Violation{{Stream: deliveryA, Revision: 4, Rule: RuleOwnerTerms}, {Stream: deliveryA, Revision: 5, Rule: RuleOwnerTerms},
			{Stream: deliveryA, Revision: 6, Rule: RuleOwnerTerms}},
	}, {
		name: "pushes recorded under an ended term, under none after terms began, and in queue mode",
		history: func(h *history) {
			h.enqueueN("pa", 5).
				delivery("pa", domain.EventPushed{Seq: 0}). // a single process before replicas: no term, none current
				delivery("pa", domain.OwnerTermStarted{Term: 1, Replica: "r1"}, domain.EventPushed{Seq: 1, Term: 1}).
				delivery("pa", domain.OwnerTermStarted{Term: 2, Replica: "r2", Previous: "r1"}, domain.EventPushed{Seq: 2, Term: 1}).
				delivery("pa", domain.EventPushed{Seq: 3}).
				delivery("pa", domain.QueueModeEntered{FromSeq: 4}, domain.EventPushed{Seq: 4, Term: 2})
		},
		want: []Violation{{Stream: deliveryA, Revision: 4, Rule: RulePushInOwnerTerm}, {Stream: deliveryA, Revision: 5, Rule: RulePushInOwnerTerm},
			{Stream: deliveryA, Revision: 7, Rule: RuleNoPushInQueueMode}},
	}, {
		name: "an event pushed twice",
		history: func(h *history) {
			h.enqueueN("pa", 3).delivery("pa", domain.EventPushed{Seq: 0}, domain.EventPushed{Seq: 1}, domain.EventPushed{Seq: 0})
		},
		want: []Violation{{Stream: deliveryA, Revision: 2, Rule: RuleNoDoubleDelivery}},
	}, {
		name: "a push that skips events, an acknowledgement that goes back",
		history: func(h *history) {
			h.enqueueN("pa", 4).
				delivery("pa", domain.EventPushed{Seq: 0}, domain.EventPushed{Seq: 2}).
				delivery("pa", domain.PullAcknowledged{UpToSeq: 3}, domain.PullAcknowledged{UpToSeq: 1})
		},
		want: []Violation{{Stream: deliveryA, Revision: 1, Rule: RuleCursorIncreasing}, {Stream: deliveryA, Revision: 3, Rule: RuleCursorIncreasing}},
	}, {
		name: "inbox sender sequence numbers that do not increase",
		history: func(h *history) {
			h.received("pa", u64(0), added(1, 1), added(1, 2)).
				received("pa", nil, added(1, 3)).
				received("pa", u64(1), added(1, 4)).
				received("pa", u64(7), added(1, 5)).
				received("pa", u64(3), added(1, 6))
		},
		want: []Violation{{Stream: inboxA, Revision: 3, Rule: RuleInboxSeqIncreasing}, {Stream: inboxA, Revision: 5, Rule: RuleInboxSeqIncreasing}},
	}, {
		name: "an unreadable record",
		history: func(h *history) {
			h.enqueueN("pa", 1).raw(deliveryA, streams.TypeEventPushed, []byte("{"))
		},
		want: []Violation{{Stream: deliveryA, Revision: 0, Rule: RuleRecordReadable}},
	}, {
		name: "records of unknown types are not violations",
		history: func(h *history) {
			h.enqueueN("pa", 1).raw(deliveryA, "EventTeleported", []byte(`{"seq":"9"}`)).delivery("pa", domain.EventPushed{Seq: 0})
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// Given a store with peer a and the history,
			h := newHistory(t).seen("pa", "a.example:2289")
			tt.history(h)
			// when audited, then exactly the broken rules are reported.
			wantViolations(t, audit(t, h.store(), AuditOptions{}), tt.want...)
		})
	}
}

// The store gives each record the next revision of its stream, so an
// outbox gap cannot be produced through it: the check runs on records as
// a faulty store (or a hand-edited database) would give them.
func TestAuditOutboxGapless(t *testing.T) {
	t.Parallel()
	recs := newHistory(t).seen("pa", "a.example:2289").enqueueN("pa", 4).enqueueN("pb", 1).records()
	outboxA := streams.Outbox("pa")
	recs[2].Revision = 2 // 0, 2: 1 is missing
	recs[3].Revision = 2 // 2 again
	recs[4].Revision = 3
	a := NewAuditor()
	for _, r := range recs {
		a.Check(streams.Decode(r))
	}
	a.finish()
	rep := a.report()
	wantViolations(t, rep, Violation{Stream: outboxA, Revision: 2, Rule: RuleOutboxGapless}, Violation{Stream: outboxA, Revision: 2, Rule: RuleOutboxGapless})
	if !strings.Contains(rep.Violations[0].Detail, "1 missing") {
		t.Fatalf("detail %q", rep.Violations[0].Detail)
	}
	// The gapless records as the store gives them pass.
	a = NewAuditor()
	for _, r := range newHistory(t).enqueueN("pa", 4).records() {
		a.Check(streams.Decode(r))
	}
	wantViolations(t, a.report())
}

func TestAuditCheckpoint(t *testing.T) {
	t.Parallel()
	store := cleanHistory(t).store()
	recs := readAll(t, store)
	write := func(t *testing.T, s *State) string {
		path := filepath.Join(t.TempDir(), "projections.checkpoint")
		if err := WriteCheckpoint(path, s); err != nil {
			t.Fatal(err)
		}
		return path
	}
	t.Run("a checkpoint equal to the replay at its position passes", func(t *testing.T) {
		for _, cut := range []int{0, 1, len(recs) / 2, len(recs)} {
			rep := audit(t, store, AuditOptions{CheckpointPath: write(t, given(t, recs[:cut]...))})
			wantViolations(t, rep)
			if !rep.CheckpointChecked {
				t.Fatal("the checkpoint was not checked")
			}
		}
	})
	t.Run("a checkpoint that differs from the replay is reported", func(t *testing.T) {
		s := given(t, recs[:len(recs)/2]...)
		s.peers["pa"].out.Delivered++ // what a projection bug would do
		path := write(t, s)
		rep := audit(t, store, AuditOptions{CheckpointPath: path})
		wantViolations(t, rep, Violation{Stream: path, Revision: 0, Rule: RuleCheckpointMatchesReplay})
		if !strings.Contains(rep.Violations[0].Detail, "peer pa") {
			t.Fatalf("detail %q does not name the peer", rep.Violations[0].Detail)
		}
	})
	t.Run("a checkpoint past the end of the store is reported", func(t *testing.T) {
		s := given(t, recs...)
		apply(t, s, eventstore.RecordedEvent{Stream: "other", Position: eventstore.Position{Commit: 1 << 40, Prepare: 1 << 40}})
		path := write(t, s)
		wantViolations(t, audit(t, store, AuditOptions{CheckpointPath: path}), Violation{Stream: path, Revision: 0, Rule: RuleCheckpointMatchesReplay})
	})
	t.Run("an unreadable checkpoint is reported", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "projections.checkpoint")
		if err := writeFileAtomic(path, []byte("{")); err != nil {
			t.Fatal(err)
		}
		wantViolations(t, audit(t, store, AuditOptions{CheckpointPath: path}), Violation{Stream: path, Revision: 0, Rule: RuleCheckpointMatchesReplay})
	})
}
