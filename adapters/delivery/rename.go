package delivery

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"slices"
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
	// keyAsked: when the key of the peer was last fetched to be recorded
	// (learnKey), while it is not; strangerAsked: the same for the
	// fetches before a new caller is taken (learnKeylessPeers).
	keyAsked      map[streams.PeerID]time.Time
	strangerAsked map[streams.PeerID]keyAsk
	// strangers: when each server held off by holdStranger first called.
	strangers map[domain.ServerID]time.Time
	// signedAt is where in this server's IDs (OwnIDs) the ID last signed
	// with toward a peer is, once that was corrected (registry.SignAs),
	// until the peer accepts the current ID.
	signedAt map[streams.PeerID]signedID
}

// NewRenames returns the rename handling and attaches it to engine.
func NewRenames(engine *Engine, registry *registry.Registry, keys RenameKeys, notifier Notifier, identity *domain.Identity, clock domain.Clock, logger *slog.Logger) *Renames {
	r := &Renames{engine: engine, registry: registry, keys: keys, notifier: notifier, identity: identity,
		clock: clock, logger: logger, backoff: domain.Backoff{First: time.Second, Max: 5 * time.Minute}, notifying: map[streams.PeerID]chan struct{}{},
		signedAt: map[streams.PeerID]signedID{}, keyAsked: map[streams.PeerID]time.Time{}, strangerAsked: map[streams.PeerID]keyAsk{},
		strangers: map[domain.ServerID]time.Time{}}
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
// it is called at startup too, so notices survive restarts. Pushes to a
// peer wait from now until it has answered the notice (notifyUntilAccepted).
func (r *Renames) Start() {
	for _, p := range r.registry.NoticesDue() {
		r.tell(p.ID)
	}
}

// TellIfDue tells peer this server's current ID if it knows another: a
// peer whose first call addressed a former ID.
func (r *Renames) TellIfDue(peer streams.PeerID) {
	if !r.knows(peer) {
		r.tell(peer)
	}
}

// tell starts telling peer this server's current ID, unless that is under
// way already or another replica runs the peer.
func (r *Renames) tell(peer streams.PeerID) {
	if !r.engine.runs(peer) {
		return // the peer's owner tells it
	}
	r.mu.Lock()
	_, busy := r.notifying[peer]
	done := make(chan struct{})
	if !busy {
		r.notifying[peer] = done
	}
	r.mu.Unlock()
	if busy {
		return
	}
	hold := r.engine.holdPushes(r.engine.peer(peer))
	r.engine.goBackground(func(ctx context.Context) {
		defer close(done)
		r.notifyUntilAccepted(ctx, peer, hold)
	})
}

// notifyUntilAccepted calls NotifyNewId on one peer, with backoff, until it
// accepts this server's current ID or the engine closes. Pushes to the
// peer are held (hold) until the peer answers: a push signed with the old
// ID that the peer takes before it has heard of the rename registers the
// old ID there, and the peer may have met the new ID meanwhile (its users
// may address this server by it), leaving two peers there for one server.
// A peer that does not implement the notice (upstream) gets pushes under
// the old ID again at once.
func (r *Renames) notifyUntilAccepted(ctx context.Context, peer streams.PeerID, hold *pushHold) {
	defer func() {
		r.mu.Lock()
		delete(r.notifying, peer)
		r.mu.Unlock()
	}()
	defer func() { hold.release() }()
	held := true
	for attempt := 1; ctx.Err() == nil; attempt++ {
		own, _ := r.registry.OwnID()
		server, ok := r.registry.ServerID(peer)
		if !ok || r.knows(peer) {
			return
		}
		if !held {
			hold, held = r.engine.holdPushes(r.engine.peer(peer)), true
		}
		callCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := r.notifier.NotifyNewID(callCtx, server, own)
		cancel()
		switch {
		case err == nil:
			if err := r.recordNotified(ctx, peer, own); err != nil {
				r.logger.Error("recording a peer's acceptance of our new ID failed", "peer", server.String(), "err", err)
			} else {
				r.logger.Info("peer accepted our new ID", "peer", server.String(), "id", own.String())
				// Done, unless this server was renamed again while the
				// notice was under way (its own telling found this one
				// busy): then the peer is told that at once.
				continue
			}
		case unknownToPeer(err) && r.steppingForward(peer) && r.signLater(peer, server):
			// An ID of ours between the one the peer said was renamed
			// and the one it knows: our notice skipped it (it was
			// renamed again before the peer was told).
			continue
		case unknownToPeer(err):
			switched, err := r.useNewIDWhenQuiet(ctx, peer, server, own, hold)
			if switched || err != nil {
				return
			}
			continue // told again at once: the wait was the backoff
		case domain.PeerSaid(err, domain.ErrPeerRenamed):
			// The peer knows a later ID of ours than the one signed with:
			// it took a notice whose answer was lost (or not recorded
			// before a crash), and this server was renamed again since.
			if r.signLater(peer, server) {
				continue // told again at once, under the next ID
			}
			r.logger.Warn("a peer says the ID we signed with was renamed, and we have no later one but the current; it will be told again", "peer", server.String(), "attempt", attempt, "err", err)
		case refusedForGood(err):
			// The peer cannot take the notice (an upstream server), or
			// knows the old ID and refused the new one: pushes under the
			// old ID register nothing new there.
			hold.release()
			held = false
			r.logger.Warn("a peer refused our new ID; pushes go on under the ID it knows, and it will be told again", "peer", server.String(), "attempt", attempt, "err", err)
		default:
			r.logger.Warn("telling a peer our new ID failed; pushes to it wait, and it will be told again", "peer", server.String(), "attempt", attempt, "err", err)
		}
		if r.engine.sleep(ctx, r.backoff.Delay(attempt, r.engine.jitterOf("rename", uint64(attempt), server.String()))) != nil {
			return
		}
	}
}

// useNewIDWhenQuiet handles a peer that holds no record of the old ID this
// server signed with: it never took a push under it. Once no push signed
// with that ID can reach it any more (the tokens of pushes under way are
// past twice the time window, a peer's clock being at most a window off),
// it never will, and this server signs with its new ID toward it from then
// on (recorded as the peer knowing it); until then, pushes wait.
func (r *Renames) useNewIDWhenQuiet(ctx context.Context, peer streams.PeerID, server, own domain.ServerID, hold *pushHold) (switched bool, err error) {
	last, err := hold.lastSigned(ctx)
	if err != nil {
		return false, err
	}
	if wait := last.Add(2 * r.engine.cfg.AuthWindow).Sub(r.clock.Now()); wait > 0 {
		r.logger.Info("a peer does not know our old ID: pushes to it wait until none signed with it can arrive, then it is told again",
			"peer", server.String(), "old", known(r.registry, peer).String(), "wait", wait)
		return false, r.engine.sleep(ctx, wait)
	}
	if err := r.recordNotified(ctx, peer, own); err != nil {
		r.logger.Error("recording that a peer knows us by our new ID failed", "peer", server.String(), "err", err)
		return false, r.engine.sleep(ctx, time.Second)
	}
	r.logger.Info("a peer never knew our old ID: it meets us by the new one", "peer", server.String(), "id", own.String())
	return true, nil
}

// forgotten handles a peer's answer that it does not know the ID this
// server signed a push or pull with. If the peer had accepted that ID (the
// registry says it knows our current one), its store went back to before
// it accepted our rename, and it refuses to meet that ID as a second peer
// (registry.StrangerCheck): it is told again, signed with the former ID
// before it, and if it does not know that one either (after the wait of
// useNewIDWhenQuiet), with the one before, and so on. A notice under way
// handles the answer itself.
func (r *Renames) forgotten(peer streams.PeerID) {
	if !r.knows(peer) {
		return
	}
	own, _ := r.registry.OwnID()
	ids := r.registry.OwnIDs()
	r.mu.Lock()
	last, stepped := r.signedAt[peer]
	from := last.at
	if !stepped {
		from = len(ids) - 1
	}
	former, at := formerBefore(ids, from, own)
	if !former.IsZero() {
		r.signedAt[peer] = signedID{at: at}
	}
	r.mu.Unlock()
	server, _ := r.registry.ServerID(peer)
	if former.IsZero() {
		r.logger.Error("a peer knows none of our IDs any more, and refuses our current one as another peer's (two servers sharing our key?)",
			"peer", server.String(), "id", own.String())
		return
	}
	r.logger.Warn("a peer no longer knows our current ID (its store went back?): telling it again, signed as a former ID",
		"peer", server.String(), "former", former.String(), "id", own.String())
	r.registry.SignAs(peer, former)
	r.tell(peer)
}

// signLater makes this server sign toward peer (at server) with the ID of
// its own that followed the one it signs with now, and reports whether
// there was one. Our IDs reach a peer only through our notices, in the
// order we took them, so a peer that says an ID of ours was renamed knows
// one that came after it; stepping one at a time finds it, past any ID
// between that the peer never knew (answered unknown).
func (r *Renames) signLater(peer streams.PeerID, server domain.ServerID) bool {
	ids := r.registry.OwnIDs()
	signed := r.registry.IDFor(server)
	r.mu.Lock()
	// Where a correction left us, else the first time the ID was ours
	// (the one the registry records is where no correction was made).
	last, corrected := r.signedAt[peer]
	at := last.at
	if !corrected {
		at = slices.IndexFunc(ids, func(o domain.OwnID) bool { return o.ID == signed })
	}
	if at < 0 || at+1 >= len(ids) {
		r.mu.Unlock()
		return false
	}
	r.signedAt[peer] = signedID{at: at + 1, forward: true}
	r.mu.Unlock()
	next := ids[at+1].ID
	r.logger.Warn("a peer knows a later ID of ours than the one we signed with (a notice whose answer was lost): telling it again, signed as the next",
		"peer", server.String(), "signed", signed.String(), "next", next.String())
	r.registry.SignAs(peer, next)
	return true
}

// signedID is where in this server's IDs the ID signed with toward a peer
// is, and whether it was reached stepping forward (signLater) rather than
// back (forgotten).
type signedID struct {
	at      int
	forward bool
}

// steppingForward reports whether the ID signed with toward peer was
// reached by signLater: the peer said an earlier one was renamed, so it
// knows a later one.
func (r *Renames) steppingForward(peer streams.PeerID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.signedAt[peer].forward
}

// formerBefore is the latest of this server's IDs (ids, oldest first)
// before position from that is neither the ID there nor own, and its
// position; zero if none. Each step goes further back, so stepping ends.
func formerBefore(ids []domain.OwnID, from int, own domain.ServerID) (domain.ServerID, int) {
	for i := min(from, len(ids)) - 1; i >= 0; i-- {
		if id := ids[i].ID; id != own && (from >= len(ids) || id != ids[from].ID) {
			return id, i
		}
	}
	return domain.ServerID{}, -1
}

// learnKey fetches the key of a peer this server pushes to and whose key is
// not recorded (it never called this server), so it is recorded
// (registry.KeyFetched); from the first push on, not the first that
// succeeds, and again every keyAskInterval until it is. Should the peer
// rename itself before it ever accepts a push, or this server's store go
// back to before it accepted the peer's rename, the peer's new ID is then
// known by its key and refused as a second peer (registry.StrangerCheck)
// instead of registered as one.
func (r *Renames) learnKey(peer streams.PeerID, server domain.ServerID) {
	if !r.mayAskKey(peer) {
		return
	}
	r.engine.goBackground(func(ctx context.Context) { r.fetchKey(ctx, peer, server) })
}

// learnKeylessPeers fetches, before a call from a server that is no peer
// is taken, the keys of a few peers whose keys are not recorded, at once
// and past any cache of a failed fetch (each peer at most once per
// strangerKeyInterval): should the caller be one of them under a new ID
// this server lost or never learned, its key then tells, and it is refused
// as a second peer (registry.StrangerCheck) instead of registered as one.
// It reports whether a key among them could not be fetched (now, or at
// the last try), when the caller might still be that peer.
func (r *Renames) learnKeylessPeers(ctx context.Context) (unknown bool) {
	var wg sync.WaitGroup
	now := r.clock.Now()
	for _, server := range r.registry.KeylessPeers(keylessPerStranger) {
		peer, ok := r.registry.Lookup(server)
		if !ok {
			continue
		}
		r.mu.Lock()
		last, was := r.strangerAsked[peer]
		due := !was || now.Sub(last.at) >= strangerKeyInterval
		if due {
			r.strangerAsked[peer] = keyAsk{at: now, failed: last.failed}
		} else if last.failed {
			unknown = true
		}
		r.mu.Unlock()
		if !due {
			continue
		}
		wg.Go(func() {
			key, err := r.keys.Fetch(ctx, server)
			if err == nil {
				err = r.registry.RecordKey(ctx, server, key)
			}
			r.mu.Lock()
			defer r.mu.Unlock()
			if err == nil {
				delete(r.strangerAsked, peer)
				return
			}
			r.strangerAsked[peer] = keyAsk{at: now, failed: true}
			unknown = true
			r.logger.Info("fetching the key of a peer without one, before a new caller is taken, failed", "peer", server.String(), "err", err)
		})
	}
	wg.Wait()
	return unknown
}

// keyAsk is learnKeylessPeers' last fetch of one peer's key.
type keyAsk struct {
	at     time.Time
	failed bool
}

// holdStranger reports whether a first call from server, a stranger, is
// to be answered busy because the key of a peer without one could not be
// fetched (learnKeylessPeers): so the stranger comes back, and the fetch is
// tried again, for strangerHold from its first call. A peer whose key
// server is gone for good (a misspelt address users send to) then delays
// each new peer's first contact by that much, no more. At most
// maxHeldStrangers are remembered; one forgotten is held afresh.
func (r *Renames) holdStranger(server domain.ServerID) bool {
	now := r.clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	first, seen := r.strangers[server]
	if !seen {
		if len(r.strangers) >= maxHeldStrangers {
			clear(r.strangers)
		}
		r.strangers[server] = now
		return true
	}
	return now.Sub(first) < strangerHold
}

// strangerHold bounds how long holdStranger holds one stranger off, and
// maxHeldStrangers how many first calls it remembers.
const (
	strangerHold     = time.Minute
	maxHeldStrangers = 4096
)

// keylessPerStranger bounds the keys learnKeylessPeers fetches for one
// call, and strangerKeyInterval how often it fetches one peer's: new
// callers come at the rate the verifier lets them (each has a key of its
// own), and this keeps them from making this server call a peer's key
// server at that rate.
const (
	keylessPerStranger  = 4
	strangerKeyInterval = 5 * time.Second
)

// mayAskKey reports whether peer's key, not recorded, may be fetched now,
// and notes the ask.
func (r *Renames) mayAskKey(peer streams.PeerID) bool {
	if r.registry.HasKey(peer) {
		return false
	}
	now := r.clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if asked, ok := r.keyAsked[peer]; ok && now.Sub(asked) < keyAskInterval {
		return false
	}
	r.keyAsked[peer] = now
	return true
}

// fetchKey fetches server's key, which records it (registry.KeyFetched).
func (r *Renames) fetchKey(ctx context.Context, peer streams.PeerID, server domain.ServerID) {
	if _, err := r.keys.Key(ctx, server); err != nil {
		r.logger.Info("fetching a peer's key to record it failed; asked again later", "peer", server.String(), "err", err)
		return
	}
	r.mu.Lock()
	delete(r.keyAsked, peer)
	r.mu.Unlock()
}

// keyAskInterval spaces learnKey's fetches of a key not recorded yet.
const keyAskInterval = 30 * time.Second

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

// refusedForGood reports whether a peer's answer to a rename notice means
// it will not take it as it stands: it does not implement NotifyNewId, or
// it knows the old ID and finds the new one another peer's or serving
// another key. Other failures (no answer, a key it could not fetch, busy)
// say nothing about what it knows.
func refusedForGood(err error) bool {
	return domain.PeerSaid(err, domain.ErrNotImplemented) || domain.PeerSaid(err, domain.ErrIDTaken) || domain.PeerSaid(err, domain.ErrKeyMismatch)
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

// renamesOf is the engine's rename handling, nil if none is attached.
func (e *Engine) renamesOf() *Renames {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.renames
}
