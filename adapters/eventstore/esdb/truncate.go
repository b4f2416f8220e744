package esdb

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

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
	md, err := s.readMetadata(ctx, ref, stream)
	if err != nil {
		return err
	}
	current := md.truncateBefore()
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
		if md, err = s.readMetadata(ctx, ref, stream); err != nil {
			return err
		}
		current = md.truncateBefore()
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
	// The client's own type carries the rest of the metadata over; a
	// document it cannot read is not overwritten.
	meta := &esdb.StreamMetadata{}
	var expected esdb.ExpectedRevision = esdb.NoStream{}
	if md.raw != nil {
		if meta, err = esdb.StreamMetadataFromJson(md.raw); err != nil {
			return fmt.Errorf("the stream's metadata cannot be read, so it is left as it is (not truncated): %w", err)
		}
		expected = esdb.Revision(md.rev)
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
		md, err := s.readMetadata(ctx, ref, stream)
		tb = md.truncateBefore()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("esdb: truncation point of %q: %w", stream, err)
	}
	return tb, nil
}

// streamMeta is a stream's metadata document as stored, and the revision of
// the event that holds it in the metadata stream; raw is nil when there is
// none.
type streamMeta struct {
	raw []byte
	rev uint64
}

// readMetadata reads the stream's metadata. The server keeps only the last
// event of a metadata stream readable (its $maxCount is 1); the read asks
// for the last one anyway.
func (s *Store) readMetadata(ctx context.Context, ref *clientRef, stream string) (streamMeta, error) {
	evs, err := s.readStream(ctx, ref, "$$"+stream, esdb.Backwards, esdb.End{}, 1)
	if errors.Is(err, eventstore.ErrStreamNotFound) || err == nil && len(evs) == 0 {
		return streamMeta{}, nil
	}
	if err != nil {
		return streamMeta{}, fmt.Errorf("read the metadata: %w", err)
	}
	raw := evs[0].Data
	if raw == nil {
		raw = []byte{}
	}
	return streamMeta{raw: raw, rev: evs[0].Revision}, nil
}

func (md streamMeta) truncateBefore() uint64 { return truncateBefore(md.raw) }

// truncateBefore reads $tb from a metadata document, 0 when there is none.
// It reads nothing else, so that metadata the client's own parser refuses
// (an ACL shape it does not know, say) cannot stop a subscription; a
// document that is not JSON, or a $tb that is not a non-negative integer,
// counts as none, as the server then falls back to empty metadata.
func truncateBefore(raw []byte) uint64 {
	var doc struct {
		TB json.RawMessage `json:"$tb"`
	}
	if len(raw) == 0 || json.Unmarshal(raw, &doc) != nil {
		return 0
	}
	// A JSON integer, written as digits only.
	tb, err := strconv.ParseUint(string(bytes.TrimSpace(doc.TB)), 10, 64)
	if err != nil {
		return 0
	}
	return tb
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
		md, err := s.readMetadata(ctx, ref, e.Stream)
		s.release(ref)
		if err != nil {
			return false, fmt.Errorf("look up the truncation point of %q: %w", e.Stream, err)
		}
		tb = md.truncateBefore()
		if sub.tbs == nil {
			sub.tbs = truncationPoints{}
		}
		sub.tbs[e.Stream] = tb
	}
	return e.Revision < tb, nil
}
