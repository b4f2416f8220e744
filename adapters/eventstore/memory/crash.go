package memory

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
)

// ErrCrashed is what every call of a crashed store returns: the simulated
// process holding it died. It is not ErrClosed, so a test can tell a crash
// from an orderly shutdown.
var ErrCrashed = errors.New("simulated crash: the store is gone")

// Crashing wraps a store so that a simulation can crash it at a chosen
// step: from the crash on, every call fails with ErrCrashed, and waiting
// subscriptions end. What the wrapped store had made durable stays in its
// storage; restarting the server is opening the storage again
// (Storage.Open) and wrapping the new handle.
//
// Calls are counted (Append, Delete, ReadStream, ReadStreamBackward and
// Subscribe; not a subscription's Recv), so a crash point is a call number,
// which a seeded simulation can choose.
//
// A simulation can also pause the process holding the store (Pause): every
// call, and every item a subscription would yield, then waits until Resume
// or a crash, as the calls of a process stopped by its scheduler or a long
// garbage collection do.
type Crashing struct {
	inner eventstore.Store

	mu         sync.Mutex
	calls      int
	crashAt    int  // the call that crashes, counted from 1; 0: none armed
	afterWrite bool // that call, if it writes, is applied before the crash
	crashed    bool
	resumed    chan struct{} // closed at Resume; nil while not paused

	// dead is cancelled at the crash, ending calls that wait.
	dead context.Context
	die  context.CancelFunc
}

var _ eventstore.Store = (*Crashing)(nil)

// NewCrashing wraps inner; it crashes only when told.
func NewCrashing(inner eventstore.Store) *Crashing {
	dead, die := context.WithCancel(context.Background())
	return &Crashing{inner: inner, dead: dead, die: die}
}

// CrashAt arms a crash at call number call (counted from 1 since the
// wrapper was made; a call already past crashes at the next call). If
// afterWrite, a crashing Append or Delete is applied to the store first and
// its caller still gets ErrCrashed: the process died after the commit and
// before the reply, the case that loses an acknowledgement but not data.
func (c *Crashing) CrashAt(call int, afterWrite bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.crashAt, c.afterWrite = max(call, 1), afterWrite
}

// Crash crashes the store now.
func (c *Crashing) Crash() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.crashLocked()
}

func (c *Crashing) crashLocked() {
	if c.crashed {
		return
	}
	c.crashed = true
	c.die()
	_ = c.inner.Close()
}

// Pause makes every call wait from now on until Resume (or a crash, which
// fails them). Calls already inside the store finish.
func (c *Crashing) Pause() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.resumed == nil {
		c.resumed = make(chan struct{})
	}
}

// Resume lets the calls waiting since Pause go on.
func (c *Crashing) Resume() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.resumed != nil {
		close(c.resumed)
		c.resumed = nil
	}
}

// Paused reports whether the store is paused.
func (c *Crashing) Paused() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.resumed != nil
}

// waitResumed waits while the store is paused and not crashed, and
// reports whether it waited.
func (c *Crashing) waitResumed() bool {
	c.mu.Lock()
	resumed := c.resumed
	c.mu.Unlock()
	if resumed == nil {
		return false
	}
	select {
	case <-resumed:
	case <-c.dead.Done():
	}
	return true
}

// Crashed reports whether the store has crashed.
func (c *Crashing) Crashed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.crashed
}

// Dead is done once the store has crashed.
func (c *Crashing) Dead() <-chan struct{} { return c.dead.Done() }

// Calls returns how many calls were counted so far.
func (c *Crashing) Calls() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls
}

// enter counts a call and says what to do: fail now, or run the call and
// (after) crash once it is done.
func (c *Crashing) enter(writes bool) (after bool, err error) {
	c.waitResumed()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.crashed {
		return false, ErrCrashed
	}
	c.calls++
	if c.crashAt == 0 || c.calls < c.crashAt {
		return false, nil
	}
	if writes && c.afterWrite {
		return true, nil
	}
	c.crashLocked()
	return false, ErrCrashed
}

// leave crashes after a call that was to be applied first.
func (c *Crashing) leave(after bool) error {
	if !after {
		return nil
	}
	c.Crash()
	return ErrCrashed
}

// Append implements eventstore.Store.
func (c *Crashing) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	after, err := c.enter(true)
	if err != nil {
		return eventstore.AppendResult{}, fmt.Errorf("append to %q: %w", stream, err)
	}
	res, err := c.inner.Append(ctx, stream, expected, events...)
	if cerr := c.leave(after); cerr != nil {
		return eventstore.AppendResult{}, fmt.Errorf("append to %q: %w", stream, cerr)
	}
	return res, err
}

// Delete implements eventstore.Store.
func (c *Crashing) Delete(ctx context.Context, stream string, expected eventstore.ExpectedRevision) error {
	after, err := c.enter(true)
	if err != nil {
		return fmt.Errorf("delete %q: %w", stream, err)
	}
	err = c.inner.Delete(ctx, stream, expected)
	if cerr := c.leave(after); cerr != nil {
		return fmt.Errorf("delete %q: %w", stream, cerr)
	}
	return err
}

// Truncate implements eventstore.Store.
func (c *Crashing) Truncate(ctx context.Context, stream string, before uint64) error {
	after, err := c.enter(true)
	if err != nil {
		return fmt.Errorf("truncate %q: %w", stream, err)
	}
	err = c.inner.Truncate(ctx, stream, before)
	if cerr := c.leave(after); cerr != nil {
		return fmt.Errorf("truncate %q: %w", stream, cerr)
	}
	return err
}

// TruncatedBefore implements eventstore.Store.
func (c *Crashing) TruncatedBefore(ctx context.Context, stream string) (uint64, error) {
	if _, err := c.enter(false); err != nil {
		return 0, fmt.Errorf("read %q: %w", stream, err)
	}
	return c.inner.TruncatedBefore(ctx, stream)
}

// ReadStream implements eventstore.Store.
func (c *Crashing) ReadStream(ctx context.Context, stream string, from uint64, limit int) ([]eventstore.RecordedEvent, error) {
	if _, err := c.enter(false); err != nil {
		return nil, fmt.Errorf("read %q: %w", stream, err)
	}
	return c.inner.ReadStream(ctx, stream, from, limit)
}

// ReadStreamBackward implements eventstore.Store.
func (c *Crashing) ReadStreamBackward(ctx context.Context, stream string, limit int) ([]eventstore.RecordedEvent, error) {
	if _, err := c.enter(false); err != nil {
		return nil, fmt.Errorf("read %q: %w", stream, err)
	}
	return c.inner.ReadStreamBackward(ctx, stream, limit)
}

// Subscribe implements eventstore.Store.
func (c *Crashing) Subscribe(ctx context.Context, filter eventstore.Filter, from eventstore.SubscribeFrom) (eventstore.Subscription, error) {
	if _, err := c.enter(false); err != nil {
		return nil, fmt.Errorf("subscribe: %w", err)
	}
	sub, err := c.inner.Subscribe(ctx, filter, from)
	if err != nil {
		return nil, err
	}
	return &crashingSub{c: c, inner: sub}, nil
}

// Close implements eventstore.Store; after a crash there is nothing to close.
func (c *Crashing) Close() error {
	if c.Crashed() {
		return nil
	}
	return c.inner.Close()
}

type crashingSub struct {
	c     *Crashing
	inner eventstore.Subscription
}

func (s *crashingSub) Recv(ctx context.Context) (eventstore.Item, error) {
	if s.c.Crashed() {
		return eventstore.Item{}, fmt.Errorf("subscription: %w", ErrCrashed)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(s.c.dead, func() { cancel(ErrCrashed) })
	defer stop()
	item, err := s.inner.Recv(ctx)
	waited := s.c.waitResumed()
	if (err != nil || waited) && s.c.Crashed() {
		return eventstore.Item{}, fmt.Errorf("subscription: %w", ErrCrashed)
	}
	return item, err
}

func (s *crashingSub) Close() error { return s.inner.Close() }

// Unwrap returns the wrapped store.
func (c *Crashing) Unwrap() eventstore.Store { return c.inner }
