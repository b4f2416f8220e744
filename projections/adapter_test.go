package projections

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
)

// The rules' tests run over stores and checkpoint files as the server
// does. adapters/projector, which does that I/O, imports this package, so
// these tests do it the same way here, in a few lines: read the store in
// global order, decode each record with the one decoder, feed the Auditor.

type AuditStore interface {
	Subscribe(ctx context.Context, filter eventstore.Filter, from eventstore.SubscribeFrom) (eventstore.Subscription, error)
}

type AuditOptions struct{ CheckpointPath string }

func Audit(ctx context.Context, store AuditStore, opts AuditOptions, progress func(done uint64)) (Report, error) {
	a := NewAuditor()
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
		return Report{}, err
	}
	defer sub.Close()
	for {
		item, err := sub.Recv(ctx)
		if err != nil {
			return Report{}, fmt.Errorf("audit: %w", err)
		}
		if item.CaughtUp {
			break
		}
		if item.Event != nil {
			a.Check(streams.Decode(*item.Event))
			if progress != nil && a.Records()%4096 == 0 {
				progress(a.Records())
			}
		}
	}
	rep := a.Report()
	if progress != nil {
		progress(a.Records())
	}
	return rep, nil
}

func ReadCheckpoint(path string) (*State, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return UnmarshalCheckpoint(data)
}

func WriteCheckpoint(path string, s *State) error {
	data, err := MarshalCheckpoint(s)
	if err != nil {
		return err
	}
	return writeFileAtomic(path, data)
}

func writeFileAtomic(path string, data []byte) error { return os.WriteFile(path, data, 0o600) }
