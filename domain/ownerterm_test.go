package domain

import "testing"

// A sender's replicas hand a peer over under growing owner terms; the
// receiver's inbox remembers the highest term its pushes carried, so a
// push from a replica that lost the peer is told apart and refused.
func TestInboxOwnerTerms(t *testing.T) {
	t.Parallel()
	// given folds inbox records, each (seq, epoch, term).
	given := func(recs ...[3]uint64) Inbox {
		var in Inbox
		for i, r := range recs {
			in.Apply(uint64(i), EventReceived{SenderSeq: u64(r[0]), SenderEpoch: r[1], SenderTerm: r[2]})
		}
		return in
	}
	t.Run("a single process sends no term: nothing is ever stale", func(t *testing.T) {
		in := given([3]uint64{0, 0, 0}, [3]uint64{1, 0, 0})
		if in.Term != 0 || in.Stale(0) {
			t.Fatalf("term %d, stale(0) %v", in.Term, in.Stale(0))
		}
	})
	t.Run("the highest term recorded holds, and a lower one is stale", func(t *testing.T) {
		in := given([3]uint64{0, 0, 3}, [3]uint64{1, 0, 5}, [3]uint64{2, 0, 4})
		if in.Term != 5 {
			t.Fatalf("term %d, want 5", in.Term)
		}
		if !in.Stale(4) || !in.Stale(0) {
			t.Fatal("a push under an earlier term is not stale")
		}
		if in.Stale(5) || in.Stale(6) {
			t.Fatal("a push under the current or a later term is stale")
		}
	})
	t.Run("a record without a sequence number (an upstream sender's) leaves the term", func(t *testing.T) {
		in := given([3]uint64{0, 0, 5})
		in.Apply(1, EventReceived{SenderTerm: 9})
		if in.Term != 5 || in.Count != 2 {
			t.Fatalf("term %d, count %d; want 5, 2", in.Term, in.Count)
		}
	})
	t.Run("a record at or below the last sequence still carries its term", func(t *testing.T) {
		in := given([3]uint64{4, 0, 2})
		in.Apply(1, EventReceived{SenderSeq: u64(4), SenderTerm: 3})
		if in.Term != 3 || in.LastSeq != 4 {
			t.Fatalf("term %d last %d; want 3, 4", in.Term, in.LastSeq)
		}
	})
	t.Run("a new epoch starts the terms again", func(t *testing.T) {
		in := given([3]uint64{7, 0, 6}, [3]uint64{0, 9, 1})
		if in.Term != 1 || in.Epoch != 9 || in.Stale(1) || !in.Stale(0) {
			t.Fatalf("after a new epoch: %+v", in)
		}
		if got := given([3]uint64{7, 0, 6}).InEpoch(9); got.Term != 0 {
			t.Fatalf("InEpoch kept term %d", got.Term)
		}
		if got := given([3]uint64{7, 4, 6}).InEpoch(4); got.Term != 6 {
			t.Fatalf("InEpoch of the same epoch lost the term: %d", got.Term)
		}
	})
	t.Run("when a push's term is seen, then events applied after it carry it forward", func(t *testing.T) {
		in := given([3]uint64{0, 0, 2})
		in.SeeTerm(4)
		in.SeeTerm(3) // a lower one never lowers it
		if in.Term != 4 {
			t.Fatalf("term %d after seeing 4 then 3", in.Term)
		}
		in.Received(u64(1), nil)
		// Folded again from its records alone, the inbox holds the term.
		var again Inbox
		again.Apply(0, EventReceived{SenderSeq: u64(0), SenderTerm: 2})
		again.Apply(1, EventReceived{SenderSeq: u64(1), SenderTerm: in.Term})
		if again.Term != 4 || !again.Stale(3) {
			t.Fatalf("refolded: %+v", again)
		}
	})
}

// A push's record names the owner term it went out under: the audit checks
// it against the term current where the record lands.
func TestAPushRecordNamesTheOwnerTerm(t *testing.T) {
	t.Parallel()
	t.Run("given a replica's term, when a push succeeds, then its record names the term", func(t *testing.T) {
		o := given(3, OwnerTermStarted{Term: 4, Replica: "r2", Previous: "r1"}, EventPushed{Seq: 0, Term: 4})
		got, err := o.PushSucceeded(1, 2, 1, false)
		then(t, got, err, EventPushed{Seq: 1, Through: 2, Attempts: 1, Term: 4})
	})
	t.Run("given a probe under a term, then the push it resumes with names the term", func(t *testing.T) {
		o := given(2, OwnerTermStarted{Term: 2, Replica: "r1"}, QueueModeEntered{FromSeq: 0, Attempts: 6})
		got, err := o.PushSucceeded(0, 0, 1, true)
		then(t, got, err, PushResumed{FromSeq: 0, Reason: ResumeProbe}, EventPushed{Seq: 0, Attempts: 1, Term: 2})
	})
	t.Run("given a single process (no term), then the record names none", func(t *testing.T) {
		got, err := given(1).PushSucceeded(0, 0, 1, false)
		then(t, got, err, EventPushed{Seq: 0, Attempts: 1})
	})
}
