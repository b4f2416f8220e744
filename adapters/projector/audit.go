package projector

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/projections"
)

// AuditStore is what Audit needs of the event store.
type AuditStore interface {
	Subscribe(ctx context.Context, filter eventstore.Filter, from eventstore.SubscribeFrom) (eventstore.Subscription, error)
}

// AuditOptions tunes Audit.
type AuditOptions struct {
	// CheckpointPath, if set and the file exists, is a checkpoint of the
	// live projections to compare with the replay.
	CheckpointPath string
}

// progressEvery is how many records pass between progress calls.
const progressEvery = 4096

// Audit replays every stream from the start, in global order, through
// projections.Auditor, which checks the invariants of the delivery engine
// as of each record. It stops once it has read everything stored when it
// began. progress, if not nil, is called now and then with the number of
// records read. An error means the audit could not run; what it found is
// in the Report.
func Audit(ctx context.Context, store AuditStore, opts AuditOptions, progress func(done uint64)) (projections.Report, error) {
	a := projections.NewAuditor()
	start := newRetainedStart(store)
	if err := start.seed(ctx, a); err != nil {
		return projections.Report{}, err
	}
	// Read the checkpoint before subscribing: a running server may rewrite
	// it, and its position must not be past the end of what is replayed.
	if opts.CheckpointPath != "" {
		cp, err := ReadCheckpoint(opts.CheckpointPath)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			a.CheckpointUnreadable(opts.CheckpointPath, err)
		default:
			a.CompareCheckpoint(opts.CheckpointPath, cp)
		}
	}
	sub, err := store.Subscribe(ctx, eventstore.Filter{}, eventstore.FromStart())
	if err != nil {
		return projections.Report{}, fmt.Errorf("audit: subscribe: %w", err)
	}
	defer sub.Close()
	for {
		item, err := sub.Recv(ctx)
		if err != nil {
			return projections.Report{}, fmt.Errorf("audit: read after %d records: %w", a.Records(), err)
		}
		if item.CaughtUp {
			break
		}
		if item.Event == nil {
			continue
		}
		rec := streams.Decode(*item.Event)
		if err := start.before(ctx, a, rec); err != nil {
			return projections.Report{}, err
		}
		a.Check(rec)
		if err := checkSnapshot(ctx, start, a, *item.Event); err != nil {
			return projections.Report{}, err
		}
		if progress != nil && a.Records()%progressEvery == 0 {
			progress(a.Records())
		}
	}
	report := a.Report()
	if progress != nil {
		progress(a.Records())
	}
	return report, nil
}

// checkSnapshot has the audit compare a delivery snapshot record with the
// fold of the records it covers. A snapshot of another format, or naming
// another stream, is one the engine would not trust either: not checked.
func checkSnapshot(ctx context.Context, start *retainedStart, a *projections.Auditor, r eventstore.RecordedEvent) error {
	if r.Stream == streams.PeersSnapshot {
		checkPeersSnapshot(a, r)
		return nil
	}
	name, ok := strings.CutPrefix(r.Stream, streams.DeliverySnapshotPrefix)
	if !ok {
		return nil
	}
	peer := streams.PeerID(name)
	snap, err := streams.DecodeOutboxSnapshot(r)
	if err != nil || snap.Format != streams.SnapshotFormat || snap.Stream != streams.Delivery(peer) {
		return nil // ignored, as the engine ignores it
	}
	if err := start.beforePeer(ctx, a, peer); err != nil {
		return err
	}
	a.CheckDeliverySnapshot(peer, projections.DeliverySnapshot{Record: r.Stream, RecordRevision: r.Revision,
		DatabaseID: snap.DatabaseID, Stream: snap.Stream, Covers: snap.Revision, Fold: snap.Outbox()})
	return nil
}
