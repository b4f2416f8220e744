package delivery

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
)

// Given a peer whose outbox head cannot be read (the writer does not know
// where the outbox ends yet),
// when a Send is made,
// then it fails with the store's error: it is not answered as stored.
// Once the store reads again, the next Send is stored first.
func TestASendWhoseOutboxHeadCannotBeReadIsRefused(t *testing.T) {
	t.Parallel()
	w, f := faultWorld(t, testConfig())
	f.fail("readBackward", streams.OutboxPrefix, 1)
	if seq, err := w.engine.Send(t.Context(), peerB, added(7)); !errors.Is(err, errInjected) {
		t.Fatalf("Send while the outbox head cannot be read: seq %d, %v", seq, err)
	}
	if seq, err := w.engine.Send(t.Context(), peerB, added(8)); err != nil || seq != 0 {
		t.Fatalf("Send after: seq %d, %v; want 0", seq, err)
	}
	if users, _ := w.outboxUsers(); !slices.Equal(users, []uint64{8}) {
		t.Fatalf("outbox holds users %v, want [8]", users)
	}
}

// Given an outbox append that conflicts and an outbox that then cannot be
// read (to see whether the events landed),
// when a Send is made,
// then it fails with the read's error, and the next Send reads the head
// again before appending (no conflict on the way).
func TestASendWhoseConflictCannotBeCheckedIsRefused(t *testing.T) {
	t.Parallel()
	w, f := faultWorld(t, testConfig())
	w.send(1)
	// The push of event 0 reads the outbox too: done before the read fails.
	eventually(t, "event 0 delivered", func() bool { return w.state().Delivered == 1 })
	// Another writer (a replica) appends: this writer's next append
	// conflicts, and what landed cannot be read.
	other, err := w.engine.codec.EncodeEnqueued(added(50))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.store.Append(t.Context(), w.outboxStream(), eventstore.Exact(0), other); err != nil {
		t.Fatal(err)
	}
	f.fail("read", streams.OutboxPrefix, 1)
	if seq, err := w.engine.Send(t.Context(), peerB, added(7)); !errors.Is(err, errInjected) {
		t.Fatalf("Send whose conflict cannot be checked: seq %d, %v", seq, err)
	}
	before := f.conflictCount()
	if seq, err := w.engine.Send(t.Context(), peerB, added(8)); err != nil || seq != 2 {
		t.Fatalf("Send after: seq %d, %v; want 2", seq, err)
	}
	if n := f.conflictCount() - before; n != 0 {
		t.Fatalf("the next Send conflicted %d times: it appended at a head it had not read again", n)
	}
	if users, _ := w.outboxUsers(); !slices.Equal(users, []uint64{0, 50, 8}) {
		t.Fatalf("outbox holds users %v, want [0 50 8]", users)
	}
}

// Given outbox appends that always conflict,
// when a Send is made,
// then it is appended a bounded number of times (each conflict logged),
// and fails with the conflict.
func TestASendWhoseAppendsKeepConflictingFails(t *testing.T) {
	t.Parallel()
	w, f := faultWorld(t, testConfig())
	w.send(1)
	conflicts := f.failWith("append", streams.OutboxPrefix, -1, eventstore.ErrWrongExpectedRevision)
	if seq, err := w.engine.Send(t.Context(), peerB, added(7)); !errors.Is(err, eventstore.ErrWrongExpectedRevision) {
		t.Fatalf("Send whose appends always conflict: seq %d, %v", seq, err)
	}
	if n := conflicts.count(f); n != maxOutboxConflicts+1 {
		t.Fatalf("appended %d times, want %d", n, maxOutboxConflicts+1)
	}
	if n := strings.Count(w.logs.String(), "outbox append conflicted; appending again at the head"); n != maxOutboxConflicts {
		t.Fatalf("%d conflicts logged, want %d:\n%s", n, maxOutboxConflicts, w.logs.String())
	}
}

// Given an outbox append whose answer is wrong (the events landed but the
// store answered an error, or it answered another revision than the one
// they were expected at),
// when the next Send is made,
// then it reads the outbox head again before appending: it is stored
// after what landed, with no conflict on the way.
func TestTheNextSendAfterAnUnclearAppendReadsTheHeadAgain(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name   string
		err    error // answered by the append that landed; nil: the wrong revision
		stored bool  // the first Send is answered as stored
	}{
		{"an error", errInjected, true},
		{"another revision", nil, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			w, f := faultWorld(t, testConfig())
			w.send(1)
			f.landedButFailed(streams.OutboxPrefix, 1, c.err)
			seq, err := w.engine.Send(t.Context(), peerB, added(7))
			if c.stored && (err != nil || seq != 1) {
				t.Fatalf("Send whose append landed: seq %d, %v; want 1", seq, err)
			}
			if !c.stored && (err == nil || !strings.Contains(err.Error(), "the store put")) {
				t.Fatalf("Send the store put elsewhere: seq %d, %v", seq, err)
			}
			before := f.conflictCount()
			if seq, err := w.engine.Send(t.Context(), peerB, added(8)); err != nil || seq != 2 {
				t.Fatalf("next Send: seq %d, %v; want 2", seq, err)
			}
			if n := f.conflictCount() - before; n != 0 {
				t.Fatalf("the next Send conflicted %d times: it appended at a head it had not read again", n)
			}
		})
	}
}

// sendWithin enqueues an event for p's outbox directly (past the checks
// of Send, as a Send under way when the engine stops is) and returns its
// error, or errNoAnswer if it does not return within 5 s.
func sendWithin(w *world, p *peer) error {
	data, err := w.engine.codec.EncodeEnqueued(added(9))
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := w.engine.enqueueSend(ctx, p, &outboxSend{data: []eventstore.EventData{data}})
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		return errNoAnswer
	}
}

var errNoAnswer = errors.New("a send to the outbox did not return within 5 s")

// Given a stopped engine,
// when Sends under way reach a peer's outbox writer one after the other,
// then each is refused as the engine closing: the first leaves the writer
// free for the next.
func TestSendsReachingTheWriterAfterAStopAreEachRefused(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	w.send(1)
	p := w.engine.peer(mustLookup(t, w, peerB))
	w.stop()
	for i := range 2 {
		if err := sendWithin(w, p); !errors.Is(err, errEngineClosed) {
			t.Fatalf("send %d after the stop: %v, want the engine closed", i, err)
		}
	}
}

// Given a SendBatch that claimed a peer's writer and releases it,
// when a Send follows, it is stored: with nothing queued the writer is
// left free; and after a stop, a Send queued behind the claim is refused
// as the engine closing, and so is the next one.
func TestAReleasedWriterTakesTheNextSend(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	w.send(1)
	p := w.engine.peer(mustLookup(t, w, peerB))
	w.engine.claimWriter(p)
	w.engine.releaseWriter(p)
	if err := sendWithin(w, p); err != nil {
		t.Fatalf("send after a released claim: %v", err)
	}

	w.stop()
	w.engine.claimWriter(p)
	queued := make(chan error, 1)
	go func() { queued <- sendWithin(w, p) }()
	eventually(t, "the send queued behind the claim", func() bool {
		p.sends.mu.Lock()
		defer p.sends.mu.Unlock()
		return len(p.sends.queue) == 1
	})
	w.engine.releaseWriter(p)
	if err := <-queued; !errors.Is(err, errEngineClosed) {
		t.Fatalf("send queued behind a claim released after the stop: %v, want the engine closed", err)
	}
	if err := sendWithin(w, p); !errors.Is(err, errEngineClosed) {
		t.Fatalf("send after: %v, want the engine closed", err)
	}
}
