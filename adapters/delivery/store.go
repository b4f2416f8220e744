package delivery

import (
	"context"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
)

// Store is what the delivery engine needs of the event store.
type Store interface {
	Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error)
	ReadStream(ctx context.Context, stream string, from uint64, limit int) ([]eventstore.RecordedEvent, error)
	ReadStreamBackward(ctx context.Context, stream string, limit int) ([]eventstore.RecordedEvent, error)
}

// expectAfter is the expected revision of a stream holding n events.
func expectAfter(n uint64) eventstore.ExpectedRevision {
	if n == 0 {
		return eventstore.NoStream()
	}
	return eventstore.Exact(n - 1)
}

// readAll folds every event of stream, page by page; a missing stream is empty.
func readAll(ctx context.Context, s Store, stream string, fn func(eventstore.RecordedEvent) error) (uint64, error) {
	return readFrom(ctx, s, stream, 0, fn)
}
