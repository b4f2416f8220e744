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

// Retention compacts the peers stream behind a snapshot of the registry
// (registry.Compact): a reader that has not applied the removed records
// starts its registry from that snapshot instead.

// peersStore is what starting from a registry snapshot needs of the store;
// both stores have it.
type peersStore interface {
	TruncatedBefore(ctx context.Context, stream string) (uint64, error)
	ReadStream(ctx context.Context, stream string, from uint64, limit int) ([]eventstore.RecordedEvent, error)
}

// peersStart is the snapshot a reader of the peers stream, truncated
// before tb, starts from: the fold of the records before covers, and the
// position of the last record it covers (or of the first kept, if that
// one is gone).
type peersStart struct {
	peers  *domain.Peers
	covers uint64
	at     domain.Position
}

// peersSnapshot finds a snapshot of the peers stream that can be trusted
// (this format and database, covering no more records than the stream
// holds) and covers every record truncated before tb: the oldest such
// (oldest true: the audit checks as many records as it can) or the
// latest. why says why there is none.
func peersSnapshot(ctx context.Context, s peersStore, db string, tb uint64, oldest bool) (peersStart, string) {
	var found peersStart
	first, err := s.ReadStream(ctx, streams.Peers, tb, 1)
	if err != nil || len(first) == 0 {
		return found, fmt.Sprintf("its first kept record is unreadable (%v)", err)
	}
	length, err := peersLength(ctx, s, tb)
	if err != nil {
		return found, err.Error()
	}
	why := "no snapshot"
	const page = 64
	for from := uint64(0); ; {
		recs, err := s.ReadStream(ctx, streams.PeersSnapshot, from, page)
		if errors.Is(err, eventstore.ErrStreamNotFound) {
			return found, why
		}
		if err != nil {
			return found, fmt.Sprintf("%s (%v)", why, err)
		}
		for _, r := range recs {
			from = r.Revision + 1
			start, err := trustedPeers(r, db, length, tb)
			if err != nil {
				why = err.Error()
				continue
			}
			found = start
			if oldest {
				break
			}
		}
		if (oldest && found.peers != nil) || len(recs) < page {
			break
		}
	}
	if found.peers == nil {
		return found, why
	}
	// The position to start from: the last record the snapshot covers,
	// or the first one kept when that one is gone.
	at, err := s.ReadStream(ctx, streams.Peers, max(found.covers-1, tb), 1)
	if err != nil || len(at) == 0 {
		return peersStart{}, fmt.Sprintf("the records the snapshot covers are unreadable (%v)", err)
	}
	found.at = domain.Position{Commit: at[0].Position.Commit, Prepare: at[0].Position.Prepare}
	return found, ""
}

// peersLength is how many records the peers stream holds (the revision
// after its last), reading on from from.
func peersLength(ctx context.Context, s peersStore, from uint64) (uint64, error) {
	const page = 1024
	for {
		recs, err := s.ReadStream(ctx, streams.Peers, from, page)
		if err != nil {
			return 0, fmt.Errorf("the stream is unreadable (%w)", err)
		}
		if len(recs) > 0 {
			from = recs[len(recs)-1].Revision + 1
		}
		if len(recs) < page {
			return from, nil
		}
	}
}

// trustedPeers reads a peers snapshot record, or says why it cannot be
// started from on a stream of length records truncated before tb.
func trustedPeers(r eventstore.RecordedEvent, db string, length, tb uint64) (peersStart, error) {
	snap, err := streams.DecodePeersSnapshot(r)
	if err != nil {
		return peersStart{}, err
	}
	if err := snap.Check(db, streams.Peers, length, true); err != nil {
		return peersStart{}, err
	}
	if snap.Revision < tb {
		return peersStart{}, fmt.Errorf("the snapshots cover only the records before %d", snap.Revision)
	}
	img, err := snap.Image()
	if err != nil {
		return peersStart{}, err
	}
	peers, err := domain.PeersFromImage(img)
	if err != nil {
		return peersStart{}, err
	}
	return peersStart{peers: peers, covers: snap.Revision}, nil
}

// peersTruncated is where retention truncated the peers stream (0: not,
// or no such stream).
func peersTruncated(ctx context.Context, s peersStore) (uint64, error) {
	tb, err := s.TruncatedBefore(ctx, streams.Peers)
	if errors.Is(err, eventstore.ErrStreamNotFound) || errors.Is(err, eventstore.ErrStreamDeleted) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("truncation point of %s: %w", streams.Peers, err)
	}
	return tb, nil
}

// seedRegistry starts the audit's registry, before any record, from the
// oldest registry snapshot covering what retention removed of the peers
// stream; without one, it reports the truncation.
func (s *retainedStart) seedRegistry(ctx context.Context, a *projections.Auditor, db string) error {
	ps, ok := s.store.(peersStore)
	if !ok {
		return nil
	}
	tb, err := peersTruncated(ctx, ps)
	if err != nil || tb == 0 {
		return err
	}
	start, why := peersSnapshot(ctx, ps, db, tb, true)
	if why != "" {
		a.PeersTruncatedWithoutSnapshot(streams.Peers, tb, why)
		return nil
	}
	a.RegistryFromSnapshot(streams.Peers, start.peers, start.covers, start.at)
	return nil
}

// checkPeersSnapshot has the audit compare a peers snapshot record with
// the fold of the records it covers. One the registry would not trust
// (another format or stream, unreadable) is not checked.
func checkPeersSnapshot(a *projections.Auditor, r eventstore.RecordedEvent) {
	snap, err := streams.DecodePeersSnapshot(r)
	if err != nil || snap.Format != streams.SnapshotFormat || snap.Stream != streams.Peers {
		return
	}
	img, err := snap.Image()
	if err != nil {
		return
	}
	a.CheckPeersSnapshot(projections.PeersSnapshot{Record: r.Stream, RecordRevision: r.Revision,
		DatabaseID: snap.DatabaseID, Covers: snap.Revision, Fold: img})
}

// seedRegistry starts the state's registry from the latest registry
// snapshot when retention removed records of the peers stream the state
// has not applied (a checkpoint older than the compaction, or none): a
// subscription would never deliver them.
func (l *Live) seedRegistry(ctx context.Context) {
	ps, ok := l.store.(peersStore)
	if !ok {
		return
	}
	tb, err := peersTruncated(ctx, ps)
	if err != nil {
		l.logger.Warn("reading where the peers stream was compacted failed", "err", err)
		return
	}
	l.mu.Lock()
	pos, applied := l.state.Position()
	db, from := l.state.DatabaseID(), l.state.PeersFrom()
	l.mu.Unlock()
	if tb == 0 || from >= tb {
		return // nothing removed, or started from a snapshot covering it
	}
	first, err := ps.ReadStream(ctx, streams.Peers, tb, 1)
	if err == nil && len(first) > 0 && applied &&
		!pos.Less(domain.Position{Commit: first[0].Position.Commit, Prepare: first[0].Position.Prepare}) {
		return // every removed record was applied
	}
	start, why := peersSnapshot(ctx, ps, db, tb, false)
	if why != "" {
		l.logger.Warn("the peers stream was compacted past the projections' position and no snapshot covers it; peers registered before may be missing from them",
			"truncated_before", tb, "why", why)
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if now, ok := l.state.Position(); ok != applied || now != pos {
		return // applied more meanwhile: the next subscription looks again
	}
	l.state.SeedRegistry(start.peers, start.covers)
	l.logger.Info("projections' registry started from the peers stream's snapshot", "covers", start.covers)
}
