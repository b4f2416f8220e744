package delivery

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// The fence before each push in replica mode lets a push out only when
// this replica holds the peer's term on a loaded state, no record of its
// own is still being written, and the delivery stream ends where it wrote
// last.
func TestTheFenceLetsAPushOutOnlyUnderItsOwnCurrentTerm(t *testing.T) {
	t.Parallel()
	w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: testConfig()}
	w.beforeRun = func() {
		w.engine.UseOwners(newFakeOwners("r1", true))
		w.engine.watch.off = true // only the fence rereads the peer here
	}
	w.open()
	w.send(3)
	w.pushedInOrder(3)
	id, _ := w.engine.registry.Lookup(peerB)
	p := w.engine.peer(streams.PeerID(id))
	eventually(t, "the records written", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.journal) == 0 && !p.flushing
	})
	fence := func() error { return w.engine.fence(context.Background(), p) }
	change := func(fn func()) (undo func()) {
		p.mu.Lock()
		owned, loaded, out, journal, flushing, next := p.owned, p.loaded, p.out, p.journal, p.flushing, p.deliveryNext
		fn()
		p.mu.Unlock()
		return func() {
			p.mu.Lock()
			p.owned, p.loaded, p.out, p.journal, p.flushing, p.deliveryNext = owned, loaded, out, journal, flushing, next
			p.mu.Unlock()
		}
	}
	if err := fence(); err != nil {
		t.Fatalf("given its own term, a loaded state and the stream's end: %v", err)
	}
	for name, fn := range map[string]func(){
		"not owned":                     func() { p.owned = false },
		"not loaded":                    func() { p.loaded = false },
		"not owned nor loaded":          func() { p.owned, p.loaded = false, false },
		"another replica's term":        func() { p.out.Owner = domain.OwnerTerm{Term: p.out.Owner.Term, Replica: "r2"} },
		"records waiting to be written": func() { p.journal = append(p.journal, journalEntry{}) },
		"records being written":         func() { p.flushing = true },
	} {
		undo := change(fn)
		if err := fence(); !errors.Is(err, errFenced) {
			t.Errorf("%s: fence = %v, want errFenced", name, err)
		}
		undo()
	}
	// The stream moved on behind this replica's back: the state is to be
	// read again.
	undo := change(func() { p.deliveryNext-- })
	if err := fence(); !errors.Is(err, errFenced) {
		t.Fatalf("a stream longer than written: %v", err)
	}
	p.mu.Lock()
	loaded := p.loaded
	p.mu.Unlock()
	if loaded {
		t.Fatal("the state is still taken as loaded after the stream moved on")
	}
	undo()
	if err := fence(); err != nil {
		t.Fatalf("after: %v", err)
	}
}

// Given two replicas, r1 owning the peer,
// when r2 takes one Send for it after r1 has pushed one,
// then r1 learns of it from the outbox's end and pushes it; and r1 keeps
// its one term over its polls of the owners.
func TestTheOwnerPushesAnEventAnotherReplicaStoredAndKeepsItsTerm(t *testing.T) {
	t.Parallel()
	rp := newReplicaPair(t)
	rp.send(t, 0, 0, 1)
	eventually(t, "the owner's own event pushed", func() bool { return slices.Equal(rp.peers.pushes(), []uint64{0}) })
	rp.send(t, 1, 1, 1)
	eventually(t, "the other replica's event pushed", func() bool { return slices.Equal(rp.peers.pushes(), []uint64{0, 1}) })
	time.Sleep(3 * ownerPoll)
	if got := ownerRecords(rp.records(t)); !slices.Equal(got, []domain.OwnerTermStarted{{Term: 1, Replica: "r1"}}) {
		t.Fatalf("owner records %+v, want r1's one term", got)
	}
}
