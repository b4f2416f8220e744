package delivery

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// snapshotEvery is how many delivery records are written between two
// snapshots of a peer's delivery state: a start reads at most about this
// many records per peer (plus the records of one batch).
const snapshotEvery = 256

// databaseID returns the identity of the store's database, which every
// snapshot carries: one copied from another database is not trusted.
func (e *Engine) databaseID(ctx context.Context) (string, error) {
	e.mu.Lock()
	id := e.dbID
	e.mu.Unlock()
	if id != "" {
		return id, nil
	}
	id, err := streams.DatabaseID(ctx, e.store, e.random)
	if err != nil {
		return "", err
	}
	e.mu.Lock()
	e.dbID = id
	e.mu.Unlock()
	return id, nil
}

// loadDelivery folds p's delivery stream from its latest trusted snapshot:
// the state, the stream's length, and how many records were read.
func (e *Engine) loadDelivery(ctx context.Context, p *peer) (domain.Outbox, uint64, uint64, error) {
	stream := streams.Delivery(p.id)
	p.snapshotAt = 0
	if snap, ok := e.latestDeliverySnapshot(ctx, p); ok {
		out, next, read, err := foldDelivery(ctx, e.store, stream, snap.Revision, snap.Outbox())
		if !errors.Is(err, errSnapshotPastEnd) {
			if err == nil {
				p.snapshotAt = snap.Revision
			}
			return out, next, read, err
		}
		e.logger.Warn("delivery snapshot ignored; folding the delivery records instead", "peer", p.id,
			"err", fmt.Errorf("snapshot covers %d records of %q, which holds fewer", snap.Revision, stream))
	}
	return foldDelivery(ctx, e.store, stream, 0, domain.Outbox{})
}

// errSnapshotPastEnd: the stream does not hold the last record a snapshot
// covers.
var errSnapshotPastEnd = errors.New("snapshot past the stream's end")

// foldDelivery folds stream's records from revision from onto out, the
// fold of those before it. With from > 0 it reads from the record before
// from, which retention never removes: one read both checks that the
// stream holds every record the snapshot covers and goes on after them.
func foldDelivery(ctx context.Context, s Store, stream string, from uint64, out domain.Outbox) (domain.Outbox, uint64, uint64, error) {
	var read uint64
	checked := from == 0
	next, err := readFrom(ctx, s, stream, from-min(from, 1), func(r eventstore.RecordedEvent) error {
		if !checked {
			if r.Revision != from-1 {
				return errSnapshotPastEnd
			}
			checked = true
			return nil
		}
		ev, err := streams.DecodeDelivery(r)
		if err != nil {
			return err
		}
		read++
		out.Apply(ev)
		return nil
	})
	if err == nil && !checked {
		err = errSnapshotPastEnd
	}
	if err != nil {
		return domain.Outbox{}, 0, 0, err
	}
	return out, max(next, from), read, nil
}

// latestDeliverySnapshot returns p's latest delivery snapshot, if there is
// one of this format, stream and database; one that is not is ignored
// with a warning. Whether the stream holds the records it covers is
// foldDelivery's check.
func (e *Engine) latestDeliverySnapshot(ctx context.Context, p *peer) (streams.OutboxSnapshot, bool) {
	var none streams.OutboxSnapshot
	recs, err := e.store.ReadStreamBackward(ctx, streams.DeliverySnapshot(p.id), 1)
	if errors.Is(err, eventstore.ErrStreamNotFound) || (err == nil && len(recs) == 0) {
		return none, false
	}
	ignore := func(err error) (streams.OutboxSnapshot, bool) {
		e.logger.Warn("delivery snapshot ignored; folding the delivery records instead", "peer", p.id, "err", err)
		return none, false
	}
	if err != nil {
		return ignore(err)
	}
	snap, err := streams.DecodeOutboxSnapshot(recs[0])
	if err != nil {
		return ignore(err)
	}
	db, err := e.databaseID(ctx)
	if err != nil {
		return ignore(err)
	}
	if err := snap.Check(db, streams.Delivery(p.id), snap.Revision, true); err != nil {
		return ignore(err)
	}
	if snap.Revision == 0 {
		return none, false // covers nothing
	}
	return snap, true
}

// snapshotAfterFlush writes a snapshot of p's delivery state once
// snapshotEvery records were written since the last one. It runs in p's
// flush, after an append, so no other delivery append of p runs meanwhile.
func (e *Engine) snapshotAfterFlush(p *peer) {
	p.mu.Lock()
	if !p.loaded || p.deliveryNext < p.snapshotAt+snapshotEvery {
		p.mu.Unlock()
		return
	}
	durable, rev := p.durable, p.deliveryNext
	durable.Head = p.out.Head
	p.snapshotAt = rev // a failure waits for the next snapshotEvery records
	p.mu.Unlock()
	if err := e.writeDeliverySnapshot(p, durable, rev); err != nil {
		e.logger.Warn("writing a delivery snapshot failed; the next start reads more records", "peer", p.id, "err", err)
		return
	}
	p.mu.Lock()
	p.snapshotWritten = max(p.snapshotWritten, rev)
	p.mu.Unlock()
}

func (e *Engine) writeDeliverySnapshot(p *peer, o domain.Outbox, rev uint64) error {
	ctx, cancel := context.WithTimeout(context.Background(), appendTimeout)
	defer cancel()
	db, err := e.databaseID(ctx)
	if err != nil {
		return err
	}
	data, err := e.codec.EncodeSnapshot(streams.NewOutboxSnapshot(db, streams.Delivery(p.id), rev, o))
	if err != nil {
		return err
	}
	if _, err := e.store.Append(ctx, streams.DeliverySnapshot(p.id), eventstore.Any(), data); err != nil {
		return fmt.Errorf("append to %s: %w", streams.DeliverySnapshot(p.id), err)
	}
	return nil
}

// appendTimeout bounds a record's append that outlives its caller.
const appendTimeout = 30 * time.Second

// readFrom folds the events of stream from revision from, page by page; a
// missing stream is empty. It returns the revision after the last one read.
func readFrom(ctx context.Context, s Store, stream string, from uint64, fn func(eventstore.RecordedEvent) error) (uint64, error) {
	const page = 1024
	next := from
	for {
		batch, err := s.ReadStream(ctx, stream, next, page)
		if errors.Is(err, eventstore.ErrStreamNotFound) {
			return next, nil
		}
		if err != nil {
			return next, fmt.Errorf("read %s: %w", stream, err)
		}
		for _, r := range batch {
			if err := fn(r); err != nil {
				return next, err
			}
			next = r.Revision + 1
		}
		if len(batch) < page {
			return next, nil
		}
	}
}
