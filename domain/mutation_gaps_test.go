package domain

// Rules whose breaking no other test noticed (scripts/mutate.sh ./domain):
// each case here fails on one or more small wrong changes to the code.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"strings"
	"testing"
	"time"
)

// refetchKeys serves a stale cached key, and a refetch that fails with err.
type refetchKeys struct {
	cached ed25519.PublicKey
	err    error
}

func (k refetchKeys) Key(context.Context, ServerID) (ed25519.PublicKey, error) {
	return k.cached, nil
}

func (k refetchKeys) RefreshKey(context.Context, ServerID) (ed25519.PublicKey, bool, error) {
	return nil, false, k.err
}

func TestASignatureThatFailsIsNeverAcceptedWhenTheRefetchFails(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		refetch   error
		then      error
		notBefore error // the error must not be classified as this
	}{
		{"the key server is unreachable", errors.New("connection refused"), ErrTokenVerifyFailure, nil},
		{"the request was cancelled", context.Canceled, context.Canceled, ErrTokenVerifyFailure},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// Given a peer whose cached key is not the one that signed.
			w := givenAServer(t, AuthPolicy{})
			v := NewVerifier(AuthPolicy{}, w.clock, refetchKeys{cached: keyFromSeed(8).Public().(ed25519.PublicKey), err: tc.refetch}, NewIdentity(w.self, DefaultAudienceGrace))
			// When its token arrives and refetching the key fails.
			_, err := v.Verify(context.Background(), token(w.peerKey, w.plain()), OpPull, "")
			// Then the token is refused, with the refetch's failure.
			if !errors.Is(err, tc.then) {
				t.Fatalf("error %v, want %v", err, tc.then)
			}
			if tc.notBefore != nil && errors.Is(err, tc.notBefore) {
				t.Fatalf("error %v: a cancelled request is not a verification failure", err)
			}
		})
	}
}

func TestDeliveryFoldEdges(t *testing.T) {
	t.Parallel()
	t.Run("a pull awaiting its ack counts the events as handed over, not delivered", func(t *testing.T) {
		o := given(10, QueueModeEntered{FromSeq: 0}, PullServed{FromSeq: 0, ToSeq: 4, AwaitsAck: true})
		if o.HandedOver != 5 || o.Delivered != 0 {
			t.Fatalf("HandedOver %d, Delivered %d; want 5 and 0", o.HandedOver, o.Delivered)
		}
	})
	t.Run("a push of event 0 is the first event given", func(t *testing.T) {
		o := given(3, EventPushed{Seq: 0})
		if seq, ok := o.LastGiven(); !ok || seq != 0 {
			t.Fatalf("LastGiven = %d, %v; want 0, true", seq, ok)
		}
	})
	t.Run("a receiver that lost everything is sent everything of the epoch again", func(t *testing.T) {
		o := given(10, EventPushed{Seq: 0, Through: 4}, ReceiverReported{Has: false})
		if o.Delivered != 0 || o.HasGiven {
			t.Fatalf("Delivered %d, HasGiven %v; want 0, false", o.Delivered, o.HasGiven)
		}
	})
	t.Run("a receiver holding what it was given keeps the skipped events after it skipped", func(t *testing.T) {
		o := given(10, EventPushed{Seq: 0, Through: 2}, EventsSkipped{FromSeq: 3, ThroughSeq: 4, Reason: "r"})
		o.Apply(ReceiverReported{Seq: 2, Has: true})
		if o.Delivered != 5 || o.Skipped != 2 {
			t.Fatalf("Delivered %d, Skipped %d; want 5 and 2", o.Delivered, o.Skipped)
		}
	})
	t.Run("a receiver holding nothing, never given anything, does not undo a skip", func(t *testing.T) {
		o := given(10, EventsSkipped{FromSeq: 0, ThroughSeq: 2, Reason: "r"}, ReceiverReported{Has: false})
		if o.Delivered != 3 || o.Skipped != 3 {
			t.Fatalf("Delivered %d, Skipped %d; want 3 and 3", o.Delivered, o.Skipped)
		}
	})
	t.Run("the modes print as push and queue", func(t *testing.T) {
		if ModePush.String() != "push" || ModeQueue.String() != "queue" {
			t.Fatalf("modes print as %q and %q", ModePush, ModeQueue)
		}
	})
}

func TestContinuityDecisionEdges(t *testing.T) {
	t.Parallel()
	t.Run("an acknowledgement of the event at the head is of an event this outbox never had", func(t *testing.T) {
		got := given(5, EventPushed{Seq: 0, Through: 2}).CheckAck(u64(5), true, 77)
		then(t, got, nil, EpochStarted{Epoch: 77, FromSeq: 3, ReceiverSeq: 5, ReceiverHas: true})
	})
	t.Run("a divergence records what the receiver said it holds", func(t *testing.T) {
		o := given(5, EventPushed{Seq: 0, Through: 2})
		then(t, o.Diverged(u64(9), 77), nil, EpochStarted{Epoch: 77, FromSeq: 3, ReceiverSeq: 9, ReceiverHas: true})
		then(t, o.Diverged(nil, 78), nil, EpochStarted{Epoch: 78, FromSeq: 3})
	})
}

func TestPushDecisionEdges(t *testing.T) {
	t.Parallel()
	queued := []DeliveryEvent{EventPushed{Seq: 0, Through: 1}, QueueModeEntered{FromSeq: 2, Attempts: 6}}
	t.Run("no probe when queue mode holds nothing undelivered", func(t *testing.T) {
		o := given(2, QueueModeEntered{FromSeq: 0}, EventsSkipped{FromSeq: 0, ThroughSeq: 1, Reason: "r"})
		if o.NeedsProbe() {
			t.Fatal("a probe for an empty queue")
		}
	})
	t.Run("a push of one event records no range", func(t *testing.T) {
		got, err := given(5, EventPushed{Seq: 0, Through: 1}).PushSucceeded(2, 2, 1, false)
		then(t, got, err, EventPushed{Seq: 2, Attempts: 1})
	})
	t.Run("a push that is not a probe, succeeding in queue mode, is stale", func(t *testing.T) {
		if _, err := given(5, queued...).PushSucceeded(2, 2, 1, false); !errors.Is(err, ErrStale) {
			t.Fatalf("err = %v, want ErrStale", err)
		}
	})
	t.Run("a probe succeeding in push mode is stale", func(t *testing.T) {
		if _, err := given(5, EventPushed{Seq: 0, Through: 1}).PushSucceeded(2, 2, 1, true); !errors.Is(err, ErrStale) {
			t.Fatalf("err = %v, want ErrStale", err)
		}
	})
}

func TestPullAcknowledgementEdges(t *testing.T) {
	t.Parallel()
	t.Run("a one-event pull acknowledged drains the queue", func(t *testing.T) {
		// Given event 1 of 2 queued and handed over by a pull.
		o := given(2, EventPushed{Seq: 0}, QueueModeEntered{FromSeq: 1}, PullServed{FromSeq: 1, ToSeq: 1, AwaitsAck: true})
		// When the next pull acknowledges it.
		plan, err := o.PlanPull(u64(1))
		// Then it is delivered and pushing resumes.
		then(t, plan.Record, err, PullAcknowledged{UpToSeq: 1}, PushResumed{FromSeq: 2, Reason: ResumeQueueDrained})
	})
	t.Run("an acknowledgement of what is delivered already records nothing", func(t *testing.T) {
		plan, err := given(5, EventPushed{Seq: 0, Through: 2}, QueueModeEntered{FromSeq: 3}).PlanPull(u64(2))
		then(t, plan.Record, err)
		if plan.From != 3 || plan.Available != 2 {
			t.Fatalf("plan %+v; want 2 events from 3", plan)
		}
	})
}

func TestSkipEdges(t *testing.T) {
	t.Parallel()
	t.Run("the oldest undelivered event alone can be skipped", func(t *testing.T) {
		got, err := given(5, EventPushed{Seq: 0, Through: 1}).Skip(2, "too large")
		then(t, got, err, EventsSkipped{FromSeq: 2, ThroughSeq: 2, Reason: "too large"})
	})
	t.Run("the refusals say why", func(t *testing.T) {
		o := given(10, EventPushed{Seq: 0, Through: 9})
		if _, err := o.Skip(12, "r"); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "nothing to skip") {
			t.Fatalf("skip on a delivered outbox: %v", err)
		}
		o.Head = 12
		if _, err := o.Skip(12, "r"); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "holds events 0 to 11") {
			t.Fatalf("skip beyond the outbox: %v", err)
		}
	})
}

func TestInboxEdges(t *testing.T) {
	t.Parallel()
	holding := func(seq uint64, id []byte) Inbox {
		var in Inbox
		in.Received(&seq, id)
		return in
	}
	t.Run("event 0 is the first applied", func(t *testing.T) {
		in := holding(0, idA)
		if !in.HasSeq || in.LastSeq != 0 || !bytes.Equal(in.LastID, idA) {
			t.Fatalf("inbox %+v; want event 0 applied", in)
		}
		if last := in.Last(); last == nil || last.Seq != 0 || !bytes.Equal(last.ID, idA) {
			t.Fatalf("Last = %+v; want event 0", last)
		}
	})
	t.Run("a later event moves the last applied", func(t *testing.T) {
		in := holding(3, idA)
		in.Received(u64(4), idB)
		if in.LastSeq != 4 || !bytes.Equal(in.LastID, idB) || in.Count != 2 {
			t.Fatalf("inbox %+v; want event 4 last of 2", in)
		}
	})
	t.Run("an event received again does not replace the recorded ID", func(t *testing.T) {
		in := holding(3, idA)
		in.Received(u64(3), idB)
		if in.LastSeq != 3 || !bytes.Equal(in.LastID, idA) {
			t.Fatalf("inbox %+v; want event 3 under its first ID", in)
		}
	})
	t.Run("an upstream event without a sequence number is counted only", func(t *testing.T) {
		var in Inbox
		in.Received(nil, nil)
		held := holding(3, idA)
		held.Received(nil, nil)
		if in.Count != 1 || in.HasSeq || held.Count != 2 || held.LastSeq != 3 {
			t.Fatalf("inboxes %+v and %+v", in, held)
		}
	})
	t.Run("an empty push repeats nothing, nor does one without an ID", func(t *testing.T) {
		if in := holding(3, idA); in.Repeats(4, 0, idA) {
			t.Fatal("an empty push after the last event is a repeat")
		}
		if in := holding(3, nil); in.Repeats(3, 1, nil) {
			t.Fatal("a push without an ID is a repeat")
		}
	})
}

func TestBackoffDoublesFromFirstUpToMax(t *testing.T) {
	t.Parallel()
	b := Backoff{First: 100 * time.Millisecond, Max: time.Second}
	for n, want := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 3: 400 * time.Millisecond, 4: 800 * time.Millisecond, 5: time.Second, 9: time.Second} {
		if got := b.Delay(n, 0); got != want/2 {
			t.Errorf("Delay(%d, 0) = %v, want %v", n, got, want/2)
		}
	}
}

func TestNonceLedgerEdges(t *testing.T) {
	t.Parallel()
	id := MustParseServerID("a.example:1")
	t0 := time.Unix(1000, 0)
	t.Run("a nonce expired before the next sweep is new again", func(t *testing.T) {
		l := NewNonceLedger()
		n := bytes.Repeat([]byte{1}, NonceSize)
		if !l.Remember(id, n, t0.Add(200*time.Millisecond), t0) {
			t.Fatal("a new nonce was refused")
		}
		if !l.Remember(id, n, t0.Add(time.Second), t0.Add(500*time.Millisecond)) {
			t.Fatal("an expired nonce was refused before the sweep")
		}
	})
	t.Run("a previous process's nonce expired before the next sweep is new again", func(t *testing.T) {
		w := givenAServer(t, AuthPolicy{})
		old := [NonceSize]byte{7}
		w.verifier.PersistNonces(map[[NonceSize]byte]time.Time{old: t0.Add(200 * time.Millisecond)}, newMemoryRecord())
		l := w.verifier.nonces
		if !l.Remember(id, bytes.Repeat([]byte{2}, NonceSize), t0.Add(time.Second), t0) {
			t.Fatal("a new nonce was refused")
		}
		if l.Remember(id, old[:], t0.Add(time.Second), t0.Add(100*time.Millisecond)) {
			t.Fatal("a previous process's nonce was accepted inside its time")
		}
		if !l.Remember(id, old[:], t0.Add(time.Second), t0.Add(500*time.Millisecond)) {
			t.Fatal("an expired nonce of a previous process was refused before the sweep")
		}
	})
}

func TestIdentityAndCallers(t *testing.T) {
	t.Parallel()
	a, b := MustParseServerID("a.example:1"), MustParseServerID("b.example:1")
	t.Run("the current ID follows a rename", func(t *testing.T) {
		i := NewIdentity(a, time.Hour)
		if i.Current() != a {
			t.Fatalf("Current = %v", i.Current())
		}
		i.Rename(b, time.Unix(0, 0))
		if i.Current() != b {
			t.Fatalf("Current after rename = %v", i.Current())
		}
	})
	t.Run("a caller under a renamed ID is a known peer, refused", func(t *testing.T) {
		_, found, err := CheckCaller(directory{"p": {a, b}}, a)
		if !found || !errors.Is(err, ErrPeerRenamed) {
			t.Fatalf("found %v, err %v; want a known peer refused as renamed", found, err)
		}
	})
}

func TestServerIDEdges(t *testing.T) {
	t.Parallel()
	t.Run("only the zero ID is zero", func(t *testing.T) {
		if !(ServerID{}).IsZero() || MustParseServerID("a.example:1").IsZero() {
			t.Fatal("IsZero is wrong")
		}
	})
	t.Run("names at the length limits, and every letter and digit, are accepted", func(t *testing.T) {
		label := strings.Repeat("a", 63)
		long := strings.Repeat(label+".", 3) + strings.Repeat("b", 253-3*64) // 253 bytes
		if len(long) != 253 {
			t.Fatalf("test name is %d bytes", len(long))
		}
		for _, s := range []string{label + ".example:1", long + ":1", "az09.example:1", "z.example9:1", "0a.example:1"} {
			if _, err := ParseServerID(s); err != nil {
				t.Errorf("ParseServerID(%q): %v", s, err)
			}
		}
		if _, err := ParseServerID(long + "b:1"); err == nil {
			t.Error("a 254-byte name was accepted")
		}
	})
	t.Run("the refusals say why", func(t *testing.T) {
		for s, why := range map[string]string{
			":2289":              "missing host",
			"a.example:22a9":     "port is not a number",
			"a.example:+1":       "port is not a number",
			"a.example.:1":       "trailing dot",
			"a..example:1":       "empty label",
			".a.example:1":       "empty label",
			"example.org.com.:1": "trailing dot",
		} {
			_, err := ParseServerID(s)
			if !errors.Is(err, ErrInvalidServerID) || !strings.Contains(err.Error(), why) {
				t.Errorf("ParseServerID(%q) = %v; want %q", s, err, why)
			}
		}
	})
}
