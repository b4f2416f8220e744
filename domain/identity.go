package domain

import (
	"sync"
	"time"
)

// DefaultAudienceGrace is how long tokens addressed to one of this server's
// earlier IDs are still accepted after a rename, so peers that have not yet
// heard of the rename keep working.
const DefaultAudienceGrace = 7 * 24 * time.Hour

// Identity is this server's own server ID and the IDs it had before. It is
// safe for concurrent use.
type Identity struct {
	grace time.Duration

	mu      sync.RWMutex
	current ServerID
	earlier []formerID
}

type formerID struct {
	id    ServerID
	until time.Time
}

// NewIdentity returns the identity of a server called current.
func NewIdentity(current ServerID, grace time.Duration) *Identity {
	return &Identity{current: current, grace: grace}
}

// Current returns the server ID this server goes by now.
func (i *Identity) Current() ServerID {
	i.mu.RLock()
	defer i.mu.RUnlock()
	return i.current
}

// Rename makes next the current ID; the old one stays an accepted audience
// for the grace period counted from at.
func (i *Identity) Rename(next ServerID, at time.Time) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if next == i.current {
		return
	}
	i.earlier = append(i.earlier, formerID{id: i.current, until: at.Add(i.grace)})
	i.current = next
}

// IsAudience reports whether a token addressed to id is addressed to this
// server at time now.
func (i *Identity) IsAudience(id ServerID, now time.Time) bool {
	i.mu.RLock()
	defer i.mu.RUnlock()
	if id == i.current {
		return true
	}
	for _, f := range i.earlier {
		if f.id == id && now.Before(f.until) {
			return true
		}
	}
	return false
}
