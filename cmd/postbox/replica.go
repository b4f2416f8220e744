package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/harmony-postbox/postbox/adapters/delivery"
	"github.com/harmony-postbox/postbox/adapters/replicas"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// replicaAuto asks for replicas.DefaultName: the host name and a random
// instance ID, since process IDs repeat in containers.
const replicaAuto = "auto"

// replicaName settles --replica: empty (a single process), auto, or a
// name. Replicas share one EventStoreDB; the embedded store is one
// process's (its lock refuses a second), so replica mode needs --store.
func replicaName(given, store string) (string, error) {
	if given == "" {
		return "", nil
	}
	if store == "" {
		return "", exitError{code: 2, err: fmt.Errorf("--replica %s: replicas of one server share one EventStoreDB, and the embedded store serves a single process; add --store %s, or drop --replica to run one process on the embedded store",
			given, examples["store"])}
	}
	if given == replicaAuto {
		return replicas.DefaultName(os.Hostname, rand.Reader)
	}
	if err := replicas.CheckName(given); err != nil {
		return "", flagError("replica", given, err.Error(), examples["replica"])
	}
	return given, nil
}

// replicaStore is what a replica needs of the event store: heartbeats,
// owner terms and the shared nonce ledger.
type replicaStore = replicas.Store

// nonceTimeout bounds each store call of the shared nonce ledger.
const nonceTimeout = 5 * time.Second

// leaveTimeout bounds the last heartbeat of a clean shutdown.
const leaveTimeout = 5 * time.Second

// provideReplicas starts this process as a replica when --replica is
// given (nil otherwise), whose engine runs only the peers it owns: it refuses to start beside a live replica of
// another server ID or key (exit 2), heartbeats until shutdown, and then
// says it left, so that the others take its peers at once.
func provideReplicas(ctx context.Context, cfg Config, store replicaStore, codec *streams.Codec, clock domain.Clock,
	identity *domain.Identity, public ed25519.PublicKey, random io.Reader, engine *delivery.Engine, logger *slog.Logger,
) (*replicas.Replicas, func(), error) {
	if cfg.Replica == "" {
		return nil, func() {}, nil
	}
	r, err := replicas.New(replicas.Config{Name: cfg.Replica, ServerID: identity.Current().String(), Identity: identity, PublicKey: public, Lease: cfg.ReplicaLease},
		store, codec, clock, random, logger)
	if err != nil {
		return nil, nil, exitError{code: 2, err: fmt.Errorf("--replica %s: %w", cfg.Replica, err)}
	}
	if err := r.Start(ctx, time.After); err != nil {
		if errors.Is(err, replicas.ErrIdentityMismatch) || errors.Is(err, replicas.ErrNameInUse) {
			return nil, nil, exitError{code: 2, err: err}
		}
		return nil, nil, fmt.Errorf("start replica %s: %w", cfg.Replica, err)
	}
	// The engine runs only the peers this replica owns.
	engine.UseOwners(r)
	logger.Info("running as a replica", "replica", r.Name(), "lease", r.Lease(), "live", r.View().Live)
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(runCtx, time.After)
	}()
	return r, func() {
		stop()
		<-done
		leaveCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), leaveTimeout)
		defer cancel()
		if err := r.Leave(leaveCtx); err != nil {
			logger.Warn("replica: cannot say it left; its peers move to the others when its lease runs out", "err", err)
		}
	}, nil
}
