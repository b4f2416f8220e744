package projector

import (
	"context"
	"errors"
	"fmt"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	"github.com/harmony-postbox/postbox/projections"
)

// retainedStore is what the audit reads of a store whose streams
// retention may have truncated; both stores have it.
type retainedStore interface {
	TruncatedBefore(ctx context.Context, stream string) (uint64, error)
	ReadStreamBackward(ctx context.Context, stream string, limit int) ([]eventstore.RecordedEvent, error)
	ReadStream(ctx context.Context, stream string, from uint64, limit int) ([]eventstore.RecordedEvent, error)
}

// retainedStart tells the audit, the first time it meets one of a peer's
// sending streams, where retention truncated them: the outbox's first kept
// event, and the delivery snapshot to start the delivery rules from.
type retainedStart struct {
	store retainedStore
	seen  map[domain.PeerID]bool
}

func (s *retainedStart) before(ctx context.Context, a *projections.Auditor, rec domain.Record) error {
	if s.store == nil || (rec.Kind != domain.StreamOutbox && rec.Kind != domain.StreamDelivery) || s.seen[rec.Peer] {
		return nil
	}
	s.seen[rec.Peer] = true
	outbox, delivery := streams.Outbox(rec.Peer), streams.Delivery(rec.Peer)
	tb, err := s.truncated(ctx, outbox)
	if err != nil {
		return err
	}
	a.OutboxTruncated(rec.Peer, outbox, tb)
	if tb, err = s.truncated(ctx, delivery); err != nil || tb == 0 {
		return err
	}
	snap, why := s.snapshot(ctx, rec.Peer, tb)
	if why != "" {
		a.DeliveryTruncatedWithoutSnapshot(delivery, tb, why)
		return nil
	}
	a.DeliveryFromSnapshot(rec.Peer, delivery, snap.Outbox(), snap.Revision)
	return nil
}

func (s *retainedStart) truncated(ctx context.Context, stream string) (uint64, error) {
	tb, err := s.store.TruncatedBefore(ctx, stream)
	if errors.Is(err, eventstore.ErrStreamNotFound) || errors.Is(err, eventstore.ErrStreamDeleted) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("audit: truncation point of %s: %w", stream, err)
	}
	return tb, nil
}

// snapshot returns the latest snapshot of peer's delivery stream if it
// covers the truncated records, or why not.
func (s *retainedStart) snapshot(ctx context.Context, peer domain.PeerID, tb uint64) (streams.OutboxSnapshot, string) {
	var none streams.OutboxSnapshot
	recs, err := s.store.ReadStreamBackward(ctx, streams.DeliverySnapshot(peer), 1)
	if err != nil || len(recs) == 0 {
		return none, fmt.Sprintf("no snapshot (%v)", err)
	}
	snap, err := streams.DecodeOutboxSnapshot(recs[0])
	if err != nil {
		return none, err.Error()
	}
	db, err := s.store.ReadStream(ctx, streams.Database, 0, 1)
	var id string
	if err == nil && len(db) == 1 {
		id, _ = streams.DecodeDatabaseCreated(db[0])
	}
	stream := streams.Delivery(peer)
	last, err := s.store.ReadStreamBackward(ctx, stream, 1)
	if err != nil || len(last) == 0 {
		return none, fmt.Sprintf("the stream's last record is unreadable (%v)", err)
	}
	if err := snap.Check(id, stream, last[0].Revision+1, true); err != nil {
		return none, err.Error()
	}
	if snap.Revision < tb {
		return none, fmt.Sprintf("the latest snapshot covers only the records before %d", snap.Revision)
	}
	return snap, ""
}
