package domain

import (
	"sync"
	"time"
)

// NonceLedger remembers the nonces of accepted tokens until those tokens
// expire, so each can be used once. It is safe for concurrent use.
type NonceLedger struct {
	mu      sync.Mutex
	seen    map[nonceKey]time.Time
	sweepAt time.Time
}

type nonceKey struct {
	server ServerID
	nonce  [NonceSize]byte
}

// NewNonceLedger returns an empty ledger.
func NewNonceLedger() *NonceLedger {
	return &NonceLedger{seen: make(map[nonceKey]time.Time)}
}

// Remember records nonce from server until expiry, and reports whether it
// was new. Expired entries are dropped at most once a second, keeping the
// cost per call constant on average.
func (l *NonceLedger) Remember(server ServerID, nonce []byte, expiry, now time.Time) bool {
	k := nonceKey{server: server}
	copy(k.nonce[:], nonce)
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.After(l.sweepAt) {
		for key, exp := range l.seen {
			if now.After(exp) {
				delete(l.seen, key)
			}
		}
		l.sweepAt = now.Add(time.Second)
	}
	if exp, ok := l.seen[k]; ok && !now.After(exp) {
		return false
	}
	l.seen[k] = expiry
	return true
}

// Len returns how many nonces are remembered.
func (l *NonceLedger) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.seen)
}
