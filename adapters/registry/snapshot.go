package registry

import (
	"context"
	"errors"
	"fmt"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// SnapshotEvery is how many records of the peers stream are written
// between two of its snapshots: a start reads at most about this many
// records of it, plus the snapshot.
const SnapshotEvery = 256

// Truncater is what compaction needs of the store besides Store: both
// stores have it (EventStoreDB's truncate-before).
type Truncater interface {
	Truncate(ctx context.Context, stream string, before uint64) error
}

// snapshotReader is what reading the latest snapshot needs of the store;
// a store without it is read from the start.
type snapshotReader interface {
	ReadStreamBackward(ctx context.Context, stream string, limit int) ([]eventstore.RecordedEvent, error)
}

// folded is the peers stream read: the fold of its records before next,
// how many records were read, and the revision the snapshot it started
// from covers (0: none).
type folded struct {
	peers      *domain.Peers
	next, read uint64
	snapshot   uint64
}

// errSnapshotUnusable: the peers stream does not hold the last record a
// snapshot covers (it ends before it, or was truncated past it).
var errSnapshotUnusable = errors.New("the peers stream does not hold the snapshot's last record")

// load folds the peers stream from its latest snapshot that can be
// trusted; one that cannot is ignored with a warning and the stream is
// folded from its start.
func (r *Registry) load(ctx context.Context) (folded, error) {
	if peers, snap, ok := r.latestSnapshot(ctx); ok {
		f, err := fold(ctx, r.store, peers, snap.Revision)
		if !errors.Is(err, errSnapshotUnusable) {
			f.snapshot = snap.Revision
			return f, err
		}
		r.logger.Warn("peers snapshot ignored; folding the peers stream instead",
			"err", fmt.Errorf("it covers %d records of %q: %w", snap.Revision, streams.Peers, err))
	}
	return fold(ctx, r.store, domain.NewPeers(), 0)
}

// fold folds the peers stream's records from revision from onto peers, the
// fold of those before it. With from > 0 it reads from the record before
// from, which compaction never removes: one read both checks that the
// stream holds every record the snapshot covers and goes on after them.
// From 0, a stream whose first records were removed is an error: folding
// what is left would lose peers.
func fold(ctx context.Context, store Store, peers *domain.Peers, from uint64) (folded, error) {
	const page = 1024
	f := folded{peers: peers, next: from}
	at := from - min(from, 1)
	for {
		batch, err := store.ReadStream(ctx, streams.Peers, at, page)
		if errors.Is(err, eventstore.ErrStreamNotFound) {
			if from > 0 {
				return f, errSnapshotUnusable
			}
			return f, nil
		}
		if err != nil {
			return f, fmt.Errorf("read %s: %w", streams.Peers, err)
		}
		if f.next == from {
			// Nothing read yet: the stream must start where the fold does.
			switch {
			case from > 0 && (len(batch) == 0 || batch[0].Revision != from-1):
				return f, errSnapshotUnusable
			case from == 0 && len(batch) > 0 && batch[0].Revision != 0:
				return f, fmt.Errorf("the %s stream starts at %d: its first records were removed, and no snapshot that can be trusted covers them",
					streams.Peers, batch[0].Revision)
			}
		}
		for _, rec := range batch {
			if rec.Revision < from {
				continue // the snapshot's last record, checked above
			}
			e, err := streams.DecodePeerEvent(rec)
			if err != nil {
				return f, fmt.Errorf("peers stream: %w", err)
			}
			if err := f.peers.Apply(e, rec.Created); err != nil {
				return f, fmt.Errorf("peers stream at %d: %w", rec.Revision, err)
			}
			f.next = rec.Revision + 1
			f.read++
		}
		if len(batch) < page {
			return f, nil
		}
		at = batch[len(batch)-1].Revision + 1
	}
}

// latestSnapshot returns the fold in the latest peers snapshot, if there is
// one of this format, stream and database; one that is not is ignored
// with a warning. Whether the stream holds the records it covers is
// fold's check.
func (r *Registry) latestSnapshot(ctx context.Context) (*domain.Peers, streams.PeersSnapshotRecord, bool) {
	var none streams.PeersSnapshotRecord
	sr, ok := r.store.(snapshotReader)
	if !ok {
		return nil, none, false
	}
	recs, err := sr.ReadStreamBackward(ctx, streams.PeersSnapshot, 1)
	if errors.Is(err, eventstore.ErrStreamNotFound) || (err == nil && len(recs) == 0) {
		return nil, none, false
	}
	ignore := func(err error) (*domain.Peers, streams.PeersSnapshotRecord, bool) {
		r.logger.Warn("peers snapshot ignored; folding the peers stream instead", "err", err)
		return nil, none, false
	}
	if err != nil {
		return ignore(err)
	}
	snap, err := streams.DecodePeersSnapshot(recs[0])
	if err != nil {
		return ignore(err)
	}
	if err := snap.Check(r.storedDatabaseID(ctx), streams.Peers, snap.Revision, true); err != nil {
		return ignore(err)
	}
	if snap.Revision == 0 {
		return nil, none, false // covers nothing
	}
	img, err := snap.Image()
	if err != nil {
		return ignore(err)
	}
	peers, err := domain.PeersFromImage(img)
	if err != nil {
		return ignore(err)
	}
	return peers, snap, true
}

// storedDatabaseID is the store's identity if it has one ("" if not):
// reading the registry writes nothing.
func (r *Registry) storedDatabaseID(ctx context.Context) string {
	recs, err := r.store.ReadStream(ctx, streams.Database, 0, 1)
	if err != nil || len(recs) == 0 {
		return ""
	}
	id, _ := streams.DecodeDatabaseCreated(recs[0])
	return id
}

// RecordsRead is how many records of the peers stream Load read (after
// the snapshot it started from): part of what a start costs.
func (r *Registry) RecordsRead() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.loadRead
}

// Compact writes a snapshot of the peers stream once it holds
// SnapshotEvery records after the latest one, then truncates the stream
// behind the snapshot before it: before the last record that one covers
// (kept, so that a reader can check the stream holds what a snapshot
// covers), and the snapshots before it. The records between the two
// snapshots stay, so that the audit starts from the older and checks the
// latest, the one a start reads, against them. Retention of delivered
// events calls it: without retention the peers stream keeps everything.
// The snapshot is the fold of what is stored, read as a start reads it,
// not the fold in memory: the two may differ in the times of this
// server's IDs (appended records are folded as of the time the caller
// gave, read ones as of when they were stored).
func (r *Registry) Compact(ctx context.Context, tr Truncater) error {
	sr, ok := r.store.(snapshotReader)
	if !ok {
		return nil
	}
	r.mu.Lock()
	next, snapshotAt, cut, every := r.next, r.snapshotAt, r.cut, r.snapshotEvery
	r.mu.Unlock()
	if next >= snapshotAt+every {
		f, err := r.load(ctx)
		if err != nil {
			return err
		}
		snapshotAt = f.snapshot
		if f.next > f.snapshot {
			db, err := streams.DatabaseID(ctx, r.store, r.rand)
			if err != nil {
				return err
			}
			data, err := r.codec.EncodeSnapshot(streams.NewPeersSnapshot(db, f.next, f.peers.Image()))
			if err != nil {
				return err
			}
			if _, err := r.store.Append(ctx, streams.PeersSnapshot, eventstore.Any(), data); err != nil {
				return fmt.Errorf("append to %s: %w", streams.PeersSnapshot, err)
			}
			snapshotAt = f.next
		}
		r.mu.Lock()
		r.snapshotAt = max(r.snapshotAt, snapshotAt)
		snapshotAt = r.snapshotAt
		r.mu.Unlock()
	}
	recs, err := sr.ReadStreamBackward(ctx, streams.PeersSnapshot, 2)
	if errors.Is(err, eventstore.ErrStreamNotFound) || (err == nil && len(recs) < 2) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", streams.PeersSnapshot, err)
	}
	prev, err := streams.DecodePeersSnapshot(recs[1])
	if err != nil || prev.Stream != streams.Peers {
		return nil // not one of ours: the next snapshot goes past it
	}
	// Never past the snapshot this registry read or wrote itself.
	before := min(prev.Revision, snapshotAt)
	if before <= 1 || before-1 <= cut {
		return nil
	}
	if err := tr.Truncate(ctx, streams.Peers, before-1); err != nil {
		return fmt.Errorf("compact %s: %w", streams.Peers, err)
	}
	r.mu.Lock()
	r.cut = max(r.cut, before-1)
	r.mu.Unlock()
	if err := tr.Truncate(ctx, streams.PeersSnapshot, recs[1].Revision); err != nil {
		return fmt.Errorf("compact %s: %w", streams.PeersSnapshot, err)
	}
	return nil
}
