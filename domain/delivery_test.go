package domain

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

// given folds recorded delivery events over an outbox of head events.
func given(head uint64, past ...DeliveryEvent) Outbox {
	o := Outbox{Head: head}
	for _, e := range past {
		o.Apply(e)
	}
	return o
}

func then(t *testing.T, got []DeliveryEvent, err error, want ...DeliveryEvent) {
	t.Helper()
	if err != nil {
		t.Fatalf("unexpected error: %v", err)
	}
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("recorded %#v, want %#v", got, want)
	}
}

func u64(v uint64) *uint64 { return &v }

const retries = 5

func TestPushMode(t *testing.T) {
	t.Parallel()
	t.Run("the oldest undelivered event is pushed next", func(t *testing.T) {
		o := given(3, EventPushed{Seq: 0, Attempts: 1})
		if seq, ok := o.NextPush(); !ok || seq != 1 {
			t.Fatalf("NextPush = %d, %v; want 1", seq, ok)
		}
	})
	t.Run("nothing to push when everything is delivered", func(t *testing.T) {
		if _, ok := given(2, EventPushed{Seq: 0}, EventPushed{Seq: 1}).NextPush(); ok {
			t.Fatal("pushed past the head")
		}
	})
	t.Run("a successful push records pushed", func(t *testing.T) {
		got, err := given(1).PushSucceeded(0, 0, 3, false)
		then(t, got, err, EventPushed{Seq: 0, Attempts: 3})
	})
	t.Run("a push of several events records them as one range", func(t *testing.T) {
		got, err := given(10, EventPushed{Seq: 0}).PushSucceeded(1, 6, 1, false)
		then(t, got, err, EventPushed{Seq: 1, Through: 6, Attempts: 1})
	})
	t.Run("after a push of several events the next push starts after the last", func(t *testing.T) {
		o := given(10, EventPushed{Seq: 0, Through: 6})
		if seq, ok := o.NextPush(); !ok || seq != 7 {
			t.Fatalf("NextPush = %d, %v; want 7", seq, ok)
		}
	})
	t.Run("a push said to reach beyond the outbox is refused", func(t *testing.T) {
		_, err := given(3).PushSucceeded(0, 3, 1, false)
		if !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("err = %v, want ErrInvalidArgument", err)
		}
	})
	t.Run("failures below one attempt plus the retries record nothing", func(t *testing.T) {
		for attempts := uint32(1); attempts <= retries; attempts++ {
			got, err := given(1).PushFailed(0, attempts, retries, "refused")
			then(t, got, err)
		}
	})
	t.Run("queue mode is entered after exactly one attempt plus the retries", func(t *testing.T) {
		got, err := given(4, EventPushed{Seq: 0}).PushFailed(1, retries+1, retries, "refused")
		then(t, got, err, QueueModeEntered{FromSeq: 1, Attempts: retries + 1, LastError: "refused"})
	})
	t.Run("the failure count starts again after a success", func(t *testing.T) {
		// The attempt count is per event: after event 0 succeeds on its
		// fifth attempt, event 1 gets one attempt plus five retries again.
		o := given(2, EventPushed{Seq: 0, Attempts: 5})
		got, err := o.PushFailed(1, 1, retries, "x")
		then(t, got, err)
	})
	t.Run("a push decided on a stale state records nothing", func(t *testing.T) {
		_, err := given(2, EventPushed{Seq: 0}).PushSucceeded(0, 0, 1, false)
		if !errors.Is(err, ErrStale) {
			t.Fatalf("err = %v, want ErrStale", err)
		}
	})
	t.Run("a pull in push mode answers nothing", func(t *testing.T) {
		plan, err := given(5, EventPushed{Seq: 0}).PlanPull(nil)
		then(t, plan.Record, err)
		if plan.Available != 0 {
			t.Fatalf("a pull in push mode got %d events", plan.Available)
		}
	})
}

func TestQueueMode(t *testing.T) {
	t.Parallel()
	queued := []DeliveryEvent{EventPushed{Seq: 0}, QueueModeEntered{FromSeq: 1, Attempts: 6}}
	t.Run("no push while queue mode holds", func(t *testing.T) {
		if _, ok := given(10, queued...).NextPush(); ok {
			t.Fatal("pushed in queue mode")
		}
		if _, err := given(10, queued...).PushFailed(1, 1, retries, ""); !errors.Is(err, ErrStale) {
			t.Fatalf("a push failure in queue mode: %v", err)
		}
	})
	t.Run("events enqueued later wait in the queue", func(t *testing.T) {
		o := given(10, queued...)
		o.Head = 12
		if _, ok := o.NextPush(); ok || o.Pending() != 11 {
			t.Fatalf("pending %d", o.Pending())
		}
	})
	t.Run("a pull gets every undelivered event", func(t *testing.T) {
		plan, err := given(10, queued...).PlanPull(nil)
		then(t, plan.Record, err)
		if plan.From != 1 || plan.Available != 9 {
			t.Fatalf("plan %+v, want from 1, 9 events", plan)
		}
	})
	t.Run("an upstream pull counts as delivered once served", func(t *testing.T) {
		o := given(10, append(queued, ServedPull(1, 9, false))...)
		if o.Delivered != 10 {
			t.Fatalf("delivered %d, want 10", o.Delivered)
		}
	})
	t.Run("an acknowledging pull counts as delivered only once acknowledged", func(t *testing.T) {
		o := given(10, append(queued, ServedPull(1, 9, true))...)
		if o.Delivered != 1 {
			t.Fatalf("delivered %d before the ack, want 1", o.Delivered)
		}
		plan, err := o.PlanPull(nil)
		then(t, plan.Record, err)
		if plan.From != 1 || plan.Available != 9 {
			t.Fatalf("a lost reply is not sent again: %+v", plan)
		}
		plan, err = o.PlanPull(u64(4))
		then(t, plan.Record, err, PullAcknowledged{UpToSeq: 4})
		if plan.From != 5 || plan.Available != 5 {
			t.Fatalf("after ack 4: %+v", plan)
		}
	})
	t.Run("an acknowledgement beyond the outbox is refused", func(t *testing.T) {
		_, err := given(10, append(queued, ServedPull(1, 3, true))...).PlanPull(u64(10))
		if !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("an acknowledgement beyond what was handed over counts", func(t *testing.T) {
		// The peer applied pushes whose replies were lost: queue mode began
		// at an event the peer already has.
		plan, err := given(10, append(queued, ServedPull(1, 3, true))...).PlanPull(u64(7))
		then(t, plan.Record, err, PullAcknowledged{UpToSeq: 7})
		if plan.From != 8 || plan.Available != 2 {
			t.Fatalf("after ack 7: %+v", plan)
		}
	})
	t.Run("a pull of an empty queue returns to push mode", func(t *testing.T) {
		o := given(10, append(queued, ServedPull(1, 9, false))...)
		plan, err := o.PlanPull(nil)
		then(t, plan.Record, err, PushResumed{FromSeq: 10, Reason: ResumeQueueDrained})
		o.Apply(plan.Record[0])
		if o.Mode != ModePush {
			t.Fatal("still in queue mode")
		}
	})
	t.Run("an acknowledged, empty queue returns to push mode in the same pull", func(t *testing.T) {
		plan, err := given(10, append(queued, ServedPull(1, 9, true))...).PlanPull(u64(9))
		then(t, plan.Record, err, PullAcknowledged{UpToSeq: 9}, PushResumed{FromSeq: 10, Reason: ResumeQueueDrained})
	})
	t.Run("a pull while an enqueue races serves what was there", func(t *testing.T) {
		o := given(3, queued...)
		plan, _ := o.PlanPull(nil)
		o.Apply(ServedPull(plan.From, plan.Available, true))
		o.Head = 5 // enqueued after the plan
		plan, err := o.PlanPull(u64(2))
		then(t, plan.Record, err, PullAcknowledged{UpToSeq: 2})
		if plan.From != 3 || plan.Available != 2 {
			t.Fatalf("the raced events are not served next: %+v", plan)
		}
	})
}

func TestResumeProbe(t *testing.T) {
	t.Parallel()
	queued := []DeliveryEvent{QueueModeEntered{FromSeq: 0, Attempts: 6}}
	t.Run("a probe runs while the peer has not pulled", func(t *testing.T) {
		if !given(2, queued...).NeedsProbe() {
			t.Fatal("no probe")
		}
		if given(2, append(queued, ServedPull(0, 1, true))...).NeedsProbe() {
			t.Fatal("a probe after the peer pulled")
		}
	})
	t.Run("a successful probe resumes pushing", func(t *testing.T) {
		got, err := given(2, queued...).PushSucceeded(0, 0, 1, true)
		then(t, got, err, PushResumed{FromSeq: 0, Reason: ResumeProbe}, EventPushed{Seq: 0, Attempts: 1})
		o := given(2, append(queued, got...)...)
		if seq, ok := o.NextPush(); !ok || seq != 1 || o.Mode != ModePush {
			t.Fatalf("after the probe: %+v", o)
		}
	})
	t.Run("a failed probe records nothing and queue mode holds", func(t *testing.T) {
		o := given(2, queued...)
		if o.Mode != ModeQueue || !o.NeedsProbe() {
			t.Fatal("queue mode does not hold")
		}
	})
	t.Run("a probe that raced a pull records nothing", func(t *testing.T) {
		_, err := given(2, append(queued, ServedPull(0, 2, true))...).PushSucceeded(0, 0, 1, true)
		if !errors.Is(err, ErrStale) {
			t.Fatalf("err = %v, want ErrStale", err)
		}
	})
	t.Run("an operator resume returns to push mode", func(t *testing.T) {
		then(t, given(2, queued...).Resume(), nil, PushResumed{FromSeq: 0, Reason: ResumeOperator})
		then(t, given(2).Resume(), nil)
	})
}

func TestInboxAppliesEachSequenceOnce(t *testing.T) {
	t.Parallel()
	var in Inbox
	if !in.Accepts(u64(0)) {
		t.Fatal("the first event was refused")
	}
	in.Received(u64(0), nil)
	in.Received(u64(1), nil)
	for _, seq := range []uint64{0, 1} {
		if in.Accepts(u64(seq)) {
			t.Fatalf("sequence %d applied twice", seq)
		}
	}
	if !in.Accepts(u64(2)) || !in.Accepts(nil) {
		t.Fatal("a new event was refused")
	}
	if ack, ok := in.Ack(); !ok || ack != 1 || in.Count != 2 {
		t.Fatalf("ack %d %v count %d", ack, ok, in.Count)
	}
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	b := Backoff{First: 100 * time.Millisecond, Max: time.Second}
	var total time.Duration
	for n := 1; n <= 5; n++ {
		lo, hi := b.Delay(n, 0), b.Delay(n, 0.999)
		if lo > hi || hi > b.Max {
			t.Fatalf("delay %d: [%v, %v]", n, lo, hi)
		}
		total += hi
	}
	// A dead peer reaches queue mode within about five seconds.
	if total > 5*time.Second {
		t.Fatalf("five retries wait up to %v", total)
	}
	if b.Delay(50, 0.5) > b.Max {
		t.Fatal("the cap does not hold")
	}
}

func TestSkip(t *testing.T) {
	t.Parallel()
	t.Run("a skip covers the oldest undelivered events through the one named", func(t *testing.T) {
		got, err := given(10, EventPushed{Seq: 0, Through: 2}).Skip(4, "too large")
		then(t, got, err, EventsSkipped{FromSeq: 3, ThroughSeq: 4, Reason: "too large"})
	})
	t.Run("delivery goes on after the skipped events, which are not counted as delivered", func(t *testing.T) {
		o := given(10, EventPushed{Seq: 0, Through: 2}, EventsSkipped{FromSeq: 3, ThroughSeq: 4, Reason: "r"})
		if seq, ok := o.NextPush(); !ok || seq != 5 {
			t.Fatalf("NextPush = %d, %v; want 5", seq, ok)
		}
		if o.Skipped != 2 || o.Delivered-o.Skipped != 3 {
			t.Fatalf("Skipped = %d, Delivered = %d; want 2 skipped of 5", o.Skipped, o.Delivered)
		}
	})
	t.Run("in queue mode the next Pull starts after the skipped events", func(t *testing.T) {
		o := given(5, QueueModeEntered{FromSeq: 0}, EventsSkipped{FromSeq: 0, ThroughSeq: 0, Reason: "r"})
		plan, err := o.PlanPull(nil)
		if err != nil || plan.From != 1 || plan.Available != 4 {
			t.Fatalf("PlanPull = %+v, %v; want 4 events from 1", plan, err)
		}
	})
	t.Run("skipping the whole queue lets the next Pull return to push mode", func(t *testing.T) {
		o := given(2, QueueModeEntered{FromSeq: 0}, EventsSkipped{FromSeq: 0, ThroughSeq: 1, Reason: "r"})
		plan, err := o.PlanPull(nil)
		then(t, plan.Record, err, PushResumed{FromSeq: 2, Reason: ResumeQueueDrained})
	})
	t.Run("a skip record that overlaps delivered events counts only the undelivered ones", func(t *testing.T) {
		o := given(10, EventsSkipped{FromSeq: 0, ThroughSeq: 3, Reason: "r"}, EventPushed{Seq: 4, Through: 5})
		o.Apply(EventsSkipped{FromSeq: 4, ThroughSeq: 7, Reason: "r"})
		if o.Delivered != 8 || o.Skipped != 6 {
			t.Fatalf("Delivered = %d, Skipped = %d; want 8 and 6", o.Delivered, o.Skipped)
		}
	})
	for _, c := range []struct {
		name    string
		o       Outbox
		through uint64
		reason  string
	}{
		{"no reason", given(3), 0, ""},
		{"nothing undelivered", given(2, EventPushed{Seq: 0, Through: 1}), 1, "r"},
		{"an event delivered already", given(3, EventPushed{Seq: 0}), 0, "r"},
		{"an event past the head", given(3), 3, "r"},
	} {
		t.Run("refused: "+c.name, func(t *testing.T) {
			got, err := c.o.Skip(c.through, c.reason)
			if !errors.Is(err, ErrInvalidArgument) || got != nil {
				t.Fatalf("Skip = %v, %v; want ErrInvalidArgument and nothing recorded", got, err)
			}
		})
	}
}

func TestOwnerTermsInTheDeliveryStream(t *testing.T) {
	t.Parallel()
	t.Run("an owner record names the owner and moves no cursor", func(t *testing.T) {
		o := given(5, EventPushed{Seq: 0, Through: 1}, OwnerTermStarted{Term: 1, Replica: "a"})
		want := given(5, EventPushed{Seq: 0, Through: 1})
		want.Owner = OwnerTerm{Term: 1, Replica: "a"}
		if !reflect.DeepEqual(o, want) {
			t.Fatalf("state %+v, want %+v", o, want)
		}
	})
	t.Run("a later term replaces the owner; an earlier one read again does not", func(t *testing.T) {
		o := given(1, OwnerTermStarted{Term: 1, Replica: "a"}, OwnerTermStarted{Term: 2, Replica: "b", Previous: "a"},
			OwnerTermStarted{Term: 1, Replica: "a"})
		if o.Owner != (OwnerTerm{Term: 2, Replica: "b"}) {
			t.Fatalf("owner %+v, want term 2 of b", o.Owner)
		}
	})
	t.Run("the record's owner is its term and replica", func(t *testing.T) {
		if got := (OwnerTermStarted{Term: 3, Replica: "c", Previous: "b"}).Owner(); got != (OwnerTerm{Term: 3, Replica: "c"}) {
			t.Fatalf("Owner() = %+v", got)
		}
	})
}
