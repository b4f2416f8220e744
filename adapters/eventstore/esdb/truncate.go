package esdb

import (
	"context"
	"errors"
	"fmt"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
)

// truncateAttempts bounds the tries of a truncation whose metadata write
// met another writer's, or whose outcome was unclear. Each conflict is
// another writer's success, and one stream has one owner in Postbox: a
// few concurrent writers at most.
const truncateAttempts = 16

// errMetadataConflict: the stream's metadata changed between reading and
// writing it; the truncation reads it again.
var errMetadataConflict = errors.New("stream metadata changed meanwhile")

// Truncate sets the stream's truncate-before ($tb) in its metadata stream
// ("$$" + stream) through the client's SetStreamMetadata, keeping the other
// metadata (max age, ACL, custom properties) as it was. The write expects
// the metadata stream's revision it read, so two writers never undo each
// other's change; a lower point than the current one is not written (the
// server would show truncated events again until a scavenge), nor is one
// past the end (the server keeps any value and would hide later events).
//
// The server hides the events from reads at once but keeps them in $all,
// and on disk, until a scavenge; subscriptions skip them (see Subscribe).
func (s *Store) Truncate(ctx context.Context, stream string, before uint64) error {
	if s.isClosed() {
		return fmt.Errorf("esdb: truncate %q: %w", stream, eventstore.ErrClosed)
	}
	ctx, cancel := s.bind(ctx)
	defer cancel()
	var wait backoff
	for attempt := 1; ; attempt++ {
		err := s.withRef(ctx, func(ref *clientRef) error {
			return s.truncateOnce(ctx, ref, stream, before)
		})
		if err == nil {
			return nil
		}
		if !errors.Is(err, errMetadataConflict) && !unclear(err) || attempt >= truncateAttempts || ctx.Err() != nil || s.isClosed() {
			return fmt.Errorf("esdb: truncate %q: %w", stream, err)
		}
		s.logger.Info("truncation retried", "stream", stream, "attempt", attempt, "err", err)
		if err := wait.wait(ctx); err != nil {
			return fmt.Errorf("esdb: truncate %q: %w", stream, err)
		}
	}
}

func (s *Store) truncateOnce(ctx context.Context, ref *clientRef, stream string, before uint64) error {
	meta, metaRev, err := s.readMetadata(ctx, ref, stream)
	if err != nil {
		return err
	}
	current := truncatePoint(meta)
	head, err := s.readStream(ctx, ref, stream, esdb.Backwards, esdb.End{}, 1)
	if err != nil {
		return err
	}
	var last uint64
	if len(head) == 1 {
		last = head[0].Revision
	} else {
		// Reads hide truncated events: a stream whose every event is
		// truncated reads as empty, not as missing, and its truncation
		// point, one past its last revision (Truncate never writes it
		// further), tells the last revision. Read again, as the point may
		// have risen since the first read.
		if meta, metaRev, err = s.readMetadata(ctx, ref, stream); err != nil {
			return err
		}
		current = truncatePoint(meta)
		if current == 0 {
			return fmt.Errorf("the stream reads as empty without a truncation point: %w", eventstore.ErrStreamNotFound)
		}
		last = current - 1
	}
	if before <= current {
		return nil
	}
	if before > last+1 {
		return fmt.Errorf("before %d, the last revision is %d: %w", before, last, eventstore.ErrTruncateBeyondEnd)
	}
	var expected esdb.ExpectedRevision = esdb.NoStream{}
	if metaRev != nil {
		expected = esdb.Revision(*metaRev)
	}
	meta.SetTruncateBefore(before)
	err = guard(func() error {
		_, err := ref.client.SetStreamMetadata(leaderOnly(ctx), stream, esdb.AppendToStreamOptions{
			ExpectedRevision: expected,
			Deadline:         callDeadline(ctx),
		}, *meta)
		return err
	})
	if err == nil {
		return nil
	}
	if _, _, conflict := parseConflict(err); conflict {
		return fmt.Errorf("%w: %w", errMetadataConflict, err)
	}
	return s.mapError(ctx, ref, err)
}

// TruncatedBefore returns the stream's truncate-before, 0 if it has none.
func (s *Store) TruncatedBefore(ctx context.Context, stream string) (uint64, error) {
	if s.isClosed() {
		return 0, fmt.Errorf("esdb: truncation point of %q: %w", stream, eventstore.ErrClosed)
	}
	ctx, cancel := s.bind(ctx)
	defer cancel()
	var tb uint64
	err := s.withRef(ctx, func(ref *clientRef) error {
		// The stream first: a missing or deleted one says so, as a read
		// would, whatever its metadata holds.
		if _, err := s.readStream(ctx, ref, stream, esdb.Backwards, esdb.End{}, 1); err != nil {
			return err
		}
		meta, _, err := s.readMetadata(ctx, ref, stream)
		tb = truncatePoint(meta)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("esdb: truncation point of %q: %w", stream, err)
	}
	return tb, nil
}

// readMetadata returns the stream's metadata and the revision of the event
// that holds it (nil when it has none). The server keeps only the last
// event of a metadata stream readable (its $maxCount is 1); the read asks
// for the last one anyway.
func (s *Store) readMetadata(ctx context.Context, ref *clientRef, stream string) (*esdb.StreamMetadata, *uint64, error) {
	evs, err := s.readStream(ctx, ref, "$$"+stream, esdb.Backwards, esdb.End{}, 1)
	if errors.Is(err, eventstore.ErrStreamNotFound) || err == nil && len(evs) == 0 {
		return &esdb.StreamMetadata{}, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read the metadata: %w", err)
	}
	meta, err := esdb.StreamMetadataFromJson(evs[0].Data)
	if err != nil {
		return nil, nil, fmt.Errorf("parse the metadata of %q: %w", stream, err)
	}
	rev := evs[0].Revision
	return meta, &rev, nil
}

func truncatePoint(meta *esdb.StreamMetadata) uint64 {
	if meta == nil || meta.TruncateBefore() == nil {
		return 0
	}
	return *meta.TruncateBefore()
}

// truncationPoints remembers, for one subscription, the truncate-before of
// each stream it has met, looked up once: $all still holds truncated
// events until a scavenge, and the subscription skips them.
type truncationPoints map[string]uint64

// hidden reports whether e lies below its stream's truncation point.
func (sub *subscription) hidden(ctx context.Context, e *eventstore.RecordedEvent) (bool, error) {
	tb, ok := sub.tbs[e.Stream]
	if !ok {
		s := sub.store
		ref, err := s.acquire()
		if err != nil {
			return false, err
		}
		meta, _, err := s.readMetadata(ctx, ref, e.Stream)
		s.release(ref)
		if err != nil {
			return false, fmt.Errorf("look up the truncation point of %q: %w", e.Stream, err)
		}
		tb = truncatePoint(meta)
		if sub.tbs == nil {
			sub.tbs = truncationPoints{}
		}
		sub.tbs[e.Stream] = tb
	}
	return e.Revision < tb, nil
}
