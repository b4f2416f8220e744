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
	store     retainedStore
	seen      map[domain.PeerID]bool
	seenInbox map[domain.PeerID]bool
	seeded    map[domain.PeerID]bool // effects started from the projections snapshot
}

func newRetainedStart(store AuditStore) *retainedStart {
	s := &retainedStart{seen: map[domain.PeerID]bool{}, seenInbox: map[domain.PeerID]bool{}, seeded: map[domain.PeerID]bool{}}
	s.store, _ = store.(retainedStore)
	return s
}

func (s *retainedStart) before(ctx context.Context, a *projections.Auditor, rec domain.Record) error {
	switch rec.Kind {
	case domain.StreamOutbox, domain.StreamDelivery:
		return s.beforePeer(ctx, a, rec.Peer)
	case domain.StreamInbox:
		if s.store == nil || s.seenInbox[rec.Peer] {
			return nil
		}
		s.seenInbox[rec.Peer] = true
		tb, err := s.truncated(ctx, rec.Stream)
		if err == nil && tb > 0 && !s.seeded[rec.Peer] {
			a.InboxTruncatedWithoutSnapshot(rec.Stream, tb, "no projections snapshot names the peer")
		}
		return err
	}
	return nil
}

// seed starts the audit's effects of each peer whose inbox or outbox
// retention truncated from the store's projections snapshot, before any
// record: the removed records made some of them.
func (s *retainedStart) seed(ctx context.Context, a *projections.Auditor) error {
	if s.store == nil {
		return nil
	}
	db, err := s.store.ReadStream(ctx, streams.Database, 0, 1)
	var id string
	if err == nil && len(db) == 1 {
		id, _ = streams.DecodeDatabaseCreated(db[0])
	}
	if err := s.seedRegistry(ctx, a, id); err != nil {
		return err
	}
	recs, err := s.store.ReadStreamBackward(ctx, streams.ProjectionsSnapshot, 1)
	if err != nil || len(recs) == 0 {
		return nil // no snapshot: each inbox is checked as met
	}
	snap, err := trustedProjections(recs, nil, id)
	if err != nil {
		return nil // not trusted: not started from
	}
	at, _ := snap.Position()
	for _, v := range snap.Peers() {
		peer := domain.PeerID(v.PeerID)
		inTB, err := s.truncated(ctx, streams.Inbox(peer))
		if err != nil {
			return err
		}
		outTB, err := s.truncated(ctx, streams.Outbox(peer))
		if err != nil {
			return err
		}
		if inTB == 0 && outTB == 0 {
			continue
		}
		a.EffectsFromSnapshot(peer, snap, at)
		a.InboxTruncated(streams.Inbox(peer), inTB)
		s.seeded[peer] = true
	}
	return nil
}

func (s *retainedStart) beforePeer(ctx context.Context, a *projections.Auditor, peer domain.PeerID) error {
	if s.store == nil || s.seen[peer] {
		return nil
	}
	s.seen[peer] = true
	outbox, delivery := streams.Outbox(peer), streams.Delivery(peer)
	tb, err := s.truncated(ctx, outbox)
	if err != nil {
		return err
	}
	a.OutboxTruncated(peer, outbox, tb)
	if tb, err = s.truncated(ctx, delivery); err != nil || tb == 0 {
		return err
	}
	snap, why := s.snapshot(ctx, peer, tb)
	if why != "" {
		a.DeliveryTruncatedWithoutSnapshot(delivery, tb, why)
		return nil
	}
	a.DeliveryFromSnapshot(peer, delivery, snap.Outbox(), snap.Revision)
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

// snapshot returns the oldest trusted snapshot of peer's delivery stream
// that covers the truncated records, so that the audit checks as many of
// the kept records as it can (and the later snapshots against them), or
// why there is none.
func (s *retainedStart) snapshot(ctx context.Context, peer domain.PeerID, tb uint64) (streams.OutboxSnapshot, string) {
	var none streams.OutboxSnapshot
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
	why := "no snapshot"
	const page = 256
	for from := uint64(0); ; {
		recs, err := s.store.ReadStream(ctx, streams.DeliverySnapshot(peer), from, page)
		if err != nil {
			return none, fmt.Sprintf("%s (%v)", why, err)
		}
		for _, r := range recs {
			from = r.Revision + 1
			snap, err := streams.DecodeOutboxSnapshot(r)
			if err == nil {
				err = snap.Check(id, stream, last[0].Revision+1, true)
			}
			switch {
			case err != nil:
				why = err.Error()
			case snap.Revision < tb:
				why = fmt.Sprintf("the snapshots cover only the records before %d", snap.Revision)
			default:
				return snap, ""
			}
		}
		if len(recs) < page {
			return none, why
		}
	}
}
