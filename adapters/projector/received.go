package projector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	"github.com/harmony-postbox/postbox/projections"
)

// RetentionStore is what retention of received events needs of the store:
// both stores have it.
type RetentionStore interface {
	ReadStream(ctx context.Context, stream string, from uint64, limit int) ([]eventstore.RecordedEvent, error)
	ReadStreamBackward(ctx context.Context, stream string, limit int) ([]eventstore.RecordedEvent, error)
	Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error)
	Truncate(ctx context.Context, stream string, before uint64) error
	TruncatedBefore(ctx context.Context, stream string) (uint64, error)
}

// Acknowledgements lists the durable consumers and how far each has
// acknowledged (adapters/consumers).
type Acknowledgements interface {
	List(ctx context.Context) ([]domain.Consumer, error)
}

// ReceivedRetention removes received events (each peer's inbox stream) once
// every durable consumer acknowledged them and they are older than Keep;
// with no consumers, once they are older than Keep. Before it removes any
// it writes what the removed records were needed for into the store: the
// projections' state (guilds, invites) and the peer's inbox fold (the last
// sender sequence, which drops repeated pushes). The last record of each
// inbox stays, so that a snapshot's revision can be checked.
//
// With Snapshots it also writes a projections snapshot every pass while
// the store moves (Keep 0: only that): retention of delivered events
// removes outbox events older than its duration, which are then in a
// snapshot written since (sent invites are folded from the outbox).
type ReceivedRetention struct {
	Store     RetentionStore
	Live      *Live
	Consumers Acknowledgements
	Clock     domain.Clock
	Keep      time.Duration
	// Every is how often a pass runs (0: a quarter of Keep, at most a
	// minute).
	Every     time.Duration
	Snapshots bool
	Logger    *slog.Logger
	Codec     *streams.Codec

	written  domain.Position // where the last projections snapshot written is
	wroteAny bool
}

// receivedReadLimit bounds the records one pass reads of one inbox: a long
// backlog of expired events goes over several passes.
const receivedReadLimit = 1 << 16

// Run removes expired received events every so often until ctx ends.
func (r *ReceivedRetention) Run(ctx context.Context) {
	every := r.Every
	if every <= 0 {
		every = min(max(r.Keep/4, 10*time.Millisecond), time.Minute)
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := r.Pass(ctx); err != nil && ctx.Err() == nil {
			r.Logger.Warn("removing received events failed; tried again later", "err", err)
		}
	}
}

// Pass removes what has expired now.
func (r *ReceivedRetention) Pass(ctx context.Context) error {
	l := r.Live
	l.mu.Lock()
	pos, applied := l.state.Position()
	db := l.state.DatabaseID()
	inboxes := l.state.Inboxes()
	changed := l.lastChange
	var snap projections.Snapshot
	if applied {
		snap = l.state.Snapshot()
	}
	l.mu.Unlock()
	if !applied || db == "" {
		return nil
	}
	if err := r.retainInboxes(ctx, pos, db, inboxes, snap); err != nil {
		return err
	}
	if r.Snapshots && (!r.wroteAny || r.written.Less(changed)) {
		return r.writeProjections(ctx, pos, snap)
	}
	return nil
}

func (r *ReceivedRetention) retainInboxes(ctx context.Context, pos domain.Position, db string, inboxes map[domain.PeerID]domain.Inbox, snap projections.Snapshot) error {
	if r.Keep <= 0 {
		return nil
	}
	// Only records the projections' state at pos has folded can go, and
	// only those every durable consumer acknowledged.
	limit := uint64(math.MaxUint64)
	consumers, err := r.Consumers.List(ctx)
	if err != nil {
		return fmt.Errorf("durable consumers: %w", err)
	}
	for _, c := range consumers {
		limit = min(limit, c.Position)
	}
	cutoff := r.Clock.Now().Add(-r.Keep)
	for peer, in := range inboxes {
		if err := r.retainInbox(ctx, peer, in.Count, limit, cutoff, db, pos, snap); err != nil {
			return fmt.Errorf("inbox of %s: %w", peer, err)
		}
	}
	return nil
}

func (r *ReceivedRetention) retainInbox(ctx context.Context, peer domain.PeerID, count, limit uint64, cutoff time.Time,
	db string, pos domain.Position, snap projections.Snapshot,
) error {
	stream := streams.Inbox(peer)
	tb, err := r.Store.TruncatedBefore(ctx, stream)
	if errors.Is(err, eventstore.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if count <= tb+1 {
		return nil // nothing but the last record
	}
	fold, from, err := r.inboxSnapshot(ctx, peer, db, tb)
	if err != nil {
		return err
	}
	cut := tb
	const page = 1024
	for next, read := tb, 0; read < receivedReadLimit; {
		recs, err := r.Store.ReadStream(ctx, stream, next, page)
		if err != nil {
			return err
		}
		for _, rec := range recs {
			next = rec.Revision + 1
			at := domain.Position{Commit: rec.Position.Commit, Prepare: rec.Position.Prepare}
			if rec.Revision+1 >= count || pos.Less(at) || rec.Position.Commit > limit || rec.Created.After(cutoff) {
				read = receivedReadLimit
				break
			}
			if rec.Revision >= from {
				received, err := streams.DecodeReceivedRecord(rec)
				if err != nil {
					return err
				}
				for _, r := range received {
					fold.Apply(rec.Revision, r.Domain())
				}
			}
			cut = rec.Revision + 1
			read++
		}
		if len(recs) < page {
			break
		}
	}
	if cut <= tb {
		return nil
	}
	// What the removed records were needed for, first: the projections'
	// state (once per pass), then the peer's inbox fold up to the cut.
	if err := r.writeProjections(ctx, pos, snap); err != nil {
		return err
	}
	data, err := r.Codec.EncodeSnapshot(streams.NewInboxSnapshot(db, stream, cut, fold))
	if err != nil {
		return err
	}
	res, err := r.Store.Append(ctx, streams.InboxSnapshot(peer), eventstore.Any(), data)
	if err != nil {
		return fmt.Errorf("append to %s: %w", streams.InboxSnapshot(peer), err)
	}
	if err := r.Store.Truncate(ctx, stream, cut); err != nil {
		return err
	}
	// Older inbox snapshots are of no more use.
	if rev := res.NextExpectedRevision; rev > 0 {
		if err := r.Store.Truncate(ctx, streams.InboxSnapshot(peer), rev); err != nil {
			r.Logger.Warn("compacting inbox snapshots failed", "peer", peer, "err", err)
		}
	}
	return nil
}

// inboxSnapshot returns the fold of peer's inbox records before from: its
// latest snapshot, which covers at least the records truncated before tb,
// or (none yet) an empty fold from 0.
func (r *ReceivedRetention) inboxSnapshot(ctx context.Context, peer domain.PeerID, db string, tb uint64) (domain.Inbox, uint64, error) {
	if tb == 0 {
		return domain.Inbox{}, 0, nil
	}
	recs, err := r.Store.ReadStreamBackward(ctx, streams.InboxSnapshot(peer), 1)
	if err != nil || len(recs) == 0 {
		return domain.Inbox{}, 0, fmt.Errorf("truncated before %d without an inbox snapshot (%v)", tb, err)
	}
	snap, err := streams.DecodeInboxSnapshot(recs[0])
	if err != nil {
		return domain.Inbox{}, 0, err
	}
	if err := snap.Check(db, streams.Inbox(peer), snap.Revision, true); err != nil || snap.Revision < tb {
		return domain.Inbox{}, 0, fmt.Errorf("truncated before %d, the inbox snapshot covers %d (%v)", tb, snap.Revision, err)
	}
	return snap.Inbox(), snap.Revision, nil
}

// writeProjections writes the projections' state at pos into the store,
// unless it was written already.
func (r *ReceivedRetention) writeProjections(ctx context.Context, pos domain.Position, snap projections.Snapshot) error {
	if r.wroteAny && r.written == pos {
		return nil
	}
	raw, err := snap.Marshal()
	if err != nil {
		return err
	}
	data, err := r.Codec.EncodeSnapshot(json.RawMessage(raw))
	if err != nil {
		return err
	}
	res, err := r.Store.Append(ctx, streams.ProjectionsSnapshot, eventstore.Any(), data)
	if err != nil {
		return fmt.Errorf("append to %s: %w", streams.ProjectionsSnapshot, err)
	}
	r.written, r.wroteAny = pos, true
	// The latest one is the one read: older ones go.
	if rev := res.NextExpectedRevision; rev > 0 {
		if err := r.Store.Truncate(ctx, streams.ProjectionsSnapshot, rev); err != nil {
			r.Logger.Warn("compacting projections snapshots failed", "err", err)
		}
	}
	return nil
}

// storeSnapshot returns the latest projections snapshot in the store that
// can be trusted: of database id, at a position before its own record's;
// nil if none (one that cannot be trusted is ignored with a warning).
func storeSnapshot(ctx context.Context, store any, id string, logger *slog.Logger) *projections.State {
	rs, ok := store.(interface {
		ReadStreamBackward(ctx context.Context, stream string, limit int) ([]eventstore.RecordedEvent, error)
	})
	if !ok {
		return nil
	}
	recs, err := rs.ReadStreamBackward(ctx, streams.ProjectionsSnapshot, 1)
	if errors.Is(err, eventstore.ErrStreamNotFound) || (err == nil && len(recs) == 0) {
		return nil
	}
	s, err := trustedProjections(recs, err, id)
	if err != nil {
		logger.Warn("projections snapshot ignored", "err", err)
		return nil
	}
	return s
}

func trustedProjections(recs []eventstore.RecordedEvent, err error, id string) (*projections.State, error) {
	if err != nil {
		return nil, err
	}
	r := recs[0]
	if r.Type != streams.TypeSnapshot {
		return nil, fmt.Errorf("%s@%d: record of type %q", r.Stream, r.Revision, r.Type)
	}
	s, err := projections.UnmarshalCheckpoint(r.Data)
	if err != nil {
		return nil, err
	}
	pos, applied := s.Position()
	switch {
	case s.DatabaseID() != id || id == "":
		return nil, fmt.Errorf("a snapshot of database %q, this is %q", s.DatabaseID(), id)
	case !applied || !pos.Less(domain.Position{Commit: r.Position.Commit, Prepare: r.Position.Prepare}):
		return nil, fmt.Errorf("a snapshot at position %d, not before its own record at %d", pos.Commit, r.Position.Commit)
	}
	return s, nil
}
