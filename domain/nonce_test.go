package domain

import (
	"errors"
	"maps"
	"sync"
	"testing"
	"time"
)

// memoryRecord is a NonceRecorder that outlives the verifiers of a test, as
// the data directory outlives a process.
type memoryRecord struct {
	mu     sync.Mutex
	nonces map[[NonceSize]byte]time.Time
	fail   error
}

func newMemoryRecord() *memoryRecord {
	return &memoryRecord{nonces: map[[NonceSize]byte]time.Time{}}
}

func (m *memoryRecord) RecordNonce(_ ServerID, nonce []byte, expiry time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	m.nonces[[NonceSize]byte(nonce)] = expiry
	return nil
}

// restart is a new process on the same record: a fresh verifier whose
// ledger starts from what the previous one recorded.
func (w *authWorld) restart(rec *memoryRecord) {
	w.verifier = NewVerifier(AuthPolicy{}, w.clock, w.keys, NewIdentity(w.self, DefaultAudienceGrace))
	rec.mu.Lock()
	previous := maps.Clone(rec.nonces)
	rec.mu.Unlock()
	w.verifier.PersistNonces(previous, rec)
}

func TestNonceReplayAcrossARestart(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		acceptAt  time.Duration // after the start of the token's second
		restartAt time.Duration // after the start of the token's second
	}{
		{"restart in the same second as the token", 100 * time.Millisecond, 900 * time.Millisecond},
		{"restart at the very start of the token's second", 0, 0},
		{"restart a second later", 300 * time.Millisecond, 1300 * time.Millisecond},
		{"restart just inside the auth window", 0, DefaultAuthWindow - time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// Given a server that accepted a token with a nonce,
			w := givenAServer(t, AuthPolicy{})
			rec := newMemoryRecord()
			w.restart(rec)
			w.clock.Advance(time.Second)
			tok := token(w.peerKey, w.extended(7))
			w.clock.Advance(tc.acceptAt)
			if _, err := w.verify(tok, OpPush, ""); err != nil {
				t.Fatalf("the token was refused the first time: %v", err)
			}
			// when the process dies and a new one starts,
			w.clock.Advance(tc.restartAt - tc.acceptAt)
			w.restart(rec)
			// then the same token is refused,
			if _, err := w.verify(tok, OpPush, ""); !errors.Is(err, ErrTokenReplayed) {
				t.Fatalf("the token was accepted again after a restart: %v", err)
			}
			// and a fresh token is accepted, even in that same second.
			if _, err := w.verify(token(w.peerKey, w.extended(8)), OpPush, ""); err != nil {
				t.Fatalf("a fresh token after the restart was refused: %v", err)
			}
		})
	}
}

func TestNonceThatCannotBeRecordedIsRefused(t *testing.T) {
	t.Parallel()
	// Given a server whose record cannot be written,
	w := givenAServer(t, AuthPolicy{})
	rec := newMemoryRecord()
	rec.fail = errors.New("no space left on device")
	w.restart(rec)
	w.clock.Advance(time.Second)
	// when a token with a nonce comes, then it is refused: after a restart
	// it could be replayed.
	if _, err := w.verify(token(w.peerKey, w.extended(1)), OpPush, ""); !errors.Is(err, ErrTokenReplayed) {
		t.Fatalf("a token whose nonce could not be recorded: got %v, want it refused", err)
	}
	// A plain upstream token has no nonce to record.
	if _, err := w.verify(token(w.peerKey, w.plain()), OpPush, ""); err != nil {
		t.Fatalf("a plain token: %v", err)
	}
}
