package domain

import (
	"testing"
)

var (
	idA = []byte("aaaaaaaaaaaaaaaa")
	idB = []byte("bbbbbbbbbbbbbbbb")
)

func TestReceiverContinuity(t *testing.T) {
	t.Parallel()
	holding := func(seq uint64, id []byte) Inbox {
		var in Inbox
		in.Received(&seq, id)
		return in
	}
	for _, c := range []struct {
		name string
		in   Inbox
		prev *EventRef
		want bool
	}{
		{"nothing held, nothing claimed: a first push", Inbox{}, nil, true},
		{"the claimed last event is the one held", holding(7, idA), &EventRef{Seq: 7, ID: idA}, true},
		{"held without an ID (an older inbox): the number decides", holding(7, nil), &EventRef{Seq: 7, ID: idA}, true},
		{"same number, other record: the sender's history was rewritten", holding(7, idA), &EventRef{Seq: 7, ID: idB}, false},
		{"the sender believes more was applied: the receiver lost events", holding(7, idA), &EventRef{Seq: 9, ID: idB}, false},
		{"the receiver holds more than the sender knows", holding(7, idA), &EventRef{Seq: 5, ID: idB}, false},
		{"the sender claims nothing but the receiver holds events", holding(7, idA), nil, false},
		{"the sender claims events the receiver never got", Inbox{}, &EventRef{Seq: 0, ID: idA}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := c.in.Continues(c.prev); got != c.want {
				t.Fatalf("Continues = %v, want %v", got, c.want)
			}
		})
	}
	t.Run("a push applied whole already, by its last event's ID, is a repeat", func(t *testing.T) {
		in := holding(7, idA)
		if !in.Repeats(5, 3, idA) || in.Repeats(5, 3, idB) || in.Repeats(5, 2, idA) || in.Repeats(5, 4, idA) || in.Repeats(7, 1, nil) || (Inbox{}).Repeats(0, 1, idA) {
			t.Fatal("Repeats is not: the same last event, under the same ID")
		}
	})
	t.Run("a new epoch starts again from nothing, keeping the count", func(t *testing.T) {
		in := holding(99, idA).InEpoch(42)
		if in.HasSeq || in.Count != 1 || in.Epoch != 42 || !in.Accepts(u64(50)) || !in.Continues(nil) {
			t.Fatalf("InEpoch = %+v; want nothing applied in epoch 42", in)
		}
		if same := holding(99, idA); same.InEpoch(0).LastSeq != 99 {
			t.Fatal("the current epoch was reset")
		}
	})
}

func TestSenderReconcile(t *testing.T) {
	t.Parallel()
	t.Run("the receiver holds what was given: nothing to record", func(t *testing.T) {
		then(t, given(10, EventPushed{Seq: 0, Through: 4}).Reconcile(u64(4), true, 9), nil)
	})
	t.Run("the receiver holds more (a lost reply): delivery goes on after it", func(t *testing.T) {
		o := given(10, EventPushed{Seq: 0, Through: 4})
		got := o.Reconcile(u64(6), true, 9)
		then(t, got, nil, ReceiverReported{Seq: 6, Has: true})
		o.Apply(got[0])
		if o.Delivered != 7 || o.Given != 6 {
			t.Fatalf("after it: %+v", o)
		}
	})
	t.Run("a restored receiver lost events: they are sent again", func(t *testing.T) {
		o := given(100, EventPushed{Seq: 0, Through: 99})
		got := o.Reconcile(u64(49), true, 9)
		then(t, got, nil, ReceiverReported{Seq: 49, Has: true})
		o.Apply(got[0])
		if seq, ok := o.NextPush(); !ok || seq != 50 || o.Given != 49 {
			t.Fatalf("after it: NextPush %d %v, state %+v; want 50 pushed again", seq, ok, o)
		}
	})
	t.Run("a receiver that lost everything gets the epoch again from its start", func(t *testing.T) {
		o := given(10, EventPushed{Seq: 0, Through: 9})
		got := o.Reconcile(nil, true, 9)
		then(t, got, nil, ReceiverReported{})
		o.Apply(got[0])
		if o.Delivered != 0 || o.HasGiven {
			t.Fatalf("after it: %+v", o)
		}
	})
	t.Run("the same number names another event: a new epoch from the undelivered ones, nothing counted delivered", func(t *testing.T) {
		o := given(115, EventPushed{Seq: 0, Through: 49})
		got := o.Reconcile(u64(99), false, 9)
		then(t, got, nil, EpochStarted{Epoch: 9, FromSeq: 50, ReceiverSeq: 99, ReceiverHas: true})
		o.Apply(got[0])
		if o.Delivered != 50 || o.Epoch != 9 || o.HasGiven || !o.KnowsEpoch(0) || !o.KnowsEpoch(9) || o.KnowsEpoch(8) {
			t.Fatalf("after it: %+v", o)
		}
		// In the new epoch the first push claims nothing given.
		if _, has := o.LastGiven(); has {
			t.Fatal("the new epoch starts with something given")
		}
	})
	t.Run("the receiver holds a number the outbox does not: a new epoch", func(t *testing.T) {
		then(t, given(30, EventPushed{Seq: 0, Through: 29}).Reconcile(u64(99), true, 9), nil,
			EpochStarted{Epoch: 9, FromSeq: 30, ReceiverSeq: 99, ReceiverHas: true})
	})
	t.Run("nothing given, nothing held: in step", func(t *testing.T) {
		then(t, given(3).Reconcile(nil, true, 9), nil)
	})
	t.Run("a pull acknowledged, or handed to a peer that never acknowledges, counts as given", func(t *testing.T) {
		o := given(10, QueueModeEntered{FromSeq: 0}, PullServed{FromSeq: 0, ToSeq: 3, AwaitsAck: true})
		if _, has := o.LastGiven(); has {
			t.Fatal("an unacknowledged pull counted as given")
		}
		o.Apply(PullAcknowledged{UpToSeq: 3})
		if g, has := o.LastGiven(); !has || g != 3 {
			t.Fatalf("LastGiven = %d, %v; want 3", g, has)
		}
		o.Apply(PullServed{FromSeq: 4, ToSeq: 6})
		if g, _ := o.LastGiven(); g != 6 {
			t.Fatalf("LastGiven = %d; want 6", g)
		}
	})
}
