package domain

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"time"
)

// DeliveryMode is how a peer's outbox reaches it.
type DeliveryMode int

// The delivery modes of the seed's PostboxService comment.
const (
	// ModePush: this server pushes its events in order, one push in flight
	// (a push to a Postbox receiver may carry several consecutive events).
	ModePush DeliveryMode = iota
	// ModeQueue: pushes failed; events wait until the peer pulls them.
	ModeQueue
)

func (m DeliveryMode) String() string {
	if m == ModeQueue {
		return "queue"
	}
	return "push"
}

// ResumeReason says why pushing started again after queue mode.
type ResumeReason int

// Why pushing resumed.
const (
	ResumeQueueDrained ResumeReason = iota + 1 // the peer pulled and acknowledged everything
	ResumeProbe                                // a resume probe's push succeeded
	ResumeOperator                             // an operator asked for it
)

// DeliveryEvent is a fact recorded in a peer's delivery stream.
type DeliveryEvent interface{ deliveryEvent() }

// EventPushed: a push of the outbox event Seq succeeded; a push of
// several events delivered Seq through Through.
type EventPushed struct {
	Seq      uint64
	Through  uint64 // not above Seq: Seq alone
	Attempts uint32
	// Term is the owner term the push went out under (0: none recorded),
	// so the audit sees that no push went out outside its owner's term.
	Term uint64
}

// Last is the last event the push delivered.
func (e EventPushed) Last() uint64 { return max(e.Seq, e.Through) }

// QueueModeEntered: one attempt plus the retries failed on FromSeq.
type QueueModeEntered struct {
	FromSeq   uint64
	Attempts  uint32
	LastError string
}

// PullServed: a Pull reply handed over FromSeq..ToSeq (inclusive).
type PullServed struct {
	FromSeq, ToSeq uint64
	// AwaitsAck: the peer acknowledges pulls, so the events count as
	// delivered only once acknowledged.
	AwaitsAck bool
}

// PullAcknowledged: the peer has applied everything up to UpToSeq.
type PullAcknowledged struct {
	UpToSeq uint64
}

// PushResumed: pushing starts again at FromSeq.
type PushResumed struct {
	FromSeq uint64
	Reason  ResumeReason
}

// EventsSkipped: an operator gave up on FromSeq..ThroughSeq (inclusive),
// the oldest undelivered events, so the ones after them can go. They are
// not delivered, and never counted as such.
type EventsSkipped struct {
	FromSeq, ThroughSeq uint64
	Reason              string
}

// EpochStarted: the receiver's account of what it holds contradicts this
// outbox (this server's store was restored from a backup, or recreated):
// the same sequence numbers name other events on the two sides. Sequence
// numbers from FromSeq on count in a new, random Epoch, which the receiver
// takes as a new start, so every event not known delivered reaches it once.
// Nothing counts as delivered on the receiver's account.
type EpochStarted struct {
	Epoch, FromSeq uint64
	// ReceiverSeq is the last event the receiver said it applied, if
	// ReceiverHas.
	ReceiverSeq uint64
	ReceiverHas bool
}

// ReceiverReported: a receiver that checks continuity said it holds every
// event through Seq of the current epoch (Has false: none). Delivery goes on
// after it: forward when a lost reply or record hid them, backward when the
// receiver lost events (its store was restored), so they are sent again.
type ReceiverReported struct {
	Seq uint64
	Has bool
}

// OwnerTermStarted: replica runs the peer's outbound delivery from here on,
// under Term (replicas sharing one store; see OwnerTerm). It moves no
// cursor: a replica that ran the peer before is fenced by the record's
// place in the stream, not by what it says.
type OwnerTermStarted struct {
	Term     uint64
	Replica  string
	Previous string // the replica that ran the peer before; "" if none
}

// Owner is the term the record starts.
func (e OwnerTermStarted) Owner() OwnerTerm { return OwnerTerm{Term: e.Term, Replica: e.Replica} }

func (EventPushed) deliveryEvent()      {}
func (OwnerTermStarted) deliveryEvent() {}
func (EpochStarted) deliveryEvent()     {}
func (ReceiverReported) deliveryEvent() {}
func (EventsSkipped) deliveryEvent()    {}
func (QueueModeEntered) deliveryEvent() {}
func (PullServed) deliveryEvent()       {}
func (PullAcknowledged) deliveryEvent() {}
func (PushResumed) deliveryEvent()      {}

// Outbox is the sender's view of one peer: how far its outbox is delivered
// and how. It is folded from the peer's delivery stream, plus the outbox
// head; decisions are pure functions of it.
type Outbox struct {
	// Head is the number of events in the outbox: the next sequence number.
	Head uint64
	// Delivered: every event with a lower sequence number has been delivered.
	Delivered uint64
	Mode      DeliveryMode
	// HandedOver: events below it were handed over by Pull, awaiting an ack.
	HandedOver uint64
	// PulledSinceQueue: the peer has pulled since queue mode began, so no
	// resume probe is needed.
	PulledSinceQueue bool
	// Skipped counts the events below Delivered that an operator skipped:
	// Delivered is where delivery goes on, Delivered - Skipped what the
	// peer was actually given.
	Skipped uint64
	// Epoch is the current epoch toward the peer (0 until an EpochStarted),
	// which began at EpochFrom; PastEpochs are the ones before it.
	Epoch, EpochFrom uint64
	PastEpochs       []uint64
	// Given is the last event the peer got in this epoch, if HasGiven: what
	// a push tells a continuity-checking receiver it should hold.
	Given    uint64
	HasGiven bool
	// Owner is the replica running the peer's delivery and its term, as
	// last recorded (zero: a single process, or no handover yet).
	Owner OwnerTerm
}

// Apply folds one recorded event into the state.
func (o *Outbox) Apply(e DeliveryEvent) {
	switch e := e.(type) {
	case EventPushed:
		o.Delivered = max(o.Delivered, e.Last()+1)
		o.give(e.Last())
	case QueueModeEntered:
		o.Mode, o.PulledSinceQueue = ModeQueue, false
	case PullServed:
		o.PulledSinceQueue = true
		o.HandedOver = max(o.HandedOver, e.ToSeq+1)
		if !e.AwaitsAck {
			o.Delivered = max(o.Delivered, e.ToSeq+1)
			o.give(e.ToSeq)
		}
	case PullAcknowledged:
		o.Delivered = max(o.Delivered, e.UpToSeq+1)
		o.give(e.UpToSeq)
	case PushResumed:
		o.Mode = ModePush
	case OwnerTermStarted:
		o.Owner = o.Owner.Apply(e.Owner())
	case EventsSkipped:
		if e.ThroughSeq+1 > o.Delivered {
			o.Skipped += e.ThroughSeq + 1 - max(o.Delivered, e.FromSeq)
			o.Delivered = e.ThroughSeq + 1
		}
	case EpochStarted:
		// Clipped, so copies of the state never share what is appended.
		o.PastEpochs = append(slices.Clip(o.PastEpochs), o.Epoch)
		o.Epoch, o.EpochFrom, o.HasGiven = e.Epoch, e.FromSeq, false
		o.HandedOver = o.Delivered // pulls handed over in the old epoch are void
	case ReceiverReported:
		next := o.EpochFrom
		if e.Has {
			next = e.Seq + 1
		}
		if o.HasGiven && (!e.Has || e.Seq < o.Given) {
			// The receiver lost events it had got: send them again.
			o.Delivered, o.HandedOver = next, next
			o.Skipped = min(o.Skipped, o.Delivered)
		} else {
			o.Delivered = max(o.Delivered, next)
		}
		o.Given, o.HasGiven = e.Seq, e.Has
	}
	o.HandedOver = max(o.HandedOver, o.Delivered)
}

// Stored folds the outbox record at revision rev (its sequence number):
// the outbox holds every event up to it.
func (o *Outbox) Stored(rev uint64) { o.Head = max(o.Head, rev+1) }

// give notes that the peer got event seq in this epoch.
func (o *Outbox) give(seq uint64) {
	if !o.HasGiven || seq > o.Given {
		o.Given, o.HasGiven = seq, true
	}
}

// LastGiven is the last event the peer got in this epoch, if any.
func (o Outbox) LastGiven() (uint64, bool) { return o.Given, o.HasGiven }

// KnowsEpoch reports whether e is this outbox's current epoch or one of its
// past ones.
func (o Outbox) KnowsEpoch(e uint64) bool {
	return e == o.Epoch || slices.Contains(o.PastEpochs, e)
}

// CheckAck decides what a continuity-checking caller's Pull account means
// when it contradicts the outbox: ack is its last applied event in the
// current epoch (nil: none) and same whether that event's outbox ID matches
// (true when either side does not know it). Nothing to record means the
// acknowledgement is ordinary, for PlanPull.
func (o Outbox) CheckAck(ack *uint64, same bool, newEpoch uint64) []DeliveryEvent {
	switch {
	case ack == nil && o.HasGiven:
		return []DeliveryEvent{ReceiverReported{}}
	case ack == nil:
		return nil
	case *ack >= o.Head || !same:
		return []DeliveryEvent{EpochStarted{Epoch: newEpoch, FromSeq: o.Delivered, ReceiverSeq: *ack, ReceiverHas: true}}
	case o.HasGiven && *ack < o.Given:
		return []DeliveryEvent{ReceiverReported{Seq: *ack, Has: true}}
	}
	return nil
}

// Reconcile decides what a continuity-checking receiver's account means:
// has is the last event it says it applied in the current epoch (nil:
// none), and same whether that event's outbox ID matches this outbox's
// record at that sequence number (true when either side does not know it).
// newEpoch is a fresh random epoch, used if the two histories diverged.
// Unlike an acknowledgement, it also records a receiver that holds more
// than this outbox knows it got (a lost reply or record).
func (o Outbox) Reconcile(has *uint64, same bool, newEpoch uint64) []DeliveryEvent {
	if records := o.CheckAck(has, same, newEpoch); records != nil || has == nil {
		return records
	}
	if o.HasGiven && *has == o.Given {
		return nil // in step
	}
	return []DeliveryEvent{ReceiverReported{Seq: *has, Has: true}}
}

// Diverged records a new epoch at once: the receiver holds events of an
// epoch this outbox never had (its store lost them). ack is the receiver's
// last applied event there, if any.
func (o Outbox) Diverged(ack *uint64, newEpoch uint64) []DeliveryEvent {
	e := EpochStarted{Epoch: newEpoch, FromSeq: o.Delivered}
	if ack != nil {
		e.ReceiverSeq, e.ReceiverHas = *ack, true
	}
	return []DeliveryEvent{e}
}

// Pending is how many events are not yet delivered.
func (o Outbox) Pending() uint64 { return o.Head - o.Delivered }

// ErrStale is returned when a decision was taken on a state that has since
// moved on (another writer advanced the delivery stream): record nothing and
// look again.
var ErrStale = errors.New("delivery state moved on")

// NextPush returns the event the push loop should send, if any: in push
// mode, the oldest undelivered one (a push may carry the events after it,
// up to Head). One push is in flight per peer, so events arrive in order.
func (o Outbox) NextPush() (seq uint64, ok bool) {
	if o.Mode != ModePush || o.Delivered >= o.Head {
		return 0, false
	}
	return o.Delivered, true
}

// NeedsProbe reports whether a resume probe should run: in queue mode,
// while the peer has not pulled since it began.
func (o Outbox) NeedsProbe() bool {
	return o.Mode == ModeQueue && !o.PulledSinceQueue && o.Delivered < o.Head
}

// PushSucceeded decides what a successful push of seq through last records
// (last == seq for a push of one event). probe is true for a resume probe's
// push in queue mode.
func (o Outbox) PushSucceeded(seq, last uint64, attempts uint32, probe bool) ([]DeliveryEvent, error) {
	if seq != o.Delivered {
		return nil, fmt.Errorf("%w: pushed %d, delivered up to %d", ErrStale, seq, o.Delivered)
	}
	if last < seq || last >= o.Head {
		return nil, fmt.Errorf("%w: push of %d through %d, but the outbox holds %d events", ErrInvalidArgument, seq, last, o.Head)
	}
	pushed := EventPushed{Seq: seq, Attempts: attempts, Term: o.Owner.Term}
	if last > seq {
		pushed.Through = last
	}
	switch {
	case o.Mode == ModePush && !probe:
		return []DeliveryEvent{pushed}, nil
	case o.Mode == ModeQueue && probe && !o.PulledSinceQueue:
		return []DeliveryEvent{PushResumed{FromSeq: seq, Reason: ResumeProbe}, pushed}, nil
	}
	return nil, fmt.Errorf("%w: push of %d in %s mode (probe %v, pulled %v)", ErrStale, seq, o.Mode, probe, o.PulledSinceQueue)
}

// PushFailed decides what a failed attempt on seq records: queue mode once
// one attempt plus retries have failed, nothing before (the loop retries).
func (o Outbox) PushFailed(seq uint64, attempts uint32, retries int, lastErr string) ([]DeliveryEvent, error) {
	if o.Mode != ModePush || seq != o.Delivered {
		return nil, fmt.Errorf("%w: push of %d failed in %s mode, delivered up to %d", ErrStale, seq, o.Mode, o.Delivered)
	}
	if int(attempts) <= retries {
		return nil, nil
	}
	return []DeliveryEvent{QueueModeEntered{FromSeq: seq, Attempts: attempts, LastError: lastErr}}, nil
}

// PullPlan is what a Pull from the peer gets and records.
type PullPlan struct {
	// Record is what the Pull records before its events are chosen (an
	// acknowledgement, a return to push mode).
	Record []DeliveryEvent
	// From and Available: the reply may carry up to Available events
	// starting at From; 0 means the reply is empty.
	From, Available uint64
}

// PlanPull decides a Pull's reply. ack is the peer's acknowledgement, if it
// sent one. In push mode the reply is empty at once (the events are on their
// way by push); in queue mode it holds everything not yet delivered, and an
// empty, acknowledged queue returns the peer to push mode.
//
// An acknowledgement may go beyond what this side recorded as handed over:
// a push the peer applied but whose reply was lost (or whose record a crash
// lost) counts as failed here, yet the peer has it. Only an acknowledgement
// of an event the outbox does not hold is refused.
func (o Outbox) PlanPull(ack *uint64) (PullPlan, error) {
	var plan PullPlan
	if ack != nil {
		if *ack >= o.Head {
			return PullPlan{}, fmt.Errorf("%w: acknowledgement %d is beyond the %d events in the outbox", ErrInvalidArgument, *ack, o.Head)
		}
		if *ack+1 > o.Delivered {
			e := PullAcknowledged{UpToSeq: *ack}
			plan.Record = append(plan.Record, e)
			o.Apply(e)
		}
	}
	if o.Mode == ModePush {
		return plan, nil
	}
	if o.Delivered == o.Head {
		plan.Record = append(plan.Record, PushResumed{FromSeq: o.Head, Reason: ResumeQueueDrained})
		return plan, nil
	}
	plan.From, plan.Available = o.Delivered, o.Head-o.Delivered
	return plan, nil
}

// ServedPull is the record of a Pull reply carrying n events from from.
func ServedPull(from, n uint64, awaitsAck bool) PullServed {
	return PullServed{FromSeq: from, ToSeq: from + n - 1, AwaitsAck: awaitsAck}
}

// Resume decides an operator's request to push again.
func (o Outbox) Resume() []DeliveryEvent {
	if o.Mode == ModePush {
		return nil
	}
	return []DeliveryEvent{PushResumed{FromSeq: o.Delivered, Reason: ResumeOperator}}
}

// Skip decides an operator's request to give up on the undelivered events
// up to and including through: always a prefix of what is undelivered, as
// a Pull reply runs consecutively from the oldest one. The reason is kept
// in the record, for the audit and for operators.
func (o Outbox) Skip(through uint64, reason string) ([]DeliveryEvent, error) {
	switch {
	case reason == "":
		return nil, fmt.Errorf("%w: a skip needs a reason", ErrInvalidArgument)
	case o.Delivered >= o.Head:
		return nil, fmt.Errorf("%w: nothing to skip: all %d events are delivered", ErrInvalidArgument, o.Head)
	case through < o.Delivered:
		return nil, fmt.Errorf("%w: event %d is delivered already; the oldest undelivered event is %d", ErrInvalidArgument, through, o.Delivered)
	case through >= o.Head:
		return nil, fmt.Errorf("%w: event %d is not in the outbox, which holds events 0 to %d", ErrInvalidArgument, through, o.Head-1)
	}
	return []DeliveryEvent{EventsSkipped{FromSeq: o.Delivered, ThroughSeq: through, Reason: reason}}, nil
}

// Inbox is the receiver's view of one sender: how far its events are applied.
type Inbox struct {
	// Count is the number of events received (the inbox stream's length).
	Count uint64
	// LastSeq is the highest sender sequence number applied, if HasSeq.
	LastSeq uint64
	HasSeq  bool
	// LastID is the sender's outbox ID of LastSeq, if the sender sent it.
	LastID []byte
	// Epoch is the sender's epoch LastSeq counts in.
	Epoch uint64
	// Term is the highest owner term the sender's pushes carried in this
	// epoch (0: none, a single process): the sender's replicas hand each
	// peer over under a growing term, so a push under a lower one comes
	// from a replica that lost the peer, and is refused (Stale).
	Term uint64
}

// EventRef names an event of a sender's outbox: its sequence number and
// the ID of its outbox record (nil when unknown). A restored or recreated
// outbox writes new records with new IDs, so the same sequence number with
// another ID shows that the two sides' histories diverged.
type EventRef struct {
	Seq uint64
	ID  []byte
}

// InEpoch is the inbox as events of the sender's epoch see it: a new epoch
// starts again with nothing applied.
func (i Inbox) InEpoch(epoch uint64) Inbox {
	if epoch == i.Epoch {
		return i
	}
	return Inbox{Count: i.Count, Epoch: epoch}
}

// Last is the last event applied in the inbox's epoch, if any.
func (i Inbox) Last() *EventRef {
	if !i.HasSeq {
		return nil
	}
	return &EventRef{Seq: i.LastSeq, ID: bytes.Clone(i.LastID)}
}

// Repeats reports whether a push of n events from first is one the
// receiver applied whole already: its last event is the last one applied,
// under the same outbox ID (a retry whose reply, or whose record at the
// sender, was lost).
func (i Inbox) Repeats(first uint64, n int, lastID []byte) bool {
	return i.HasSeq && n > 0 && first+uint64(n)-1 == i.LastSeq && len(lastID) > 0 && bytes.Equal(lastID, i.LastID)
}

// Continues reports whether a push continues what the receiver holds: prev
// is the last event the sender believes it applied in this epoch (nil:
// none). If not, nothing of the push is applied and the receiver says what
// it holds instead, for the sender to reconcile: applying it could skip
// events the receiver lost, or drop new events under reused numbers.
func (i Inbox) Continues(prev *EventRef) bool {
	if !i.HasSeq || prev == nil {
		return !i.HasSeq && prev == nil
	}
	if prev.Seq != i.LastSeq {
		return false
	}
	return len(i.LastID) == 0 || len(prev.ID) == 0 || bytes.Equal(prev.ID, i.LastID)
}

// Accepts reports whether an event with sender sequence seq (nil: the sender
// sent none, as upstream servers do) is new and must be applied. A Postbox
// sender's event is applied only above the last one applied, so a retried
// push or a re-sent pull reply is never applied twice or out of order.
func (i Inbox) Accepts(seq *uint64) bool {
	return seq == nil || !i.HasSeq || *seq > i.LastSeq
}

// Apply folds the record at revision rev of the sender's inbox stream: the
// one rule for how far a sender's events are applied, which the receiver,
// the projections and the audit all read. A sequence number counts in its
// epoch: one of a new epoch starts again from it, and so does the term.
func (i *Inbox) Apply(rev uint64, e EventReceived) {
	i.Count = max(i.Count, rev+1)
	seq := e.SenderSeq
	if seq == nil {
		return
	}
	if e.SenderEpoch != i.Epoch {
		i.Term = 0
	}
	if !i.HasSeq || e.SenderEpoch != i.Epoch || *seq > i.LastSeq {
		i.LastSeq, i.HasSeq, i.Epoch, i.LastID = *seq, true, e.SenderEpoch, bytes.Clone(e.SenderEventID)
	}
	i.Term = max(i.Term, e.SenderTerm)
}

// Received folds one event being applied now, in the inbox's epoch and
// term; id is the sender's outbox ID of it, if known.
func (i *Inbox) Received(seq *uint64, id []byte) {
	i.Apply(i.Count, EventReceived{SenderSeq: seq, SenderEpoch: i.Epoch, SenderEventID: id, SenderTerm: i.Term})
}

// Stale reports whether a push under the sender's owner term term comes
// from a replica that has lost the peer: a later term was seen in this
// epoch. Nothing of such a push is applied, even events above LastSeq,
// which the current owner pushes in its turn.
func (i Inbox) Stale(term uint64) bool { return term < i.Term }

// SeeTerm takes the term of a push that is not stale: later pushes under
// a lower term are.
func (i *Inbox) SeeTerm(term uint64) { i.Term = max(i.Term, term) }

// Ack is what a Pull to the sender acknowledges, if anything.
func (i Inbox) Ack() (uint64, bool) { return i.LastSeq, i.HasSeq }

// Backoff is an exponential backoff with a cap.
type Backoff struct {
	First, Max time.Duration
}

// Delay returns the wait before attempt n (1-based: the wait after the
// first failure is Delay(1)), with jitter drawn from jitter in [0, 1): the
// delay is in [d/2, d), so peers that failed together do not retry together.
func (b Backoff) Delay(n int, jitter float64) time.Duration {
	d := b.First
	for i := 1; i < n && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	return d/2 + time.Duration(float64(d/2)*jitter)
}

// EventTooLargeError refuses an event over the per-event size limit: one
// that receivers would refuse, and that would hold up every event queued
// behind it.
type EventTooLargeError struct {
	Size, Limit int
}

func (e *EventTooLargeError) Error() string {
	return fmt.Sprintf("the event is %d bytes, over the per-event limit of %d bytes", e.Size, e.Limit)
}

func (e *EventTooLargeError) Unwrap() error { return ErrInvalidArgument }

// StuckEvent is an event that delivery to a peer waits on and that the
// peer is likely to refuse however often it is tried.
type StuckEvent struct {
	Seq    uint64
	Reason string
}

// PushClaim is what a continuity-checking sender says with a push: its
// epoch toward this receiver, the last event it believes the receiver
// applied in it (nil: none), and the outbox ID of the push's last event.
type PushClaim struct {
	Epoch  uint64
	Prev   *EventRef
	LastID []byte
	// Term is the owner term the sender's replica pushes under (0: a
	// single process); see Inbox.Stale.
	Term uint64
}

// PushAnswer is a continuity-checking receiver's account after a push:
// whether it refused the push (applied nothing, as the claim does not match
// what it holds) and the last event it holds in the push's epoch.
type PushAnswer struct {
	Refused bool
	Applied *EventRef
}

// PullAccount is a continuity-checking caller's account with a Pull: the
// epoch its acknowledgement counts in, and the outbox ID of the
// acknowledged event, if known.
type PullAccount struct {
	Epoch uint64
	AckID []byte
}
