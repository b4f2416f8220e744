package streams

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
)

// IdentityStore is what DatabaseID needs of the store.
type IdentityStore interface {
	Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error)
	ReadStream(ctx context.Context, stream string, from uint64, limit int) ([]eventstore.RecordedEvent, error)
}

// DatabaseID returns the identity (the one reader and first writer of the
// database stream, for the projector and the engine's snapshots alike) of the database store holds: the ID in
// the first event of its database stream, which the first caller on a
// database writes (a random ID from random). Positions mean something only
// within one database, so whatever remembers one (the projections'
// checkpoint) records this ID beside it.
func DatabaseID(ctx context.Context, store IdentityStore, random io.Reader) (string, error) {
	for attempt := 0; ; attempt++ {
		recs, err := store.ReadStream(ctx, Database, 0, 1)
		switch {
		case err == nil && len(recs) > 0:
			return DecodeDatabaseCreated(recs[0])
		case err != nil && !errors.Is(err, eventstore.ErrStreamNotFound):
			return "", fmt.Errorf("read the database identity: %w", err)
		}
		var raw [16]byte
		if _, err := io.ReadFull(random, raw[:]); err != nil {
			return "", fmt.Errorf("database identity: %w", err)
		}
		id := hex.EncodeToString(raw[:])
		ev, err := NewCodec(random).EncodeDatabaseCreated(id)
		if err != nil {
			return "", err
		}
		_, err = store.Append(ctx, Database, eventstore.NoStream(), ev)
		switch {
		case err == nil:
			return id, nil
		case errors.Is(err, eventstore.ErrWrongExpectedRevision) && attempt == 0:
			// Another server wrote it first: read theirs.
		default:
			return "", fmt.Errorf("write the database identity: %w", err)
		}
	}
}
