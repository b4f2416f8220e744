package delivery

import (
	"context"
	"errors"
	"time"
)

// errHeldForRename: the push waited while this server told the peer its
// new ID; the push loop decides again with what is true now (the ID to
// sign with, and in replica mode the fence).
var errHeldForRename = errors.New("the push waited for a rename notice: decide again")

// pushHold is a rename notice's hold on one peer's pushes (renamehold.go):
// while it lasts no push is signed with the ID the peer may know this
// server by.
type pushHold struct {
	engine *Engine
	p      *peer
	held   chan struct{} // closed on release
}

// holdPushes stops new pushes to p until the hold is released. Pushes
// under way go on; quietSince waits for them.
func (e *Engine) holdPushes(p *peer) *pushHold {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pushHeld == nil {
		p.pushHeld = make(chan struct{})
	}
	return &pushHold{engine: e, p: p, held: p.pushHeld}
}

// release lets p's pushes go on. It may be called more than once.
func (h *pushHold) release() {
	h.p.mu.Lock()
	defer h.p.mu.Unlock()
	if h.p.pushHeld == h.held {
		close(h.held)
		h.p.pushHeld = nil
	}
}

// lastSigned waits until no push to the peer is under way and returns a
// time no token signed for one of them is later than: when the last one
// ended, or when the engine was made (a push of an earlier process ended
// before it).
func (h *pushHold) lastSigned(ctx context.Context) (time.Time, error) {
	p := h.p
	for {
		p.mu.Lock()
		if p.pushesOut == 0 {
			last := p.lastPushEnd
			p.mu.Unlock()
			if last.Before(h.engine.made) {
				last = h.engine.made
			}
			return last, nil
		}
		if p.pushesIdle == nil {
			p.pushesIdle = make(chan struct{})
		}
		idle := p.pushesIdle
		p.mu.Unlock()
		select {
		case <-idle:
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
}

// beginPush counts a push to p as under way, unless a rename notice holds
// p's pushes: then it waits for the release and returns errHeldForRename.
func (e *Engine) beginPush(ctx context.Context, p *peer) error {
	p.mu.Lock()
	held := p.pushHeld
	if held == nil {
		p.pushesOut++
		p.mu.Unlock()
		return nil
	}
	p.mu.Unlock()
	select {
	case <-held:
		return errHeldForRename
	case <-ctx.Done():
		return ctx.Err()
	}
}

// endPush ends what beginPush started.
func (e *Engine) endPush(p *peer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pushesOut--
	p.lastPushEnd = e.clock.Now()
	if p.pushesOut == 0 && p.pushesIdle != nil {
		close(p.pushesIdle)
		p.pushesIdle = nil
	}
}
