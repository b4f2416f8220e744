package sim

import (
	"fmt"
	"sync"
	"time"

	"github.com/harmony-postbox/postbox/adapters/simnet"
	"github.com/harmony-postbox/postbox/gen/protocol/sync/v1/syncv1connect"
)

// A push loop spins when it pushes what it cannot record: for one, a peer
// in queue mode pushed to anyway (its pushes are refused as stale by the
// delivery rules, so the same event goes out again and again). The engine
// makes at most 1 + --push-retries attempts at an event before queue mode,
// spaced by backoff, and resume probes at least 5 s apart; replicas around
// a handover, busy answers and renames add a few. stormAttempts attempts
// at one event on one link within stormWindow of virtual time are far
// past any of that.
const (
	stormAttempts = 40
	stormWindow   = 10 * time.Second
)

type pushKey struct{ from, to, content string }

type pushLog struct {
	mu     sync.Mutex
	recent map[pushKey][]time.Time // the last stormAttempts attempts, oldest first
	storms []string
}

// note records a call the network carried (simnet.Network.OnCall).
func (l *pushLog) note(c simnet.Call) {
	if c.Path != syncv1connect.PostboxServicePushProcedure {
		return
	}
	now := time.Now()
	k := pushKey{c.From, c.To, c.Content}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.recent == nil {
		l.recent = map[pushKey][]time.Time{}
	}
	times := append(l.recent[k], now)
	if len(times) > stormAttempts {
		times = times[1:]
	}
	l.recent[k] = times
	if len(times) == stormAttempts && now.Sub(times[0]) < stormWindow {
		l.storms = append(l.storms, fmt.Sprintf("%s pushed %s to %s %d times in %v (call #%d): a push loop spinning (pushing in queue mode?)",
			c.From, c.Content, c.To, stormAttempts, now.Sub(times[0]), c.Count))
		clear(times) // report a storm once per window
		l.recent[k] = nil
	}
}

// found returns the storms noted so far.
func (l *pushLog) found() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.storms...)
}
