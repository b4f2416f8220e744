package delivery

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// outboxWriter serialises and batches the appends of concurrent Sends to
// one peer's outbox (group commit per peer): whoever arrives while an
// append is in flight waits and goes in the next append, together with
// everyone else who arrived meanwhile. Every append names the exact
// revision the writer knows the outbox to be at, so a retry is checked by
// the store's strong duplicate check (EventStoreDB's index check; with
// Any, EventStoreDB only has an in-memory cache that a restart or a leader
// change forgets). The first caller of an idle peer makes its append
// itself; a writer goroutine takes over only while more Sends wait, so
// idle peers hold none.
type outboxWriter struct {
	mu      sync.Mutex
	queue   []*outboxSend
	writing bool // a writer (a caller's Send or a goroutine) runs
	// want, if not 0, is how many waiting Sends wake the writer (through
	// enough) from awaitCallers.
	want   int
	enough chan struct{}
	// claims are the SendBatches waiting to own the writer, in order; the
	// writer passes to the first once it is between appends.
	claims []chan struct{}

	// Owned by the writer.
	next  uint64 // events in the outbox, if known
	known bool
}

// outboxSend is one Send waiting for its append, or the events of a
// SendBatch for one peer, which go in the same append (all or none). Its
// event IDs are fixed when the events are encoded, and every retry carries
// them.
type outboxSend struct {
	data  []eventstore.EventData
	taken bool // an append holds it (guarded by outboxWriter.mu)
	done  chan struct{}
	seq   uint64 // of its first event
	err   error
}

// Bounds of one outbox append and of the retries after conflicts.
const (
	maxSendBatch       = 1024 // events, unless one send carries more
	maxOutboxConflicts = 8
	outboxAppendLimit  = 30 * time.Second
)

// errEngineClosed: the engine is closing and takes no more Sends.
var errEngineClosed = errors.New("delivery engine closed")

// enqueueSend adds s to p's next outbox append and waits until it is
// durable, or ctx ends.
func (e *Engine) enqueueSend(ctx context.Context, p *peer, s *outboxSend) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	w := &p.sends
	s.done = make(chan struct{})
	w.mu.Lock()
	w.queue = append(w.queue, s)
	if w.want > 0 && len(w.queue) >= w.want {
		w.want = 0
		w.enough <- struct{}{} // buffered, and sent once per want
	}
	lead := !w.writing
	w.writing = true
	w.mu.Unlock()
	if lead && e.enterWriter() {
		// No append for the peer is in flight: this caller makes it, with
		// no hand-over to another goroutine, and leaves what queued
		// meanwhile to a writer in the background.
		// It returns once s is answered, or once it passed the writer to
		// a SendBatch before s was taken.
		e.writeOutbox(p, s)
		e.wg.Done()
	} else if lead {
		w.mu.Lock()
		if w.handOffLocked() {
			w.mu.Unlock()
			return e.awaitSend(ctx, w, s)
		}
		w.writing = false
		queue := w.queue
		w.queue = nil
		w.mu.Unlock()
		for _, q := range queue {
			q.err = errEngineClosed
			close(q.done)
		}
	}
	return e.awaitSend(ctx, w, s)
}

// awaitSend waits for s's append, or withdraws s if ctx ends before an
// append has taken it.
func (e *Engine) awaitSend(ctx context.Context, w *outboxWriter, s *outboxSend) (uint64, error) {
	select {
	case <-s.done:
		return s.seq, s.err
	case <-ctx.Done():
		w.mu.Lock()
		defer w.mu.Unlock()
		if !s.taken {
			// Not yet in an append: withdrawn, nothing stored.
			for i, q := range w.queue {
				if q == s {
					w.queue = append(w.queue[:i], w.queue[i+1:]...)
					break
				}
			}
			return 0, ctx.Err()
		}
		select {
		case <-s.done:
			return s.seq, s.err
		default:
		}
		// The append is under way and may land.
		return 0, fmt.Errorf("waiting for the append: %w", ctx.Err())
	}
}

// handOffLocked passes the writer, between appends, to the first
// SendBatch waiting for it, if one is; it stays writing, now theirs.
func (w *outboxWriter) handOffLocked() bool {
	if len(w.claims) == 0 {
		return false
	}
	close(w.claims[0])
	w.claims = w.claims[1:]
	return true
}

// claimWriter makes the caller p's writer, once its current append is
// done. A SendBatch claims its peers' writers in one order (by peer ID),
// and a writer of one peer never waits for another's, so claims cannot
// wait on each other in a circle.
func (e *Engine) claimWriter(p *peer) {
	w := &p.sends
	w.mu.Lock()
	if !w.writing {
		w.writing = true
		w.mu.Unlock()
		return
	}
	ch := make(chan struct{})
	w.claims = append(w.claims, ch)
	w.mu.Unlock()
	<-ch
}

// releaseWriter gives up a writer claimWriter got: to the next claim, or
// to a writer for the Sends that queued meanwhile.
func (e *Engine) releaseWriter(p *peer) {
	w := &p.sends
	w.mu.Lock()
	if w.handOffLocked() {
		w.mu.Unlock()
		return
	}
	if len(w.queue) == 0 {
		w.writing = false
		w.mu.Unlock()
		return
	}
	w.mu.Unlock()
	if e.enterWriter() {
		go func() {
			defer e.wg.Done()
			e.writeOutbox(p, nil)
		}()
		return
	}
	w.mu.Lock()
	w.writing = false
	queue := w.queue
	w.queue = nil
	w.mu.Unlock()
	for _, q := range queue {
		q.err = errEngineClosed
		close(q.done)
	}
}

// enterWriter counts a writer in, unless the engine is closing.
func (e *Engine) enterWriter() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stopping {
		return false
	}
	e.wg.Add(1)
	return true
}

// writeOutbox appends what waits in p's queue, batch after batch, and exits
// once the queue is empty. A caller's Send (own) writes until its own event
// is answered and hands the rest to a goroutine of its own.
func (e *Engine) writeOutbox(p *peer, own *outboxSend) {
	w := &p.sends
	for {
		w.mu.Lock()
		if w.handOffLocked() {
			w.mu.Unlock()
			return
		}
		n, events := 0, 0
		for n < len(w.queue) && (n == 0 || events+len(w.queue[n].data) <= maxSendBatch) {
			events += len(w.queue[n].data)
			n++
		}
		batch := w.queue[:n:n]
		w.queue = w.queue[len(batch):]
		if len(w.queue) == 0 {
			w.queue = nil
		}
		if len(batch) == 0 {
			w.writing = false
			w.mu.Unlock()
			return
		}
		for _, s := range batch {
			s.taken = true
		}
		w.mu.Unlock()

		// Once taken, a batch is written even if its callers went away,
		// within a bound, and before the engine closes.
		ctx, cancel := context.WithTimeout(context.Background(), outboxAppendLimit)
		stored, err := e.appendOutbox(ctx, p, batch)
		cancel()
		if stored > 0 {
			// The events go to the push loop before it is kicked, and are
			// decoded only for a peer this replica pushes to.
			p.mu.Lock()
			willPush := e.runsLocked(p) && p.out.Mode == domain.ModePush
			p.mu.Unlock()
			var fresh []freshSend
			if willPush {
				fresh = freshOf(batch[:stored])
			}
			p.mu.Lock()
			// The outbox may also hold events another writer appended.
			p.out.Head = max(p.out.Head, w.next)
			e.kickLocked(p)
			// Only for a push loop that runs, which takes them or drops
			// them as it goes.
			if p.pushing && p.out.Mode == domain.ModePush {
				for _, f := range fresh {
					p.fresh.add(f.seq, f.events, f.ids)
				}
			}
			p.mu.Unlock()
		}
		if err != nil {
			e.logger.Error("appending to an outbox failed", "peer", p.id, "events", len(batch)-stored, "err", err)
		}
		w.mu.Lock()
		waiting := len(w.queue)
		w.mu.Unlock()
		for i, s := range batch {
			if i >= stored {
				s.err = err
			}
			close(s.done)
		}
		if own == nil {
			e.awaitCallers(w, waiting+len(batch))
		}
		if own != nil && own.taken {
			w.mu.Lock()
			rest := len(w.queue) > 0
			if !rest && !w.handOffLocked() {
				w.writing = false
			}
			w.mu.Unlock()
			if !rest {
				return
			}
			if e.enterWriter() {
				go func() {
					defer e.wg.Done()
					e.writeOutbox(p, nil)
				}()
				return
			}
			own = nil // closing: finish the queue here
		}
	}
}

// Under load, callers that send one after the other would split into two
// alternating halves, each half's append going while the other half's
// callers send again. So before taking the next batch the writer gives the
// callers it just answered a moment to send again: until want Sends wait,
// or callersGrace has passed.
const callersGrace = 200 * time.Microsecond

func (e *Engine) awaitCallers(w *outboxWriter, want int) {
	w.mu.Lock()
	if len(w.queue) >= want {
		w.mu.Unlock()
		return
	}
	if w.enough == nil {
		w.enough = make(chan struct{}, 1)
	}
	w.want = want
	w.mu.Unlock()
	due, stop := e.after(callersGrace)
	defer stop()
	select {
	case <-w.enough:
	case <-due:
		w.mu.Lock()
		if w.want == 0 {
			<-w.enough // sent just now
		}
		w.want = 0
		w.mu.Unlock()
	}
}

// appendOutbox appends batch at the exact revision the writer knows and
// sets each stored send's seq; it returns how many of batch (a prefix) are
// stored whole. A send of several events stored in part (only an append
// EventStoreDB split, failing midway) counts as not stored.
func (e *Engine) appendOutbox(ctx context.Context, p *peer, batch []*outboxSend) (int, error) {
	var data []eventstore.EventData
	for _, s := range batch {
		data = append(data, s.data...)
	}
	first, err := e.appendOutboxEvents(ctx, p, data)
	stored, at := 0, 0
	for _, s := range batch {
		if at+len(s.data) > len(first) {
			break
		}
		s.seq = first[at]
		at += len(s.data)
		stored++
	}
	if stored == len(batch) {
		err = nil
	}
	return stored, err
}

// freshSend is a stored send's events, decoded for the push loop.
type freshSend struct {
	seq    uint64
	events []*syncv1.Event
	ids    []eventstore.EventID
}

// freshOf decodes the events of stored sends; a send that does not decode
// is left to the store's copy.
func freshOf(stored []*outboxSend) []freshSend {
	out := make([]freshSend, 0, len(stored))
	for _, s := range stored {
		f := freshSend{seq: s.seq, events: make([]*syncv1.Event, 0, len(s.data)), ids: make([]eventstore.EventID, 0, len(s.data))}
		for _, d := range s.data {
			ev, err := streams.DecodeEnqueued(eventstore.RecordedEvent{Type: d.Type, Data: d.Data})
			if err != nil {
				return out
			}
			f.events, f.ids = append(f.events, ev), append(f.ids, d.ID)
		}
		out = append(out, f)
	}
	return out
}

// appendOutboxEvents appends data and returns the seqs of those stored (a
// prefix). On a conflict it rereads the outbox and checks, by event ID
// at the expected place, whether the events landed (an earlier try that
// seemed to fail, or a split append stored in part) before appending again
// at the head it read.
func (e *Engine) appendOutboxEvents(ctx context.Context, p *peer, data []eventstore.EventData) ([]uint64, error) {
	w := &p.sends
	stream := streams.Outbox(p.id)
	seqs := make([]uint64, 0, len(data))
	stored := 0
	for conflicts := 0; ; conflicts++ {
		if !w.known {
			head, err := e.outboxLen(ctx, p.id)
			if err != nil {
				return seqs, err
			}
			w.next, w.known = head, true
		}
		rest := data[stored:]
		res, err := e.store.Append(ctx, stream, expectAfter(w.next), rest...)
		if err == nil {
			if want := w.next + uint64(len(rest)) - 1; res.NextExpectedRevision != want {
				w.known = false
				return seqs, fmt.Errorf("the store put %d events after revision %d at %d: want %d", len(rest), w.next, res.NextExpectedRevision, want)
			}
			for i := range rest {
				seqs = append(seqs, w.next+uint64(i))
			}
			w.next += uint64(len(rest))
			return seqs, nil
		}
		if !errors.Is(err, eventstore.ErrWrongExpectedRevision) || conflicts >= maxOutboxConflicts {
			// A failure whose outcome may be unclear: what landed counts as
			// sent, the rest fail, and the head is read again before the
			// next append.
			if landed, lerr := e.landedAt(ctx, stream, w.next, rest); lerr == nil {
				for i := range landed {
					seqs = append(seqs, w.next+uint64(i))
				}
				stored += landed
			}
			w.known = false
			if stored == len(data) {
				return seqs, nil
			}
			return seqs, err
		}
		landed, err := e.landedAt(ctx, stream, w.next, rest)
		if err != nil {
			w.known = false
			return seqs, err
		}
		for i := range landed {
			seqs = append(seqs, w.next+uint64(i))
		}
		stored += landed
		w.next += uint64(landed)
		if stored == len(data) {
			return seqs, nil
		}
		if landed == 0 {
			// Someone else wrote to the outbox: append after them.
			w.known = false
		}
		e.logger.Info("outbox append conflicted; appending again at the head", "peer", p.id, "already_stored", landed, "err", err)
	}
}

// landedAt returns how many of data (a prefix) the stream holds from
// revision from on, matched by event ID.
func (e *Engine) landedAt(ctx context.Context, stream string, from uint64, data []eventstore.EventData) (int, error) {
	recs, err := e.store.ReadStream(ctx, stream, from, len(data))
	if errors.Is(err, eventstore.ErrStreamNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read %s after a conflict: %w", stream, err)
	}
	n := 0
	for n < len(recs) && n < len(data) && recs[n].Revision == from+uint64(n) && recs[n].ID == data[n].ID {
		n++
	}
	return n, nil
}

// outboxLen reads how many events the outbox of id holds.
func (e *Engine) outboxLen(ctx context.Context, id streams.PeerID) (uint64, error) {
	last, err := e.store.ReadStreamBackward(ctx, streams.Outbox(id), 1)
	switch {
	case errors.Is(err, eventstore.ErrStreamNotFound):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("read the head of %s: %w", streams.Outbox(id), err)
	case len(last) == 0:
		return 0, nil
	}
	return last[0].Revision + 1, nil
}
