package domain

import (
	"sync"
	"time"
)

// NonceLedger remembers the nonces of accepted tokens until those tokens
// expire, so each can be used once. It is safe for concurrent use.
//
// In memory alone it would forget them in a restart, and a token accepted
// just before a kill -9 could be accepted again after a quick restart: the
// verifier refuses extension tokens stamped before the process started, but
// token times are whole seconds, so the start second stays open (and a peer
// clock running ahead widens it). Refusing the whole start second would also
// refuse the fresh tokens of every peer then, and a floor per peer (the last
// second it was accepted) the fresh tokens signed in that second, which
// cannot be told from replays by time alone. So a persisted ledger
// (Verifier.PersistNonces) writes each nonce before accepting it, and the
// next process starts from the nonces written: exact, with no clock
// assumption, at the cost of one small write (no sync) per accepted token.
type NonceLedger struct {
	mu      sync.Mutex
	seen    map[nonceKey]time.Time
	sweepAt time.Time

	// peak is the most entries seen held since it was last allocated: a
	// Go map keeps its buckets after deletes, so after a burst has expired
	// the sweep moves what is left into a new, small map.
	peak int

	// For a persisted ledger: the nonces a previous process accepted
	// (by nonce alone: they are random, and the record keeps no server
	// ID), until they expire, and where to record new ones.
	previous map[[NonceSize]byte]time.Time
	recorder NonceRecorder
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

// NonceRecorder keeps the nonces accepted for the next process.
// RecordNonce must have handed the nonce to the operating system when it
// returns; a sync is not needed: a killed process's writes survive in the
// page cache, and a machine that lost power takes longer to boot than the
// verifier's refusal of tokens stamped before its start leaves open.
type NonceRecorder interface {
	RecordNonce(server ServerID, nonce []byte, expiry time.Time) error
}

// PersistNonces makes v refuse, after a restart, the nonces the previous
// process accepted (previous: what rec recorded then, with their expiries),
// and record what v accepts through rec. Call it before v verifies
// anything.
func (v *Verifier) PersistNonces(previous map[[NonceSize]byte]time.Time, rec NonceRecorder) {
	l := v.nonces
	l.mu.Lock()
	defer l.mu.Unlock()
	l.previous = make(map[[NonceSize]byte]time.Time, len(previous))
	for n, exp := range previous {
		l.previous[n] = exp
	}
	l.recorder = rec
}

// Remember records nonce from server until expiry, and reports whether it
// was new. Expired entries are dropped at most once a second, keeping the
// cost per call constant on average. A persisted ledger also refuses the
// nonces a previous process accepted, and those it cannot record.
func (l *NonceLedger) Remember(server ServerID, nonce []byte, expiry, now time.Time) bool {
	k := nonceKey{server: server}
	copy(k.nonce[:], nonce)
	rec, fresh := l.reserve(k, expiry, now)
	if !fresh {
		return false
	}
	if rec == nil {
		return true
	}
	// Written before the token is accepted: a crash right after must not
	// leave it out. What cannot be written is refused, and forgotten, so
	// that the sender's retry can be accepted once recording works.
	if err := rec.RecordNonce(server, k.nonce[:], expiry); err != nil {
		l.forget(k)
		return false
	}
	return true
}

// reserve holds k as seen, if it is new, and returns where to record it.
// It is held while it is recorded, so that one token arriving twice at once
// is accepted once; the lock is not held while it is recorded, which may
// take a round trip to an event store shared by replicas, so other tokens
// do not wait for it.
func (l *NonceLedger) reserve(k nonceKey, expiry, now time.Time) (rec NonceRecorder, fresh bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.After(l.sweepAt) {
		for key, exp := range l.seen {
			if now.After(exp) {
				delete(l.seen, key)
			}
		}
		for n, exp := range l.previous {
			if now.After(exp) {
				delete(l.previous, n)
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
		return nil, false
	}
	if exp, ok := l.previous[k.nonce]; ok && !now.After(exp) {
		return nil, false
	}
	l.seen[k] = expiry
	l.peak = max(l.peak, len(l.seen))
	return l.recorder, true
}

// forget drops k, whose recording failed.
func (l *NonceLedger) forget(k nonceKey) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.seen, k)
}

// Len returns how many nonces are remembered.
func (l *NonceLedger) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.seen)
}
