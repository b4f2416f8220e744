package delivery

import (
	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// freshOutbox holds the events this server's outbox writer appended last
// for a peer in push mode, decoded: its push loop takes them from here
// instead of reading back from the store what was just written, a read per
// push that under a steady flow of Sends is a tenth of the CPU and lies on
// the path of every event. Events below the next push are dropped, and it
// holds at most freshOutboxMax; whatever it lacks is read from the store.
type freshOutbox struct {
	from   uint64 // the outbox revision of events[0]
	events []*syncv1.Event
	ids    []eventstore.EventID
}

// freshOutboxMax bounds a peer's fresh events: as many as a push loop
// reads ahead from the store.
const freshOutboxMax = readAhead

// add records events appended from revision first on, with their record
// IDs; if they do not continue what it holds, they replace it.
func (f *freshOutbox) add(first uint64, events []*syncv1.Event, ids []eventstore.EventID) {
	if len(f.events) > 0 && first != f.from+uint64(len(f.events)) {
		f.clear()
	}
	if len(f.events) == 0 {
		f.from = first
	}
	f.events = append(f.events, events...)
	f.ids = append(f.ids, ids...)
	if over := len(f.events) - freshOutboxMax; over > 0 {
		f.dropBefore(f.from + uint64(over))
	}
}

// dropBefore forgets the events below seq.
func (f *freshOutbox) dropBefore(seq uint64) {
	if seq <= f.from || len(f.events) == 0 {
		return
	}
	n := min(seq-f.from, uint64(len(f.events)))
	if n == uint64(len(f.events)) {
		f.clear()
		return
	}
	// Copied, so that what was dropped is not kept alive by the array.
	f.events = append([]*syncv1.Event(nil), f.events[n:]...)
	f.ids = append([]eventstore.EventID(nil), f.ids[n:]...)
	f.from += n
}

func (f *freshOutbox) clear() { *f = freshOutbox{} }

// take makes r hold the events of f from seq that it lacks: all of them
// from seq when r does not hold seq, else those that continue r. r keeps
// nothing below seq.
func (r *outboxReader) take(id streams.PeerID, seq uint64, f *freshOutbox) {
	end := f.from + uint64(len(f.events))
	if len(f.events) == 0 || seq < f.from || seq >= end {
		return
	}
	if r.peer != id || seq < r.from || seq >= r.from+uint64(len(r.events)) {
		r.peer, r.from = id, seq
		r.events = append(r.events[:0], f.events[seq-f.from:]...)
		r.ids = append(r.ids[:0], f.ids[seq-f.from:]...)
		return
	}
	if drop := seq - r.from; drop > 0 {
		r.events = r.events[:copy(r.events, r.events[drop:])]
		r.ids = r.ids[:copy(r.ids, r.ids[drop:])]
		r.from = seq
	}
	if have := r.from + uint64(len(r.events)); have >= f.from && have < end {
		r.events = append(r.events, f.events[have-f.from:]...)
		r.ids = append(r.ids, f.ids[have-f.from:]...)
	}
}
