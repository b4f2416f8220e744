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

// blockingRecord records nonces, holding the one equal to block until
// release is closed, and failing while fail is set.
type blockingRecord struct {
	block   [NonceSize]byte
	entered chan struct{}
	release chan struct{}
	mu      sync.Mutex
	fail    error
}

func (b *blockingRecord) RecordNonce(_ ServerID, nonce []byte, _ time.Time) error {
	if [NonceSize]byte(nonce) == b.block {
		close(b.entered)
		<-b.release
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.fail
}

// Recording a nonce may take a round trip to a shared store: other tokens
// do not wait for it, the same token arriving meanwhile is refused, and a
// token whose nonce could not be recorded is accepted when it comes again
// and recording works.
func TestRecordingANonceHoldsUpNoOtherToken(t *testing.T) {
	t.Parallel()
	server := MustParseServerID("b.example:2289")
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	slow, other := [NonceSize]byte{1}, [NonceSize]byte{2}
	rec := &blockingRecord{block: slow, entered: make(chan struct{}), release: make(chan struct{})}
	l := NewNonceLedger()
	l.recorder = rec

	// Given a token whose nonce is being recorded,
	first := make(chan bool, 1)
	go func() { first <- l.Remember(server, slow[:], now.Add(time.Minute), now) }()
	select {
	case <-rec.entered:
	case ok := <-first:
		t.Fatalf("a fresh token was not recorded (accepted: %v)", ok)
	}
	// when another token comes, then it is accepted without waiting,
	done := make(chan bool, 1)
	go func() { done <- l.Remember(server, other[:], now.Add(time.Minute), now) }()
	select {
	case ok := <-done:
		if !ok {
			t.Fatal("another token was refused")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("another token waited for the recording of the first")
	}
	// and the same token again is refused;
	if l.Remember(server, slow[:], now.Add(time.Minute), now) {
		t.Fatal("a token being recorded was accepted a second time")
	}
	close(rec.release)
	if !<-first {
		t.Fatal("the first token was refused")
	}

	// a token whose nonce cannot be recorded is refused,
	third := [NonceSize]byte{3}
	rec.mu.Lock()
	rec.fail = errors.New("store unavailable")
	rec.mu.Unlock()
	if l.Remember(server, third[:], now.Add(time.Minute), now) {
		t.Fatal("a token whose nonce was not recorded was accepted")
	}
	// and accepted when it comes again once recording works.
	rec.mu.Lock()
	rec.fail = nil
	rec.mu.Unlock()
	if !l.Remember(server, third[:], now.Add(time.Minute), now) {
		t.Fatal("the retry of a token whose recording failed was refused")
	}
	if l.Remember(server, third[:], now.Add(time.Minute), now) {
		t.Fatal("a token was accepted twice")
	}
}
