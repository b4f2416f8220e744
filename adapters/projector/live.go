// Package projector runs the projections (package projections, pure folds)
// over the event store: Live follows the store into a State and
// checkpoints it to a file; Audit replays the store through the audit's
// rules; DatabaseID reads or writes the store's identity. Records are
// decoded by adapters/streams, the one decoder.
package projector

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	"github.com/harmony-postbox/postbox/projections"
)

// LiveStore is what Live needs of the event store: to follow it, and to
// learn (or write) its identity.
type LiveStore interface {
	Subscribe(ctx context.Context, filter eventstore.Filter, from eventstore.SubscribeFrom) (eventstore.Subscription, error)
	streams.IdentityStore
}

// Live keeps a State current by following the store with a catch-up
// subscription over every stream, and checkpoints it to a file so that a
// restart resumes where it stopped. It is safe for concurrent use.
type Live struct {
	store  LiveStore
	path   string // "" keeps no checkpoint
	logger *slog.Logger
	random io.Reader // for a new database's identity

	checkpointEvery time.Duration
	backoffFirst    time.Duration
	backoffMax      time.Duration

	retention *ReceivedRetention // optional

	mu    sync.Mutex
	state *projections.State
	// lastChange is the position of the last record applied that is not a
	// snapshot: one a projections snapshot must cover.
	lastChange domain.Position
	// changed is closed, and replaced, whenever state moves on: Current
	// waits on it without polling.
	changed chan struct{}
}

// NewLive returns a projection follower; Run starts it. checkpointPath ""
// keeps no checkpoint. A nil logger discards logs.
func NewLive(store LiveStore, checkpointPath string, logger *slog.Logger) *Live {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Live{
		store:           store,
		path:            checkpointPath,
		logger:          logger.With("component", "projections"),
		random:          rand.Reader,
		checkpointEvery: 5 * time.Second,
		backoffFirst:    100 * time.Millisecond,
		backoffMax:      30 * time.Second,
		state:           projections.NewState(),
		changed:         make(chan struct{}),
	}
}

// WithReceivedRetention makes Run also remove received events as r says,
// from this state.
func (l *Live) WithReceivedRetention(r *ReceivedRetention) *Live {
	r.Live = l
	l.retention = r
	return l
}

// Run loads the checkpoint, if any, follows the store from its position
// (from the start if none), and writes the checkpoint every few seconds and
// on exit. After a store error it subscribes again, with backoff. It returns
// when ctx ends; the error is the final checkpoint write's, if it failed.
// Run one Run at a time.
func (l *Live) Run(ctx context.Context) error {
	id, ok := l.identify(ctx)
	if !ok {
		return nil
	}
	l.loadCheckpoint(ctx, id)

	var wg sync.WaitGroup
	loopCtx, stopLoop := context.WithCancel(ctx)
	// The loaded checkpoint needs no rewrite until something is applied.
	l.mu.Lock()
	written, wroteAny := l.state.Position()
	l.mu.Unlock()
	if l.path != "" {
		wg.Go(func() { l.checkpointLoop(loopCtx, &written, &wroteAny) })
	}
	if l.retention != nil {
		wg.Go(func() { l.retention.Run(loopCtx) })
	}

	failures := 0
	for ctx.Err() == nil {
		progressed, err := l.follow(ctx)
		if ctx.Err() != nil {
			break
		}
		if progressed {
			failures = 0
		}
		failures++
		delay := l.backoffFirst << min(failures-1, 20)
		delay = min(delay, l.backoffMax)
		l.logger.Warn("projection subscription failed; subscribing again", "err", err, "retry_in", delay)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}

	stopLoop()
	wg.Wait()
	if l.path == "" {
		return nil
	}
	if _, err := l.writeCheckpoint(written, wroteAny); err != nil {
		return err
	}
	return nil
}

// follow applies events from one subscription until it fails or ctx ends;
// it reports whether any event was applied.
func (l *Live) follow(ctx context.Context) (bool, error) {
	l.seedRegistry(ctx)
	l.mu.Lock()
	from := l.from()
	l.mu.Unlock()
	sub, err := l.store.Subscribe(ctx, eventstore.Filter{}, from)
	if errors.Is(err, eventstore.ErrNotAPosition) {
		// The store lost what the state had applied (restored from an
		// older backup, say): start again from its beginning.
		l.logger.Warn("the projections' position is no longer in the store; replaying every stream", "err", err)
		l.mu.Lock()
		fresh := projections.NewState()
		fresh.SetDatabaseID(l.state.DatabaseID())
		l.state = fresh
		close(l.changed)
		l.changed = make(chan struct{})
		l.mu.Unlock()
	}
	if err != nil {
		return false, fmt.Errorf("subscribe: %w", err)
	}
	defer sub.Close()
	progressed := false
	for {
		item, err := sub.Recv(ctx)
		if err != nil {
			return progressed, err
		}
		if item.CaughtUp {
			l.logger.Debug("projections caught up", "position", l.Applied())
			continue
		}
		if item.Event == nil {
			continue
		}
		progressed = true
		l.apply(*item.Event)
	}
}

func (l *Live) apply(r eventstore.RecordedEvent) {
	l.mu.Lock()
	before, _ := l.state.Position()
	err := l.state.Apply(streams.Decode(r))
	if after, _ := l.state.Position(); after != before && !strings.HasPrefix(r.Stream, streams.SnapshotPrefix) {
		l.lastChange = after
	}
	if after, _ := l.state.Position(); after != before {
		close(l.changed)
		l.changed = make(chan struct{})
	}
	l.mu.Unlock()
	if err != nil {
		l.logger.Error("projections skipped an unreadable record", "stream", r.Stream, "revision", r.Revision, "err", err)
	}
}

// identify learns the store's database identity, writing it if the store
// has none, retrying with backoff until ctx ends (then ok is false).
func (l *Live) identify(ctx context.Context) (id string, ok bool) {
	delay := l.backoffFirst
	for {
		id, err := streams.DatabaseID(ctx, l.store, l.random)
		if err == nil {
			return id, true
		}
		if ctx.Err() != nil {
			return "", false
		}
		l.logger.Warn("reading the database identity failed; trying again", "err", err, "retry_in", delay)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
		delay = min(2*delay, l.backoffMax)
	}
}

// loadCheckpoint resumes from the checkpoint, if there is one of database
// id, or from the store's projections snapshot if that one is later (a
// checkpoint file lost or older than what retention removed); the state
// records id either way.
func (l *Live) loadCheckpoint(ctx context.Context, id string) {
	defer func() {
		l.mu.Lock()
		l.state.SetDatabaseID(id)
		l.mu.Unlock()
	}()
	s := l.readCheckpoint(id)
	from := "checkpoint"
	if st := storeSnapshot(ctx, l.store, id, l.logger); st != nil {
		if s == nil || laterThan(st, s) {
			s, from = st, "store's snapshot"
		}
	}
	if s == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, applied := l.state.Position(); applied {
		return // Run was called again: the state in memory is newer
	}
	l.state = s
	close(l.changed)
	l.changed = make(chan struct{})
	pos, _ := s.Position()
	l.logger.Info("projections resumed from their "+from, "path", l.path, "commit", pos.Commit)
}

// laterThan reports whether a is at a later position than b.
func laterThan(a, b *projections.State) bool {
	pa, _ := a.Position()
	pb, ok := b.Position()
	return !ok || pb.Less(pa)
}

// readCheckpoint reads the checkpoint file, if there is one of database id.
func (l *Live) readCheckpoint(id string) *projections.State {
	if l.path == "" {
		return nil
	}
	s, err := ReadCheckpoint(l.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		// Replaying from the start is always correct, only slower.
		l.logger.Warn("ignoring the projection checkpoint; replaying every stream", "path", l.path, "err", err)
		return nil
	case s.DatabaseID() != id:
		// Its positions belong to another database: resuming after one
		// would skip or repeat this store's events.
		l.logger.Warn("the projection checkpoint is of another database; replaying every stream", "path", l.path,
			"checkpoint_database", cmp.Or(s.DatabaseID(), "(none recorded)"), "store_database", id)
		return nil
	}
	return s
}

func (l *Live) checkpointLoop(ctx context.Context, written *domain.Position, wroteAny *bool) {
	t := time.NewTicker(l.checkpointEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pos, err := l.writeCheckpoint(*written, *wroteAny)
		if err != nil {
			l.logger.Error("writing the projection checkpoint failed", "path", l.path, "err", err)
			continue
		}
		*written, *wroteAny = pos, true
	}
}

// writeCheckpoint writes the state unless it is still at last.
func (l *Live) writeCheckpoint(last domain.Position, wroteAny bool) (domain.Position, error) {
	l.mu.Lock()
	pos, applied := l.state.Position()
	if !applied || wroteAny && pos == last {
		l.mu.Unlock()
		return last, nil
	}
	snap := l.state.Snapshot() // a copy: encoding and I/O happen outside the lock
	l.mu.Unlock()
	data, err := snap.Marshal()
	if err != nil {
		return last, err
	}
	if err := writeFileAtomic(l.path, data); err != nil {
		return last, err
	}
	return pos, nil
}

// from is where a subscription picks up after the state. The caller
// holds mu.
func (l *Live) from() eventstore.SubscribeFrom {
	if pos, applied := l.state.Position(); applied {
		return eventstore.After(eventstore.Position{Commit: pos.Commit, Prepare: pos.Prepare})
	}
	return eventstore.FromStart()
}

// Current returns a clone of the state that includes every event stored
// when Current was called: it reads the store's events after what has been
// applied up to the end, then waits until Run has applied that far.
func (l *Live) Current(ctx context.Context) (*projections.State, error) {
	l.mu.Lock()
	from := l.from()
	l.mu.Unlock()
	target, found, err := l.storeEnd(ctx, from)
	if err != nil {
		return nil, err
	}
	for {
		l.mu.Lock()
		if pos, applied := l.state.Position(); !found || applied && !pos.Less(target) {
			c := l.state.Clone()
			l.mu.Unlock()
			return c, nil
		}
		changed := l.changed
		l.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("projections not yet at position %d/%d: %w", target.Commit, target.Prepare, context.Cause(ctx))
		}
	}
}

// storeEnd returns the position of the last event stored after from, if any.
func (l *Live) storeEnd(ctx context.Context, from eventstore.SubscribeFrom) (domain.Position, bool, error) {
	sub, err := l.store.Subscribe(ctx, eventstore.Filter{}, from)
	if err != nil {
		return domain.Position{}, false, fmt.Errorf("projections: find the store's end: %w", err)
	}
	defer sub.Close()
	var last domain.Position
	found := false
	for {
		item, err := sub.Recv(ctx)
		if err != nil {
			return domain.Position{}, false, fmt.Errorf("projections: find the store's end: %w", err)
		}
		if item.CaughtUp {
			return last, found, nil
		}
		if item.Event != nil {
			last, found = domain.Position{Commit: item.Event.Position.Commit, Prepare: item.Event.Position.Prepare}, true
		}
	}
}

// Applied is the position of the last event applied.
func (l *Live) Applied() domain.Position {
	l.mu.Lock()
	defer l.mu.Unlock()
	pos, _ := l.state.Position()
	return pos
}
