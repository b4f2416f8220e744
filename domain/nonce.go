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
	// peak is the most entries seen held since it was last allocated: a
	// Go map keeps its buckets after deletes, so after a burst has expired
	// the sweep moves what is left into a new, small map.
	peak int
}

// nonceLedgerMinPeak: below this many entries a map is not worth rebuilding.
const nonceLedgerMinPeak = 4096

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
		if l.peak >= nonceLedgerMinPeak && len(l.seen) < l.peak/4 {
			small := make(map[nonceKey]time.Time, len(l.seen))
			for key, exp := range l.seen {
				small[key] = exp
			}
			l.seen, l.peak = small, len(small)
		}
	}
	if exp, ok := l.seen[k]; ok && !now.After(exp) {
		return false
	}
	l.seen[k] = expiry
	l.peak = max(l.peak, len(l.seen))
	return true
}

// Len returns how many nonces are remembered.
func (l *NonceLedger) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.seen)
}
