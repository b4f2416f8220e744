// Package consumers keeps the durable consumers of received events (the
// homeserver reading Watch) in the store's consumers stream: their
// acknowledged positions survive a restart of either side, on every store.
package consumers

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// Store is what the ledger needs of the event store.
type Store interface {
	Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error)
	ReadStream(ctx context.Context, stream string, from uint64, limit int) ([]eventstore.RecordedEvent, error)
}

// Ledger is the consumers stream folded, and the one writer of it in this
// process. Every call first reads what another process sharing the store
// appended since, and appends at the stream's expected revision, so two
// processes never record from stale states.
type Ledger struct {
	store Store
	codec *streams.Codec
	clock domain.Clock

	mu   sync.Mutex
	fold domain.Consumers
	next uint64 // revision of the next record to read
}

// Open reads the consumers stream.
func Open(ctx context.Context, store Store, codec *streams.Codec, clock domain.Clock) (*Ledger, error) {
	l := &Ledger{store: store, codec: codec, clock: clock}
	if err := l.catchUpLocked(ctx); err != nil {
		return nil, err
	}
	return l, nil
}

// catchUpLocked folds the records after the last one read.
func (l *Ledger) catchUpLocked(ctx context.Context) error {
	const page = 1024
	for {
		batch, err := l.store.ReadStream(ctx, streams.Consumers, l.next, page)
		if errors.Is(err, eventstore.ErrStreamNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", streams.Consumers, err)
		}
		for _, r := range batch {
			e, err := streams.DecodeConsumers(r)
			if err != nil {
				return fmt.Errorf("consumers: %w", err)
			}
			l.fold.Apply(e)
			l.next = r.Revision + 1
		}
		if len(batch) < page {
			return nil
		}
	}
}

// Get returns a consumer's state, as of the store now.
func (l *Ledger) Get(ctx context.Context, name string) (domain.Consumer, bool, error) {
	if err := domain.CheckConsumerName(name); err != nil {
		return domain.Consumer{}, false, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.catchUpLocked(ctx); err != nil {
		return domain.Consumer{}, false, err
	}
	c, ok := l.fold.Get(name)
	return c, ok, nil
}

// List returns every consumer, by name, as of the store now.
func (l *Ledger) List(ctx context.Context) ([]domain.Consumer, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.catchUpLocked(ctx); err != nil {
		return nil, err
	}
	return l.fold.All(), nil
}

// Ack records that consumer name processed everything through position and
// returns its position now. A repeated or late acknowledgement records
// nothing.
func (l *Ledger) Ack(ctx context.Context, name string, position uint64) (uint64, error) {
	var now uint64
	err := l.record(ctx, func() ([]domain.ConsumerEvent, error) {
		rec, pos, err := l.fold.Ack(name, position, l.clock.Now())
		now = pos
		return rec, err
	})
	return now, err
}

// Delete forgets consumer name.
func (l *Ledger) Delete(ctx context.Context, name string) error {
	return l.record(ctx, func() ([]domain.ConsumerEvent, error) { return l.fold.Delete(name) })
}

// record decides on the current state and appends the decision at the
// stream's revision; when another process appended first, it reads that and
// decides again.
func (l *Ledger) record(ctx context.Context, decide func() ([]domain.ConsumerEvent, error)) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	// A conflict means another writer's record landed: progress for
	// someone, so this only loops while others keep winning.
	const attempts = 64
	for range attempts {
		if err := l.catchUpLocked(ctx); err != nil {
			return err
		}
		events, err := decide()
		if err != nil || len(events) == 0 {
			return err
		}
		data, err := l.codec.EncodeConsumers(events...)
		if err != nil {
			return err
		}
		expected := eventstore.NoStream()
		if l.next > 0 {
			expected = eventstore.Exact(l.next - 1)
		}
		_, err = l.store.Append(ctx, streams.Consumers, expected, data...)
		if errors.Is(err, eventstore.ErrWrongExpectedRevision) {
			continue
		}
		if err != nil {
			return fmt.Errorf("record in %s: %w", streams.Consumers, err)
		}
		for _, e := range events {
			l.fold.Apply(e)
		}
		l.next += uint64(len(events))
		return nil
	}
	return fmt.Errorf("record in %s: other writers kept appending first (%d attempts): %w", streams.Consumers, attempts, domain.ErrUnavailable)
}
