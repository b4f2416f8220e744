package delivery

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// drainWorld is a world whose peer is down with n events queued, served in
// Pull replies of 3 events.
func drainWorld(t *testing.T, n int) (*world, *peer) {
	t.Helper()
	cfg := testConfig()
	cfg.PullReplyMaxEvents = 3
	w := newWorld(t, cfg)
	w.peers.setDown(true)
	w.send(n)
	eventually(t, "queue mode", func() bool { return w.state().Mode == domain.ModeQueue })
	id, _ := w.engine.registry.Lookup(peerB)
	return w, w.engine.peer(streams.PeerID(id))
}

// readAheadFrom reports whether p's next reply has been read, from from.
func readAheadFrom(p *peer, from uint64) bool {
	p.mu.Lock()
	a := p.ahead
	p.mu.Unlock()
	if a == nil {
		return false
	}
	select {
	case <-a.done:
		return a.from == from && a.err == nil
	default:
		return false
	}
}

func servedInOrder(t *testing.T, w *world, ack *uint64, first uint64, n int) {
	t.Helper()
	batch, err := w.engine.ServePull(context.Background(), domain.Caller{ServerID: peerB, Extended: true}, ack)
	if err != nil || batch.FirstSeq != first || len(batch.Events) != n {
		t.Fatalf("pull acknowledging %v: %d events from %d, %v; want %d from %d", ack, len(batch.Events), batch.FirstSeq, err, n, first)
	}
	for i, ev := range batch.Events {
		if !proto.Equal(ev, added(first+uint64(i))) {
			t.Fatalf("event %d of the reply from %d is %v", i, first, ev)
		}
	}
}

// Given a Postbox peer draining a queue longer than one Pull reply,
// when it has been served a reply,
// then the next one is read from the store before the peer asks for it,
// and the peer gets every event once and in order, whether it acknowledges
// the reply or lost it and asks again.
func TestTheNextPullReplyIsReadWhileThePeerAppliesTheLast(t *testing.T) {
	t.Parallel()
	w, p := drainWorld(t, 8)
	servedInOrder(t, w, nil, 0, 3)
	eventually(t, "the reply from 3 read ahead", func() bool { return readAheadFrom(p, 3) })
	// The reply was lost: the peer asks from 0 again, and the read ahead,
	// from 3, is not what it needs.
	servedInOrder(t, w, nil, 0, 3)
	ack := uint64(2)
	servedInOrder(t, w, &ack, 3, 3)
	eventually(t, "the reply from 6 read ahead", func() bool { return readAheadFrom(p, 6) })
	ack = 5
	servedInOrder(t, w, &ack, 6, 2)
	ack = 7
	servedInOrder(t, w, &ack, 0, 0)
	if s := w.state(); s.Mode != domain.ModePush || s.Delivered != 8 {
		t.Fatalf("after the drained queue: %+v", s)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ahead != nil || len(w.engine.aheadSlots) != 0 {
		t.Fatalf("a drained queue still holds a read ahead (%v) or its memory (%d)", p.ahead != nil, len(w.engine.aheadSlots))
	}
}

// Given a reply read ahead,
// when the peer does not pull again for a while,
// then its memory is given back.
func TestAReplyReadAheadIsDroppedWhenThePeerDoesNotPullAgain(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		w, p := drainWorld(t, 5)
		servedInOrder(t, w, nil, 0, 3)
		eventually(t, "the reply from 3 read ahead", func() bool { return readAheadFrom(p, 3) })
		time.Sleep(pullAheadTTL + time.Second)
		synctest.Wait()
		p.mu.Lock()
		ahead, held := p.ahead != nil, len(w.engine.aheadSlots)
		p.mu.Unlock()
		if ahead || held != 0 {
			t.Fatalf("after %v: read ahead kept %v, memory held for %d replies", pullAheadTTL, ahead, held)
		}
		// The peer pulls at last: the reply is read anew.
		ack := uint64(2)
		servedInOrder(t, w, &ack, 3, 2)
	})
}
