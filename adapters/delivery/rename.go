package delivery

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// RenameKeys is what renames need of the peer key resolver.
type RenameKeys interface {
	// Key is the key already known for a server ID (it verified the
	// caller's token a moment ago).
	Key(ctx context.Context, id domain.ServerID) (ed25519.PublicKey, error)
	// Fetch asks a server ID for its key now, bypassing any cache.
	Fetch(ctx context.Context, id domain.ServerID) (ed25519.PublicKey, error)
	// Remember makes a key known for a server ID.
	Remember(id domain.ServerID, key ed25519.PublicKey)
}

// Notifier tells a peer of this server's new ID.
type Notifier interface {
	NotifyNewID(ctx context.Context, peer, newID domain.ServerID) error
}

// Renames handles server ID renames in both directions (PROTOCOL.md §6): a
// peer's NotifyNewId, and this server's own rename, announced to every peer
// until each has accepted it. It attaches itself to the engine, which
// answers NotifyNewId through it.
type Renames struct {
	engine   *Engine
	registry *registry.Registry
	keys     RenameKeys
	notifier Notifier
	identity *domain.Identity
	clock    domain.Clock
	logger   *slog.Logger
	// backoff spaces NotifyNewId retries toward one peer.
	backoff domain.Backoff

	mu        sync.Mutex
	notifying map[streams.PeerID]chan struct{} // closed when the notice is done
}

// NewRenames returns the rename handling and attaches it to engine.
func NewRenames(engine *Engine, registry *registry.Registry, keys RenameKeys, notifier Notifier, identity *domain.Identity, clock domain.Clock, logger *slog.Logger) *Renames {
	r := &Renames{engine: engine, registry: registry, keys: keys, notifier: notifier, identity: identity,
		clock: clock, logger: logger, backoff: domain.Backoff{First: time.Second, Max: 5 * time.Minute}, notifying: map[streams.PeerID]chan struct{}{}}
	engine.mu.Lock()
	engine.renames = r
	engine.mu.Unlock()
	return r
}

// AcceptRename answers a peer's NotifyNewId: caller is its old ID,
// authenticated with the key known for it; newID must be free and serve the
// same key. A repeated announcement of the same rename answers OK.
func (r *Renames) AcceptRename(ctx context.Context, caller domain.Caller, newID domain.ServerID) error {
	decision, err := domain.DecidePeerRename(r.registry, caller.ServerID, newID)
	if err != nil || decision.AlreadyDone {
		return err
	}
	known, err := r.keys.Key(ctx, caller.ServerID)
	if err != nil {
		return fmt.Errorf("%w: key of %s: %w", domain.ErrKeyUnavailable, caller.ServerID, err)
	}
	served, err := r.keys.Fetch(ctx, newID)
	if err != nil {
		return fmt.Errorf("%w: key of the new ID %s: %w", domain.ErrKeyUnavailable, newID, err)
	}
	if !served.Equal(known) {
		return fmt.Errorf("%w: %s serves another key than %s", domain.ErrKeyMismatch, newID, caller.ServerID)
	}
	if err := r.registry.RecordRename(ctx, decision); err != nil {
		return err
	}
	r.keys.Remember(newID, served)
	// Recorded under the new ID too (a no-op when the old ID's was), so
	// the key is known after a restart.
	if err := r.registry.RecordKey(ctx, newID, served); err != nil {
		r.logger.Warn("recording a renamed peer's key failed", "peer", newID.String(), "err", err)
	}
	r.logger.Info("peer renamed", "peer", decision.Peer, "old", decision.Old.String(), "new", decision.New.String())
	return nil
}

// Rename makes newID this server's ID, records it, and starts telling every
// peer; toward each, the old ID stays in use until it has accepted.
func (r *Renames) Rename(ctx context.Context, newID domain.ServerID) error {
	old := r.identity.Current()
	now := r.clock.Now()
	renamed, err := r.renameOwn(ctx, newID, now)
	if err != nil || !renamed {
		return err
	}
	r.identity.Rename(newID, now)
	r.logger.Info("this server renamed", "old", old.String(), "new", newID.String())
	r.Start()
	return nil
}

// Start tells every peer that does not know this server's current ID yet;
// it is called at startup too, so notices survive restarts.
func (r *Renames) Start() {
	for _, p := range r.registry.NoticesDue() {
		if !r.engine.runs(p.ID) {
			continue // the peer's owner tells it
		}
		r.mu.Lock()
		_, busy := r.notifying[p.ID]
		done := make(chan struct{})
		if !busy {
			r.notifying[p.ID] = done
		}
		r.mu.Unlock()
		if !busy {
			r.engine.goBackground(func(ctx context.Context) {
				defer close(done)
				r.notifyUntilAccepted(ctx, p.ID)
			})
		}
	}
}

// notifyUntilAccepted calls NotifyNewId on one peer, with backoff, until it
// accepts this server's current ID or the engine closes.
func (r *Renames) notifyUntilAccepted(ctx context.Context, peer streams.PeerID) {
	defer func() {
		r.mu.Lock()
		delete(r.notifying, peer)
		r.mu.Unlock()
	}()
	for attempt := 1; ctx.Err() == nil; attempt++ {
		own, _ := r.registry.OwnID()
		server, ok := r.registry.ServerID(peer)
		if !ok || r.knows(peer) {
			return
		}
		callCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := r.notifier.NotifyNewID(callCtx, server, own)
		cancel()
		if err == nil {
			if err := r.recordNotified(ctx, peer, own); err != nil {
				r.logger.Error("recording a peer's acceptance of our new ID failed", "peer", server.String(), "err", err)
			} else {
				r.logger.Info("peer accepted our new ID", "peer", server.String(), "id", own.String())
				return
			}
		} else if unknownToPeer(err) {
			// Not an acceptance: the peer has no record of the ID it is
			// told about. Toward it this server keeps signing with that
			// ID; the next push registers it there, and then a notice is
			// accepted as a rename, leaving the peer one entry for us.
			r.logger.Warn("a peer does not know our old ID, so has not accepted the new one; will retry",
				"peer", server.String(), "old", known(r.registry, peer).String(), "attempt", attempt, "err", err)
		} else {
			r.logger.Warn("telling a peer our new ID failed; will retry", "peer", server.String(), "attempt", attempt, "err", err)
		}
		if r.engine.sleep(ctx, r.backoff.Delay(attempt, r.engine.jitter())) != nil {
			return
		}
	}
}

// awaitNotice waits while peer is being told this server's new ID, so a
// pull signed with the old ID does not race the peer's acceptance of the
// new one (the peer would refuse it as renamed).
func (r *Renames) awaitNotice(ctx context.Context, peer streams.PeerID) {
	r.mu.Lock()
	done := r.notifying[peer]
	r.mu.Unlock()
	if done == nil {
		return
	}
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// unknownToPeer reports whether a peer answered that it does not know the ID
// this server signed with.
func unknownToPeer(err error) bool {
	return domain.PeerSaid(err, domain.ErrUnknownPeer)
}

// known is the ID of this server that peer knows.
func known(reg *registry.Registry, peer streams.PeerID) domain.ServerID {
	id, _ := reg.KnowsUsAs(peer)
	return id
}

func (r *Renames) knows(peer streams.PeerID) bool {
	return r.registry.KnowsOurID(peer)
}
