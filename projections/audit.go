package projections

import (
	"fmt"

	"github.com/harmony-postbox/postbox/domain"
)

// Rule names: stable, for scripts reading `postbox audit --json`.
const (
	// RuleOutboxGapless: an outbox's revisions are 0, 1, 2... in global
	// order: the sequence numbers have no gap and none is reused.
	RuleOutboxGapless = "outbox-gapless"
	// RuleCursorIncreasing: the delivered cursor only moves forward, and
	// without a gap for a push: an EventPushed starts at exactly the next
	// undelivered event, a PullAcknowledged goes beyond what was delivered.
	RuleCursorIncreasing = "cursor-increasing"
	// RuleCursorWithinHead: every sequence number a delivery record names
	// (pushed, queue mode from, pull served up to, acknowledged up to) is an
	// event already in the outbox at that point of the global order.
	RuleCursorWithinHead = "cursor-within-head"
	// RuleNoPushInQueueMode: no EventPushed in queue mode, except a resume
	// probe's PushResumed{REASON_PROBE} followed at once, in the same
	// stream, by the EventPushed of the event it names.
	RuleNoPushInQueueMode = "no-push-in-queue-mode"
	// RuleNoDoubleDelivery: no EventPushed for an event already delivered.
	RuleNoDoubleDelivery = "no-double-delivery"
	// RuleInboxSeqIncreasing: in each inbox, the sender sequence numbers of
	// the records that carry one strictly increase.
	RuleInboxSeqIncreasing = "inbox-seq-increasing"
	// RuleOwnerTerms: with replicas, each OwnerTermStarted in a delivery
	// stream starts the term after the current one and names the replica
	// that held it: every claim was appended where its replica read the
	// stream, so no two replicas ran the peer under one term, and every
	// record after a claim (each push's among them) was written in the
	// claimant's term.
	RuleOwnerTerms = "owner-terms"
	// RulePushInOwnerTerm: with replicas, every EventPushed names the
	// owner term current where it lands: the push went out under the term
	// of the replica that ran the peer then, not an ended one (a push in
	// queue mode is RuleNoPushInQueueMode's).
	RulePushInOwnerTerm = "push-in-owner-term"
	// RuleCheckpointMatchesReplay: the live projections' checkpoint equals a
	// fresh replay up to the checkpoint's position.
	RuleCheckpointMatchesReplay = "checkpoint-matches-replay"
	// RuleRecordReadable: a record of a known type decodes, and its
	// stream's fold takes it (a record of the peers stream names a peer an
	// earlier one registered).
	RuleRecordReadable = "record-readable"
)

// Report is what Audit found.
type Report struct {
	Peers      []PeerSummary `json:"peers"`
	Violations []Violation   `json:"violations"`
	// Skips are the events operators skipped (postbox skip): not
	// violations, but never to pass unseen.
	Skips []Skip `json:"skips"`
	// TooLarge are the received events too large for the event store,
	// of which only a marker is stored: not violations, but lost.
	TooLarge []TooLarge `json:"too_large"`
	// Records is how many records were read.
	Records uint64 `json:"records"`
	// UnknownRecords were of types this build does not know: skipped, not
	// violations (a newer build may have written them).
	UnknownRecords uint64 `json:"unknown_records"`
	// CheckpointChecked: a checkpoint was found and compared.
	CheckpointChecked bool `json:"checkpoint_checked"`
	// Retained: the streams retention truncated, and where the audit
	// started on each; every other stream was checked from its start.
	Retained []Retained `json:"retained,omitempty"`
	// SnapshotsChecked: delivery and peers snapshots compared with the
	// fold of the records they cover; SnapshotsUnchecked: those met too
	// long after the records they cover to compare (not violations).
	SnapshotsChecked   uint64 `json:"snapshots_checked"`
	SnapshotsUnchecked uint64 `json:"snapshots_unchecked,omitempty"`
}

// Clean reports whether no invariant was broken.
func (r Report) Clean() bool { return len(r.Violations) == 0 }

// PeerSummary is one peer's line of the report.
type PeerSummary struct {
	ServerID  string `json:"server_id"`
	PeerID    string `json:"peer_id"`
	Head      uint64 `json:"head"`
	Delivered uint64 `json:"delivered"`
	Skipped   uint64 `json:"skipped"`
	Pending   uint64 `json:"pending"`
	Mode      string `json:"mode"`
	Received  uint64 `json:"received"`
}

// Skip is one EventsSkipped record.
type Skip struct {
	Stream     string `json:"stream"`
	Revision   uint64 `json:"revision"`
	ServerID   string `json:"server_id"`
	FromSeq    uint64 `json:"from_seq"`
	ThroughSeq uint64 `json:"through_seq"`
	Reason     string `json:"reason"`
}

// TooLarge is one marker of a received event too large for the store.
type TooLarge struct {
	Stream    string  `json:"stream"`
	Revision  uint64  `json:"revision"`
	ServerID  string  `json:"server_id"`
	SenderSeq *uint64 `json:"sender_seq,omitempty"`
	Bytes     uint64  `json:"bytes"`
}

// Violation is one broken invariant, at the record that shows it.
type Violation struct {
	Stream   string `json:"stream"`
	Revision uint64 `json:"revision"`
	Rule     string `json:"rule"`
	Detail   string `json:"detail"`
}

func (v Violation) String() string {
	return fmt.Sprintf("%s@%d: %s: %s", v.Stream, v.Revision, v.Rule, v.Detail)
}

// Auditor replays every stream from the start, in global order, into a
// fresh State and checks the invariants of the delivery engine
// (ARCHITECTURE.md, "Projections and audit") as of each record; and
// compares the live projections' checkpoint, if given, with the replay at
// the checkpoint's position. adapters/projector feeds it the store.
type Auditor = auditor

// auditor checks records one at a time, against the state replayed so far.
type auditor struct {
	state      *State
	records    uint64
	violations []Violation
	skips      []Skip
	tooLarge   []TooLarge

	outboxNext map[string]uint64       // outbox stream → next revision expected
	inboxSeq   map[string]domain.Inbox // inbox stream → how far the sender's sequence numbers went
	probe      map[string]pendingProbe // delivery stream → probe resume awaiting its push
	probeOrder []string                // streams with a pending probe, for a stable report
	covered    map[string]uint64       // delivery stream → records before it are in a snapshot (retained.go)
	retained   []Retained
	folds      map[string][]foldAt // delivery stream → its latest folds, oldest first (snapshots.go)
	peersNext  uint64              // the revision after the last peers record met (peers.go)

	snapshotsChecked, snapshotsUnchecked uint64
	// seeded: some effects started from a projections snapshot at
	// seededAt (retained.go).
	seeded   bool
	seededAt domain.Position

	checkpoint        *State
	checkpointDB      string // the checkpoint's database identity
	checkpointPath    string
	checkpointChecked bool
}

type pendingProbe struct {
	revision uint64
	from     uint64
}

// NewAuditor returns an audit before any record.
func NewAuditor() *Auditor {
	return &Auditor{
		state:      NewState(),
		outboxNext: map[string]uint64{},
		inboxSeq:   map[string]domain.Inbox{},
		probe:      map[string]pendingProbe{},
		covered:    map[string]uint64{},
		folds:      map[string][]foldAt{},
	}
}

// CompareCheckpoint makes the audit compare cp, the live projections'
// checkpoint read from path, with the replay.
func (a *Auditor) CompareCheckpoint(path string, cp *State) {
	a.checkpointChecked = true
	a.checkpoint, a.checkpointPath, a.checkpointDB = cp, path, cp.databaseID
}

// CheckpointUnreadable reports the checkpoint at path that could not be
// read.
func (a *Auditor) CheckpointUnreadable(path string, err error) {
	a.checkpointChecked = true
	a.violate(path, 0, RuleCheckpointMatchesReplay, fmt.Sprintf("the checkpoint cannot be read: %v", err))
}

// Records is how many records were checked.
func (a *Auditor) Records() uint64 { return a.records }

// Report ends the audit: what it found.
func (a *Auditor) Report() Report {
	a.finish()
	return a.report()
}

func (a *Auditor) violate(stream string, rev uint64, rule, detail string) {
	a.violations = append(a.violations, Violation{Stream: stream, Revision: rev, Rule: rule, Detail: detail})
}

// Check checks one record, then folds it into the replay.
func (a *Auditor) Check(r domain.Record) {
	a.records++
	if r.Kind == domain.StreamDelivery && r.Revision < a.covered[r.Stream] {
		return // folded into the snapshot the audit started from
	}
	if a.state.applied && !a.state.pos.Less(r.Position) {
		return // a subscription repeating itself: the state skips it too
	}
	if cp := a.checkpoint; cp != nil && (!cp.applied || cp.pos.Less(r.Position)) {
		a.compareCheckpoint()
	}
	if !r.Unknown {
		switch r.Kind {
		case domain.StreamOutbox:
			a.checkOutbox(r)
		case domain.StreamDelivery:
			if ev, ok := r.Event.(domain.DeliveryEvent); ok { // unreadable records are reported when applied
				a.checkDelivery(r, ev)
			}
		case domain.StreamInbox:
			events, _ := domain.ReceivedIn(r.Event)
			for _, rec := range events {
				a.checkInbox(r, rec)
			}
		}
	}
	if err := a.state.Apply(r); err != nil {
		a.violate(r.Stream, r.Revision, RuleRecordReadable, err.Error())
	}
	switch r.Kind {
	case domain.StreamDelivery:
		a.keepFold(r.Stream, r.Revision+1, a.state.peer(r.Peer).out)
	case domain.StreamPeers:
		a.peersNext = max(a.peersNext, r.Revision+1)
	}
}

func (a *Auditor) checkOutbox(r domain.Record) {
	next := a.outboxNext[r.Stream]
	switch {
	case r.Revision > next:
		a.violate(r.Stream, r.Revision, RuleOutboxGapless, fmt.Sprintf("sequence %d where %d was due: %d missing", r.Revision, next, r.Revision-next))
	case r.Revision < next:
		a.violate(r.Stream, r.Revision, RuleOutboxGapless, fmt.Sprintf("sequence %d again, after %d", r.Revision, next-1))
	}
	a.outboxNext[r.Stream] = max(next, r.Revision+1)
}

func (a *Auditor) checkInbox(r domain.Record, rec domain.EventReceived) {
	if rec.TooLargeBytes != nil {
		a.tooLarge = append(a.tooLarge, TooLarge{Stream: r.Stream, Revision: r.Revision,
			ServerID: a.state.ServerIDOf(r.Peer), SenderSeq: rec.SenderSeq, Bytes: *rec.TooLargeBytes})
	}
	if rec.SenderSeq == nil {
		return
	}
	// Sequence numbers count within the sender's epoch: a new epoch (the
	// sender's store went back) starts them again (domain.Inbox's rule).
	in := a.inboxSeq[r.Stream]
	if seq, epoch := *rec.SenderSeq, rec.SenderEpoch; in.HasSeq && in.Epoch == epoch && seq <= in.LastSeq {
		a.violate(r.Stream, r.Revision, RuleInboxSeqIncreasing, fmt.Sprintf("sender sequence %d after %d (epoch %d)", seq, in.LastSeq, epoch))
	}
	in.Apply(r.Revision, rec)
	a.inboxSeq[r.Stream] = in
}

func (a *Auditor) checkDelivery(r domain.Record, ev domain.DeliveryEvent) {
	peer := r.Peer
	var out domain.Outbox // the cursors before this record
	if p, ok := a.state.peers[peer]; ok {
		out = p.out
	}
	push, isPush := ev.(domain.EventPushed)
	if pr, ok := a.probe[r.Stream]; ok {
		delete(a.probe, r.Stream)
		if !isPush || push.Seq != pr.from {
			a.violate(r.Stream, pr.revision, RuleNoPushInQueueMode,
				fmt.Sprintf("a probe resumed pushing at %d but the next record is not the EventPushed of %d", pr.from, pr.from))
		}
	}
	switch e := ev.(type) {
	case domain.EventPushed:
		if out.Mode == domain.ModeQueue {
			a.violate(r.Stream, r.Revision, RuleNoPushInQueueMode, fmt.Sprintf("event %d pushed in queue mode", e.Seq))
		}
		if e.Term != out.Owner.Term {
			a.violate(r.Stream, r.Revision, RulePushInOwnerTerm, fmt.Sprintf("event %d pushed under term %d, but the current term is %d of %q",
				e.Seq, e.Term, out.Owner.Term, out.Owner.Replica))
		}
		switch {
		case e.Last() >= out.Head:
			a.violate(r.Stream, r.Revision, RuleCursorWithinHead, fmt.Sprintf("event %d pushed, but the outbox holds %d events", e.Last(), out.Head))
		case e.Seq < out.Delivered:
			a.violate(r.Stream, r.Revision, RuleNoDoubleDelivery, fmt.Sprintf("event %d pushed again: delivered up to %d already", e.Seq, out.Delivered))
		case e.Seq > out.Delivered:
			a.violate(r.Stream, r.Revision, RuleCursorIncreasing, fmt.Sprintf("event %d pushed, but the next undelivered event is %d", e.Seq, out.Delivered))
		}
	case domain.QueueModeEntered:
		if e.FromSeq >= out.Head {
			a.violate(r.Stream, r.Revision, RuleCursorWithinHead, fmt.Sprintf("queue mode from event %d, but the outbox holds %d events", e.FromSeq, out.Head))
		}
	case domain.PullServed:
		switch {
		case e.ToSeq < e.FromSeq:
			a.violate(r.Stream, r.Revision, RuleCursorWithinHead, fmt.Sprintf("pull served %d..%d: an empty range", e.FromSeq, e.ToSeq))
		case e.ToSeq >= out.Head:
			a.violate(r.Stream, r.Revision, RuleCursorWithinHead, fmt.Sprintf("pull served %d..%d, but the outbox holds %d events", e.FromSeq, e.ToSeq, out.Head))
		}
	case domain.PullAcknowledged:
		if e.UpToSeq >= out.Head {
			a.violate(r.Stream, r.Revision, RuleCursorWithinHead, fmt.Sprintf("acknowledged up to %d, but the outbox holds %d events", e.UpToSeq, out.Head))
		}
		if e.UpToSeq < out.Delivered {
			a.violate(r.Stream, r.Revision, RuleCursorIncreasing, fmt.Sprintf("acknowledged up to %d, but delivered up to %d already", e.UpToSeq, out.Delivered))
		}
	case domain.EpochStarted:
		if e.FromSeq != out.Delivered {
			a.violate(r.Stream, r.Revision, RuleCursorIncreasing, fmt.Sprintf("epoch %d from %d, but the next undelivered event is %d", e.Epoch, e.FromSeq, out.Delivered))
		}
	case domain.ReceiverReported:
		if e.Has && e.Seq >= out.Head {
			a.violate(r.Stream, r.Revision, RuleCursorWithinHead, fmt.Sprintf("the peer reported event %d, but the outbox holds %d events", e.Seq, out.Head))
		}
	case domain.EventsSkipped:
		switch {
		case e.ThroughSeq < e.FromSeq:
			a.violate(r.Stream, r.Revision, RuleCursorWithinHead, fmt.Sprintf("skipped %d..%d: an empty range", e.FromSeq, e.ThroughSeq))
		case e.ThroughSeq >= out.Head:
			a.violate(r.Stream, r.Revision, RuleCursorWithinHead, fmt.Sprintf("skipped %d..%d, but the outbox holds %d events", e.FromSeq, e.ThroughSeq, out.Head))
		case e.FromSeq != out.Delivered:
			a.violate(r.Stream, r.Revision, RuleCursorIncreasing, fmt.Sprintf("skipped from %d, but the next undelivered event is %d", e.FromSeq, out.Delivered))
		}
		a.skips = append(a.skips, Skip{Stream: r.Stream, Revision: r.Revision, ServerID: a.state.ServerIDOf(peer),
			FromSeq: e.FromSeq, ThroughSeq: e.ThroughSeq, Reason: e.Reason})
	case domain.OwnerTermStarted:
		if e.Term != out.Owner.Term+1 || e.Previous != out.Owner.Replica {
			a.violate(r.Stream, r.Revision, RuleOwnerTerms, fmt.Sprintf("term %d of %s after %s, but the current term is %d of %q",
				e.Term, e.Replica, previousName(e.Previous), out.Owner.Term, out.Owner.Replica))
		}
	case domain.PushResumed:
		if e.Reason == domain.ResumeProbe {
			if _, seen := a.probe[r.Stream]; !seen {
				a.probeOrder = append(a.probeOrder, r.Stream)
			}
			a.probe[r.Stream] = pendingProbe{revision: r.Revision, from: e.FromSeq}
		}
	}
}

// compareCheckpoint compares the replay, now at the checkpoint's position
// or just before what follows it, with the checkpoint; once.
func (a *Auditor) compareCheckpoint() {
	cp := a.checkpoint
	a.checkpoint = nil
	if a.seeded && (!cp.applied || cp.pos.Less(a.seededAt)) {
		// The replay holds effects from after the checkpoint's position.
		a.checkpointChecked = false
		return
	}
	if same, diff := equalStates(cp, a.state); !same {
		a.violate(a.checkpointPath, 0, RuleCheckpointMatchesReplay, diff)
	}
}

func (a *Auditor) finish() {
	for _, stream := range a.probeOrder {
		if pr, ok := a.probe[stream]; ok {
			delete(a.probe, stream)
			a.violate(stream, pr.revision, RuleNoPushInQueueMode,
				fmt.Sprintf("a probe resumed pushing at %d but no EventPushed follows", pr.from))
		}
	}
	a.probeOrder = nil
	if db := a.state.databaseID; a.checkpointDB != "" && db != "" && a.checkpointDB != db {
		a.violate(a.checkpointPath, 0, RuleCheckpointMatchesReplay,
			fmt.Sprintf("the checkpoint is of database %s, the store is database %s", a.checkpointDB, db))
	}
	if a.checkpoint != nil {
		// The store ends at or before the checkpoint's position; a
		// checkpoint ahead of the store shows up as a position mismatch.
		a.compareCheckpoint()
	}
}

func (a *Auditor) report() Report {
	rep := Report{
		Violations:         a.violations,
		Records:            a.records,
		UnknownRecords:     a.state.unknown,
		CheckpointChecked:  a.checkpointChecked,
		Retained:           a.retained,
		SnapshotsChecked:   a.snapshotsChecked,
		SnapshotsUnchecked: a.snapshotsUnchecked,
	}
	if rep.Violations == nil {
		rep.Violations = []Violation{} // JSON: [] rather than null
	}
	rep.Skips = a.skips
	if rep.Skips == nil {
		rep.Skips = []Skip{}
	}
	rep.TooLarge = a.tooLarge
	if rep.TooLarge == nil {
		rep.TooLarge = []TooLarge{}
	}
	rep.Peers = []PeerSummary{}
	for _, v := range a.state.Peers() {
		rep.Peers = append(rep.Peers, PeerSummary{
			ServerID: v.ServerID, PeerID: v.PeerID, Head: v.Head, Delivered: v.Delivered - v.Skipped, Skipped: v.Skipped,
			Pending: v.Pending(), Mode: v.Mode.String(), Received: v.EventsReceived,
		})
	}
	return rep
}

func previousName(replica string) string {
	if replica == "" {
		return "no replica"
	}
	return fmt.Sprintf("%q", replica)
}
