package delivery

import (
	"testing"
	"testing/synctest"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// Given a peer in push mode,
// when Sends follow one another,
// then the push loop pushes each from what the outbox writer appended,
// without reading the outbox back.
func TestEventsThisServerAppendedArePushedWithoutReadingTheOutbox(t *testing.T) {
	t.Parallel()
	w, f := faultWorld(t, testConfig())
	w.send(1)
	eventually(t, "the first event delivered", func() bool { return w.state().Delivered == 1 })
	reads := func() int {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.calls["read "+streams.Outbox(mustLookup(t, w, peerB))]
	}
	before := reads()
	for i := range 20 {
		w.send(1)
		eventually(t, "delivered", func() bool { return w.state().Delivered == uint64(i+2) })
	}
	if n := reads() - before; n != 0 {
		t.Fatalf("%d outbox reads for 20 events this server appended, want none", n)
	}
}

// Given a peer in queue mode,
// when Sends follow,
// then nothing is held for a push loop that does not run.
func TestNoFreshEventsAreHeldForAPeerInQueueMode(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t, testConfig())
		w.peers.setDown(true)
		w.send(1)
		eventually(t, "queue mode", func() bool { return w.state().Mode == domain.ModeQueue })
		synctest.Wait() // the push loop has exited
		w.send(5)
		synctest.Wait()
		p := w.engine.peer(mustLookup(t, w, peerB))
		p.mu.Lock()
		defer p.mu.Unlock()
		if n := len(p.fresh.events); n != 0 || p.pushing {
			t.Fatalf("%d fresh events held (push loop running: %v), want none", n, p.pushing)
		}
	})
}

// Given two replicas, one of which owns peer B,
// when Sends reach the other,
// then that one holds no fresh events: it runs no push loop for B.
func TestAReplicaThatDoesNotRunAPeerHoldsNoFreshEvents(t *testing.T) {
	t.Parallel()
	rp := newReplicaPair(t)
	rp.send(t, 1, 0, 20) // at the replica that does not own B
	eventually(t, "the owner to push the 20 events", func() bool { return len(rp.peers.pushes()) == 20 })
	p := rp.engine[1].peer(mustLookupIn(t, rp.engine[1], peerB))
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.fresh.events); n != 0 {
		t.Fatalf("the replica that does not run B holds %d fresh events, want none", n)
	}
}

func freshEvents(users ...uint64) ([]*syncv1.Event, []eventstore.EventID) {
	var events []*syncv1.Event
	var ids []eventstore.EventID
	for _, u := range users {
		events = append(events, added(u))
		ids = append(ids, eventstore.EventID{byte(u)})
	}
	return events, ids
}

func addFresh(f *freshOutbox, first uint64, users ...uint64) {
	events, ids := freshEvents(users...)
	f.add(first, events, ids)
}

func usersOf(events []*syncv1.Event) []uint64 {
	var out []uint64
	for _, ev := range events {
		out = append(out, ev.GetUserAddedToGuild().GetUserId())
	}
	return out
}

func TestFreshOutboxKeepsTheLastContiguousEvents(t *testing.T) {
	t.Parallel()
	var f freshOutbox
	addFresh(&f, 10, 10, 11)
	addFresh(&f, 12, 12)
	if f.from != 10 || !slicesEqual(usersOf(f.events), []uint64{10, 11, 12}) || len(f.ids) != 3 {
		t.Fatalf("after contiguous adds: from %d, %v", f.from, usersOf(f.events))
	}
	// Events that do not continue it (another writer appended between)
	// replace it.
	addFresh(&f, 20, 20)
	if f.from != 20 || !slicesEqual(usersOf(f.events), []uint64{20}) {
		t.Fatalf("after a gap: from %d, %v", f.from, usersOf(f.events))
	}
	f.dropBefore(21)
	if len(f.events) != 0 || len(f.ids) != 0 {
		t.Fatalf("all dropped, still %v", usersOf(f.events))
	}
	// At most freshOutboxMax, the newest.
	many := make([]uint64, freshOutboxMax+5)
	for i := range many {
		many[i] = uint64(100 + i)
	}
	addFresh(&f, 100, many...)
	if f.from != 105 || len(f.events) != freshOutboxMax || len(f.ids) != freshOutboxMax || usersOf(f.events)[0] != 105 {
		t.Fatalf("over the cap: from %d, %d events from %d", f.from, len(f.events), usersOf(f.events)[0])
	}
	f.dropBefore(107)
	if f.from != 107 || usersOf(f.events)[0] != 107 || f.ids[0] != (eventstore.EventID{107}) {
		t.Fatalf("after dropping below 107: from %d, first %d", f.from, usersOf(f.events)[0])
	}
	// Below what it holds (delivery went back): it keeps everything.
	f.dropBefore(50)
	if f.from != 107 || len(f.events) != freshOutboxMax-2 {
		t.Fatalf("after dropping below 50: from %d, %d events", f.from, len(f.events))
	}
}

func TestAReaderTakesWhatItLacksFromTheFreshEvents(t *testing.T) {
	t.Parallel()
	var f freshOutbox
	addFresh(&f, 5, 5, 6, 7, 8)
	var r outboxReader
	// Not holding the push's first event: all from it.
	r.take("p", 6, &f)
	if r.from != 6 || !slicesEqual(usersOf(r.events), []uint64{6, 7, 8}) || r.ids[0] != (eventstore.EventID{6}) {
		t.Fatalf("taken from 6: from %d, %v", r.from, usersOf(r.events))
	}
	// Holding it: what continues it, and nothing below the push.
	addFresh(&f, 9, 9, 10)
	r.take("p", 8, &f)
	if r.from != 8 || !slicesEqual(usersOf(r.events), []uint64{8, 9, 10}) || len(r.ids) != 3 {
		t.Fatalf("taken from 8: from %d, %v", r.from, usersOf(r.events))
	}
	// Fresh events that do not reach the push's: nothing.
	r = outboxReader{}
	r.take("p", 4, &f)
	if len(r.events) != 0 {
		t.Fatalf("taken for 4: %v", usersOf(r.events))
	}
	// Another peer's reader starts anew.
	r = outboxReader{peer: "q", from: 9, events: []*syncv1.Event{added(99)}, ids: []eventstore.EventID{{99}}}
	r.take("p", 9, &f)
	if r.peer != "p" || !slicesEqual(usersOf(r.events), []uint64{9, 10}) {
		t.Fatalf("another peer's reader: %s, %v", r.peer, usersOf(r.events))
	}
}
