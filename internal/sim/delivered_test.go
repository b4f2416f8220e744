package sim

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/memory"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// heldKey names an event as a Postbox receiver holds it: the sender's
// epoch and sequence number.
type heldKey struct{ epoch, seq uint64 }

// readPrefix reads, straight from storage, every record of the streams
// whose names start with prefix, by stream, in order. It reads durable
// state, whatever the server is doing (or if it is down).
func readPrefix(t *testing.T, storage *memory.Storage, prefix string) map[string][]eventstore.RecordedEvent {
	t.Helper()
	ctx := context.Background()
	store := storage.Open(memory.Options{})
	defer store.Close()
	sub, err := store.Subscribe(ctx, eventstore.Filter{StreamPrefix: prefix}, eventstore.FromStart())
	if err != nil {
		t.Fatalf("read the %s streams: %v", prefix, err)
	}
	defer sub.Close()
	out := map[string][]eventstore.RecordedEvent{}
	for {
		item, err := sub.Recv(ctx)
		if err != nil {
			t.Fatalf("read the %s streams: %v", prefix, err)
		}
		if item.CaughtUp {
			return out
		}
		out[item.Event.Stream] = append(out[item.Event.Stream], *item.Event)
	}
}

// heldBy reads what a Postbox receiver's storage holds, by sender (the
// workload's events name their sender) and by epoch and sequence number:
// the serial of the event it applied there.
func heldBy(t *testing.T, storage *memory.Storage) map[int]map[heldKey]uint64 {
	out := map[int]map[heldKey]uint64{}
	for stream, recs := range readPrefix(t, storage, streams.InboxPrefix) {
		events, err := streams.ReceivedOf(recs)
		if err != nil {
			t.Fatalf("decode %s: %v", stream, err)
		}
		for _, got := range events {
			if got.SenderSeq == nil {
				continue
			}
			s := senderOf(got.Event)
			if out[s] == nil {
				out[s] = map[heldKey]uint64{}
			}
			out[s][heldKey{got.SenderEpoch, *got.SenderSeq}] = serialOf(got.Event)
		}
	}
	return out
}

// lostEvents are the events a restore removed from a receiver's inbox from
// one sender, with the serial each was: the sender may count them
// delivered (it was told they were applied) until it learns of the loss.
type lostEvents map[heldKey]uint64

// noteRestore records, for each sender, what the restore of receiver r
// from before to after removed from r's inbox. The caller has stopped r.
func (w *world) noteRestore(t *testing.T, r *node, before, after *memory.Storage) {
	had, has := heldBy(t, before), heldBy(t, after)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.restoredAt[r.index] = time.Now()
	for s, events := range had {
		for key, serial := range events {
			if _, ok := has[s][key]; ok {
				continue
			}
			if w.lost[r.index] == nil {
				w.lost[r.index] = map[int]lostEvents{}
			}
			if w.lost[r.index][s] == nil {
				w.lost[r.index][s] = lostEvents{}
			}
			w.lost[r.index][s][key] = serial
		}
	}
}

// forget drops from lost what an account of the receiver, recorded by the
// sender in epoch (the one current before the record), says the receiver
// lacks: the sender has learnt of their loss, and must not count them
// delivered again until they are applied again.
func (l lostEvents) forget(epoch uint64, rec domain.DeliveryEvent) {
	for key := range l {
		if key.epoch != epoch {
			continue
		}
		switch rec := rec.(type) {
		case domain.ReceiverReported:
			if !rec.Has || key.seq > rec.Seq {
				delete(l, key)
			}
		case domain.EpochStarted:
			delete(l, key)
		}
	}
}

// checkDelivered checks the acknowledgement rule through its effect:
// every event a sender counts as delivered to a Postbox receiver (below
// the delivered cursor of its durable delivery fold, in the current epoch)
// is durably applied by that receiver, at that epoch and sequence number,
// unless a restore of the receiver removed it and the sender has not yet
// recorded an account of the receiver that lacks it. It also checks that a
// sender found a receiver behind what it was given only after that
// receiver's store went back.
func (w *world) checkDelivered(t *testing.T) {
	t.Helper()
	w.mu.Lock()
	repairs := append([]repair(nil), w.repairs...)
	w.mu.Unlock()
	for i, rp := range repairs {
		r := w.nodeAt(rp.peer)
		if r == nil || r.reg == nil {
			continue // judged once r runs again
		}
		w.mu.Lock()
		changed, ok := w.replicaChanged[r.index]
		w.mu.Unlock()
		if (ok && rp.at.Sub(changed) <= handover) || r.replicas > 0 {
			// Two replicas of r may pull the sender at once around a
			// handover (both believe for a moment they run it), and the
			// account of the one that read the inbox first can arrive
			// last; and at any time, a push one replica applies may
			// cross the Pull another is making, whose account was read
			// before it (only upstream pushes wait for a pull at another
			// replica). Either way the sender rewinds and sends again
			// what r holds, which r drops by sequence number. Counted,
			// not failed (README "Simulation").
			w.mu.Lock()
			first := !w.repairs[i].counted
			w.repairs[i].counted = true
			w.mu.Unlock()
			if first {
				w.count("repair:stale-replica-account")
			}
			continue
		}
		w.mu.Lock()
		since, restored := w.restoredAt[r.index]
		w.mu.Unlock()
		if !restored || rp.at.Before(since) {
			t.Fatalf("%s found %s behind what it had been given (%s repair), and %s's store had not gone back",
				w.nodes[rp.by].orig, rp.peer, rp.kind, r.orig)
		}
	}
	for _, s := range w.nodes {
		folds, serials := w.senderView(t, s)
		// The receivers' side is read after the sender's: what the sender
		// counted delivered was applied before it was counted, and stays.
		held := make([]map[int]map[heldKey]uint64, len(w.nodes))
		for _, r := range w.nodes {
			if r != s {
				held[r.index] = heldBy(t, r.storage)
			}
		}
		for stream, o := range folds {
			to, ok := serials[stream].receiver, len(serials[stream].bySeq) > 0
			if !ok || to >= len(w.nodes) {
				continue // nothing queued, or the upstream receiver
			}
			w.mu.Lock()
			lost := w.lost[to][s.index]
			w.mu.Unlock()
			var missing []string
			for seq := o.EpochFrom; seq < o.Delivered; seq++ {
				want, queued := serials[stream].bySeq[seq]
				key := heldKey{o.Epoch, seq}
				got, has := held[to][s.index][key]
				switch {
				case !queued:
					missing = append(missing, fmt.Sprintf("seq %d is not in the outbox", seq))
				case has && got != want:
					missing = append(missing, fmt.Sprintf("seq %d is event %d, the receiver applied %d there", seq, want, got))
				case has:
				case lost[key] == want:
					// Removed by the receiver's restore; the sender has not
					// heard of it yet.
				default:
					missing = append(missing, fmt.Sprintf("seq %d (event %d) is not applied", seq, want))
				}
			}
			if len(missing) > 0 {
				t.Fatalf("%s counts delivered to %s (epoch %d, events %d to %d) what it does not hold: %s",
					s.orig, w.nodes[to].orig, o.Epoch, o.EpochFrom, o.Delivered, strings.Join(missing, "; "))
			}
		}
	}
}

// handover bounds how long after a replica of a server started, died,
// paused or resumed its replicas may still pull a peer at once: a lease,
// the owner poll, a pull's timeout, and some.
const handover = time.Minute

// repair is a continuity repair a sender made: it found receiver peer
// behind what it had been given, at virtual time at.
type repair struct {
	by      int
	peer    string
	kind    string
	at      time.Time
	counted bool // as one to a receiver run by replicas
}

// checkOnePeerEach checks that no server knows another as two peers, under
// two of its IDs. Renames once left servers so: a server renamed while a
// first contact with a peer was under way, whose pushes under the old ID
// registered that one there beside the new ID the peer's users addressed
// it by; and a receiver restored to before it accepted a rename, which
// met the renamed server's next push under its new ID as a stranger.
func (w *world) checkOnePeerEach(t *testing.T) {
	t.Helper()
	for _, r := range w.nodes {
		if r.reg == nil || !r.running() {
			continue
		}
		for _, s := range w.nodes {
			if peers := peersOf(r.reg, s); s != r && len(peers) > 1 {
				t.Fatalf("%s knows %s as %d peers %v (IDs %v)\n%s's peers stream:\n%s%s's peers stream:\n%s",
					r.orig, s.orig, len(peers), peers, s.hosts, r.orig, peerRecords(t, r), s.orig, peerRecords(t, s))
			}
		}
	}
}

// peerRecords lists the records of n's peers stream, one per line.
func peerRecords(t *testing.T, n *node) string {
	var b strings.Builder
	for _, rec := range readPrefix(t, n.storage, streams.Peers)[streams.Peers] {
		e, err := streams.DecodePeerEvent(rec)
		fmt.Fprintf(&b, "  %d %T %+v %v\n", rec.Revision, e, e, err)
	}
	return b.String()
}

// nodeAt is the Postbox server reachable at host, if any.
func (w *world) nodeAt(host string) *node {
	for _, n := range w.nodes {
		for _, h := range n.hosts {
			if h.String() == host {
				return n
			}
		}
	}
	return nil
}

// queued is one outbox of a sender: its receiver, and the serial of the
// event at each sequence number.
type queued struct {
	receiver int
	bySeq    map[uint64]uint64
}

// senderView folds every delivery stream of sender s from its storage, and
// reads its outboxes, keyed by the peer's ID (the streams' suffix). While
// folding it notes the accounts of restored receivers that s recorded
// after their restore.
func (w *world) senderView(t *testing.T, s *node) (map[string]domain.Outbox, map[string]queued) {
	serials := map[string]queued{}
	for stream, recs := range readPrefix(t, s.storage, streams.OutboxPrefix) {
		q := queued{receiver: -1, bySeq: map[uint64]uint64{}}
		for _, rec := range recs {
			ev, err := streams.DecodeEnqueued(rec)
			if err != nil {
				t.Fatalf("decode %s@%d: %v", stream, rec.Revision, err)
			}
			q.bySeq[rec.Revision] = serialOf(ev)
			w.mu.Lock()
			to, ok := w.sentTo[serialOf(ev)]
			w.mu.Unlock()
			if ok && q.receiver < 0 {
				q.receiver = to
			}
		}
		serials[strings.TrimPrefix(stream, streams.OutboxPrefix)] = q
	}
	folds := map[string]domain.Outbox{}
	for stream, recs := range readPrefix(t, s.storage, streams.DeliveryPrefix) {
		peer := strings.TrimPrefix(stream, streams.DeliveryPrefix)
		to := serials[peer].receiver
		w.mu.Lock()
		since, restored := w.restoredAt[to]
		lost := w.lost[to][s.index]
		w.mu.Unlock()
		var o domain.Outbox
		for _, rec := range recs {
			ev, err := streams.DecodeDelivery(rec)
			if err != nil {
				t.Fatalf("decode %s@%d: %v", stream, rec.Revision, err)
			}
			if restored && rec.Created.After(since) && lost != nil {
				w.mu.Lock()
				lost.forget(o.Epoch, ev)
				w.mu.Unlock()
			}
			o.Apply(ev)
		}
		folds[peer] = o
	}
	return folds, serials
}
