package projections

import (
	"strings"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// effectsHistory is two peers' guilds and invites, received and sent. The
// projections snapshot retention would write is the state after the
// first effectsSnapshotAt records; pa's inbox is then truncated before
// revision 3 (its last record then is kept) and its outbox before 1; pb's
// streams are kept whole.
func effectsHistory(t *testing.T) []eventstore.RecordedEvent {
	return newHistory(t).
		seen("pa", "a.example:2289").
		seen("pb", "b.example:2289").
		received("pa", nil, added(42, 7), added(42, 6), invited(42, 9, "ia")). // inbox-pa 0..2
		enqueue("pa", invited(77, 5, "sa")).                                   // outbox-pa 0
		received("pb", nil, added(42, 1), invited(42, 3, "ib")).               // inbox-pb 0, 1
		enqueue("pb", invited(88, 5, "sb")).                                   // outbox-pb 0
		received("pa", nil, added(42, 8)).                                     // inbox-pa 3
		enqueue("pa", added(77, 6)).                                           // outbox-pa 1
		// the snapshot is here
		received("pb", nil, added(43, 2)).
		received("pa", nil, removed(42, 7)). // a seeded effect undone
		records()
}

const effectsSnapshotAt = 11

// positionAfter is the position of the first n records of a history.
func positionAfter(n uint64) domain.Position { return domain.Position{Commit: n, Prepare: n} }

// keptOf is what retention left of effectsHistory.
func keptOf(recs []eventstore.RecordedEvent) []eventstore.RecordedEvent {
	var kept []eventstore.RecordedEvent
	for _, r := range recs {
		if (r.Stream == streams.Inbox("pa") && r.Revision < 3) || (r.Stream == streams.Outbox("pa") && r.Revision < 1) {
			continue
		}
		kept = append(kept, r)
	}
	return kept
}

// retainedAudit is an audit told where retention truncated pa's streams,
// its effects started from snap at position at, comparing cp (if any).
func retainedAudit(t *testing.T, snap *State, at domain.Position, cp *State) Report {
	t.Helper()
	recs := effectsHistory(t)
	a := NewAuditor()
	if cp != nil {
		a.CompareCheckpoint("cp", cp)
	}
	a.OutboxTruncated("pa", streams.Outbox("pa"), 1)
	a.EffectsFromSnapshot("pa", snap, at)
	a.InboxTruncated(streams.Inbox("pa"), 3)
	for _, r := range keptOf(recs) {
		a.Check(streams.Decode(r))
	}
	return a.Report()
}

func TestEffectsStartedFromAProjectionsSnapshot(t *testing.T) {
	t.Parallel()
	recs := effectsHistory(t)
	snap := given(t, recs[:effectsSnapshotAt]...)
	full := given(t, recs...)
	// The removed records made effects of pa the kept ones do not.
	if len(full.Guilds(42)) != 3 || len(full.Invites(42)) != 2 || len(full.SentInvites()) != 2 {
		t.Fatalf("the history's effects: guilds %v, invites %v, sent %v", full.Guilds(42), full.Invites(42), full.SentInvites())
	}
	t.Run("given pa's effects from the snapshot, the replay of the kept records ends where a full one does", func(t *testing.T) {
		rep := retainedAudit(t, snap, positionAfter(effectsSnapshotAt), full)
		wantViolations(t, rep)
		if !rep.CheckpointChecked {
			t.Fatal("a checkpoint after the snapshot was not compared")
		}
		want := []Retained{{Stream: streams.Outbox("pa"), From: 1}, {Stream: streams.Inbox("pa"), From: 3, FromSnapshot: true}}
		if len(rep.Retained) != 2 || rep.Retained[0] != want[0] || rep.Retained[1] != want[1] {
			t.Fatalf("retained %+v, want %+v", rep.Retained, want)
		}
	})
	t.Run("given only pa's effects are taken, another peer's lost in the snapshot stay lost", func(t *testing.T) {
		// pb's records are all kept, so its effects come from them: a
		// snapshot that lost pb's guild and invites must not matter.
		partial := snap.Clone()
		partial.guilds[42] = map[guildKey]struct{}{{7, "pa"}: {}, {6, "pa"}: {}, {8, "pa"}: {}}
		partial.invites[42] = map[inviteKey]uint64{{"pa", "ia"}: 9}
		delete(partial.sent, inviteKey{"pb", "sb"})
		// And one that names effects pb never had must not add them.
		partial.guilds[50] = map[guildKey]struct{}{{99, "pb"}: {}}
		partial.invites[50] = map[inviteKey]uint64{{"pb", "ix"}: 1}
		partial.sent[inviteKey{"pb", "sx"}] = sentInvite{invitee: 1, inviter: 2}
		wantViolations(t, retainedAudit(t, partial, positionAfter(effectsSnapshotAt), full))
	})
	t.Run("not given the snapshot, the replay misses pa's effects", func(t *testing.T) {
		rep := retainedAudit(t, NewState(), positionAfter(effectsSnapshotAt), full)
		wantViolations(t, rep, Violation{Stream: "cp", Revision: 0, Rule: RuleCheckpointMatchesReplay})
	})
}

func TestACheckpointOlderThanTheSeededEffectsIsNotCompared(t *testing.T) {
	t.Parallel()
	recs := effectsHistory(t)
	snap := given(t, recs[:effectsSnapshotAt]...)
	t.Run("given a checkpoint before the snapshot, it is not compared", func(t *testing.T) {
		for _, cut := range []int{0, 4, effectsSnapshotAt - 1} {
			rep := retainedAudit(t, snap, positionAfter(effectsSnapshotAt), given(t, recs[:cut]...))
			wantViolations(t, rep)
			if rep.CheckpointChecked {
				t.Fatalf("a checkpoint of %d records, before the snapshot of %d, was compared", cut, effectsSnapshotAt)
			}
		}
	})
	t.Run("given a checkpoint at or after the snapshot, it is compared", func(t *testing.T) {
		for _, cut := range []int{effectsSnapshotAt, len(recs) - 1, len(recs)} {
			cp := given(t, recs[:cut]...)
			rep := retainedAudit(t, snap, positionAfter(effectsSnapshotAt), cp)
			wantViolations(t, rep)
			if !rep.CheckpointChecked {
				t.Fatalf("a checkpoint of %d records was not compared", cut)
			}
			cp = cp.Clone()
			cp.guilds[42] = nil
			wantViolations(t, retainedAudit(t, snap, positionAfter(effectsSnapshotAt), cp),
				Violation{Stream: "cp", Revision: 0, Rule: RuleCheckpointMatchesReplay})
		}
	})
	t.Run("the latest of two snapshots counts, whichever comes first", func(t *testing.T) {
		early, late := given(t, recs[:4]...), snap
		for _, order := range [][2]uint64{{4, effectsSnapshotAt}, {effectsSnapshotAt, 4}} {
			a := NewAuditor()
			a.CompareCheckpoint("cp", given(t, recs[:6]...)) // between the two
			a.OutboxTruncated("pa", streams.Outbox("pa"), 1)
			for _, at := range order {
				s := early
				if at == effectsSnapshotAt {
					s = late
				}
				a.EffectsFromSnapshot("pa", s, positionAfter(at))
			}
			for _, r := range keptOf(recs) {
				a.Check(streams.Decode(r))
			}
			rep := a.Report()
			wantViolations(t, rep)
			if rep.CheckpointChecked {
				t.Fatalf("snapshots at %v: a checkpoint between them was compared", order)
			}
		}
	})
}

func TestAnInboxTruncatedBehindASnapshotOrNot(t *testing.T) {
	t.Parallel()
	t.Run("given an inbox truncated behind a snapshot, the report says where its audit began", func(t *testing.T) {
		a := NewAuditor()
		a.InboxTruncated(streams.Inbox("pa"), 0) // not truncated
		a.InboxTruncated(streams.Inbox("pb"), 3)
		rep := a.Report()
		wantViolations(t, rep)
		if want := (Retained{Stream: streams.Inbox("pb"), From: 3, FromSnapshot: true}); len(rep.Retained) != 1 || rep.Retained[0] != want {
			t.Fatalf("retained %+v, want %+v", rep.Retained, want)
		}
	})
	t.Run("given one truncated without a projections snapshot, it is reported", func(t *testing.T) {
		a := NewAuditor()
		a.InboxTruncatedWithoutSnapshot(streams.Inbox("pa"), 3, "no projections snapshot names the peer")
		rep := a.Report()
		wantViolations(t, rep, Violation{Stream: streams.Inbox("pa"), Revision: 3, Rule: RuleTruncatedBehindSnapshot})
		if d := rep.Violations[0].Detail; !strings.Contains(d, "truncated before 3") || !strings.Contains(d, "no projections snapshot names the peer") {
			t.Fatalf("detail %q", d)
		}
	})
}

// Inboxes lists the peers something was received from, with their folds.
func TestInboxesListOnlyPeersWithEvents(t *testing.T) {
	t.Parallel()
	s := given(t, newHistory(t).
		seen("pa", "a.example:2289").
		seen("pb", "b.example:2289").
		received("pa", u64(4), added(42, 7), added(42, 8)).
		enqueueN("pb", 2).
		records()...)
	in := s.Inboxes()
	if len(in) != 1 || in["pa"].Count != 2 || in["pa"].LastSeq != 5 {
		t.Fatalf("Inboxes = %+v, want pa's alone: 2 events, the last sequence number 5", in)
	}
}
