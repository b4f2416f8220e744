package domain

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// fakeKeys serves each peer's current key; a peer may rotate it after the
// verifier cached the old one.
type fakeKeys struct {
	mu        sync.Mutex
	cached    map[ServerID]ed25519.PublicKey
	current   map[ServerID]ed25519.PublicKey
	refreshes int
	refuse    bool // the rate limiter says no
}

func (k *fakeKeys) Key(_ context.Context, id ServerID) (ed25519.PublicKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if key, ok := k.cached[id]; ok {
		return key, nil
	}
	key, ok := k.current[id]
	if !ok {
		return nil, errors.New("connection refused")
	}
	k.cached[id] = key
	return key, nil
}

func (k *fakeKeys) RefreshKey(_ context.Context, id ServerID) (ed25519.PublicKey, bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.refreshes++
	if k.refuse {
		return nil, false, nil
	}
	key := k.current[id]
	k.cached[id] = key
	return key, true, nil
}

func keyFromSeed(b byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{b}, ed25519.SeedSize))
}

type authWorld struct {
	t        *testing.T
	clock    *fakeClock
	keys     *fakeKeys
	verifier *Verifier
	self     ServerID
	peer     ServerID
	peerKey  ed25519.PrivateKey
}

// givenAServer returns a verifier for self.example:2289 that has started,
// and one peer, sender.example:2289, whose key it can fetch.
func givenAServer(t *testing.T, policy AuthPolicy) *authWorld {
	t.Helper()
	w := &authWorld{
		t:       t,
		clock:   &fakeClock{now: time.Unix(1_700_000_000, 0)},
		self:    MustParseServerID("self.example:2289"),
		peer:    MustParseServerID("sender.example:2289"),
		peerKey: keyFromSeed(1),
	}
	w.keys = &fakeKeys{
		cached:  map[ServerID]ed25519.PublicKey{},
		current: map[ServerID]ed25519.PublicKey{w.peer: w.peerKey.Public().(ed25519.PublicKey)},
	}
	w.verifier = NewVerifier(policy, w.clock, w.keys, NewIdentity(w.self, DefaultAudienceGrace))
	w.clock.Advance(time.Second)
	return w
}

// token signs claims with key; Data is any byte encoding of the claims,
// since the verifier checks the signature over Data and takes the claims
// from the decoder.
func token(key ed25519.PrivateKey, c Claims) SignedToken {
	data := []byte(fmt.Sprintf("%q|%d|%q|%x|%q", c.ServerID, c.Time, c.Audience, c.Nonce, c.NewServerID))
	return SignedToken{Data: data, Sig: ed25519.Sign(key, data), Claims: c}
}

func (w *authWorld) plain() Claims {
	return Claims{ServerID: w.peer.String(), Time: uint64(w.clock.Now().Unix())}
}

func (w *authWorld) extended(nonce byte) Claims {
	c := w.plain()
	c.Audience = w.self.String()
	c.Nonce = bytes.Repeat([]byte{nonce}, NonceSize)
	return c
}

func (w *authWorld) verify(tok SignedToken, op Operation, newID string) (Caller, error) {
	return w.verifier.Verify(context.Background(), tok, op, newID)
}

func TestVerifier(t *testing.T) {
	t.Parallel()
	type when func(w *authWorld) (Caller, error)
	cases := []struct {
		name   string
		policy AuthPolicy
		when   when
		then   error // nil: accepted
	}{
		{"a plain upstream token is accepted", AuthPolicy{}, func(w *authWorld) (Caller, error) {
			return w.verify(token(w.peerKey, w.plain()), OpPull, "")
		}, nil},
		{"an extended token is accepted", AuthPolicy{}, func(w *authWorld) (Caller, error) {
			return w.verify(token(w.peerKey, w.extended(1)), OpPush, "")
		}, nil},
		{"a 63-byte signature is refused", AuthPolicy{}, func(w *authWorld) (Caller, error) {
			tok := token(w.peerKey, w.plain())
			tok.Sig = tok.Sig[:63]
			return w.verify(tok, OpPull, "")
		}, ErrBadTokenSignature},
		{"a malformed server ID is refused", AuthPolicy{}, func(w *authWorld) (Caller, error) {
			c := w.plain()
			c.ServerID = "sender.example"
			return w.verify(token(w.peerKey, c), OpPull, "")
		}, ErrBadTokenData},
		{"a token 61 s old is refused", AuthPolicy{}, func(w *authWorld) (Caller, error) {
			c := w.plain()
			c.Time -= 61
			return w.verify(token(w.peerKey, c), OpPull, "")
		}, ErrBadAuth},
		{"a token 61 s ahead is refused", AuthPolicy{}, func(w *authWorld) (Caller, error) {
			c := w.plain()
			c.Time += 61
			return w.verify(token(w.peerKey, c), OpPull, "")
		}, ErrBadAuth},
		{"a token 60 s old is accepted", AuthPolicy{}, func(w *authWorld) (Caller, error) {
			c := w.plain()
			c.Time -= 60
			return w.verify(token(w.peerKey, c), OpPull, "")
		}, nil},
		{"a configured window applies", AuthPolicy{Window: 10 * time.Second}, func(w *authWorld) (Caller, error) {
			c := w.plain()
			c.Time -= 11
			return w.verify(token(w.peerKey, c), OpPull, "")
		}, ErrBadAuth},
		{"a token signed with the wrong key is refused", AuthPolicy{}, func(w *authWorld) (Caller, error) {
			return w.verify(token(keyFromSeed(9), w.plain()), OpPull, "")
		}, ErrTokenVerifyFailure},
		{"a key rotated at the peer is refetched once", AuthPolicy{}, func(w *authWorld) (Caller, error) {
			if _, err := w.verify(token(w.peerKey, w.plain()), OpPull, ""); err != nil {
				return Caller{}, err
			}
			w.peerKey = keyFromSeed(2)
			w.keys.current[w.peer] = w.peerKey.Public().(ed25519.PublicKey)
			c, err := w.verify(token(w.peerKey, w.plain()), OpPull, "")
			if w.keys.refreshes != 1 {
				w.t.Errorf("refreshes = %d, want 1", w.keys.refreshes)
			}
			return c, err
		}, nil},
		{"a refused refetch leaves the token unverified", AuthPolicy{}, func(w *authWorld) (Caller, error) {
			w.keys.refuse = true
			return w.verify(token(keyFromSeed(9), w.plain()), OpPull, "")
		}, ErrTokenVerifyFailure},
		{"an unreachable key is key-unavailable", AuthPolicy{}, func(w *authWorld) (Caller, error) {
			c := w.plain()
			c.ServerID = "stranger.example:2289"
			return w.verify(token(w.peerKey, c), OpPull, "")
		}, ErrKeyUnavailable},
		{"a reused nonce is refused", AuthPolicy{}, func(w *authWorld) (Caller, error) {
			tok := token(w.peerKey, w.extended(7))
			if _, err := w.verify(tok, OpPush, ""); err != nil {
				return Caller{}, err
			}
			return w.verify(tok, OpPush, "")
		}, ErrTokenReplayed},
		{"an audience naming another server is refused", AuthPolicy{}, func(w *authWorld) (Caller, error) {
			c := w.extended(1)
			c.Audience = "third.example:2289"
			return w.verify(token(w.peerKey, c), OpPush, "")
		}, ErrWrongAudience},
		{"two identical plain tokens in one second are both accepted", AuthPolicy{}, func(w *authWorld) (Caller, error) {
			tok := token(w.peerKey, w.plain())
			if _, err := w.verify(tok, OpPush, ""); err != nil {
				return Caller{}, err
			}
			return w.verify(token(w.peerKey, w.plain()), OpPush, "")
		}, nil},
		{"a blocked host is refused", AuthPolicy{Access: mustAccess(nil, []string{"sender.example"})}, func(w *authWorld) (Caller, error) {
			return w.verify(token(w.peerKey, w.plain()), OpPull, "")
		}, ErrHostNotAllowed},
		{"a host outside the allow list is refused", AuthPolicy{Access: mustAccess([]string{"friend.example"}, nil)}, func(w *authWorld) (Caller, error) {
			return w.verify(token(w.peerKey, w.plain()), OpPull, "")
		}, ErrHostNotAllowed},
		{"a plain token is refused when the extension is required", AuthPolicy{RequireExtension: true}, func(w *authWorld) (Caller, error) {
			return w.verify(token(w.peerKey, w.plain()), OpPull, "")
		}, ErrExtensionRequired},
		{"an extended token without a nonce is refused", AuthPolicy{}, func(w *authWorld) (Caller, error) {
			c := w.extended(1)
			c.Nonce = nil
			return w.verify(token(w.peerKey, c), OpPull, "")
		}, ErrExtensionRequired},
		{"NotifyNewId with a plain token is refused", AuthPolicy{}, func(w *authWorld) (Caller, error) {
			return w.verify(token(w.peerKey, w.plain()), OpNotifyNewID, "new.example:2289")
		}, ErrExtensionRequired},
		{"NotifyNewId signing another new ID is refused", AuthPolicy{}, func(w *authWorld) (Caller, error) {
			c := w.extended(1)
			c.NewServerID = "other.example:2289"
			return w.verify(token(w.peerKey, c), OpNotifyNewID, "new.example:2289")
		}, ErrExtensionRequired},
		{"NotifyNewId signing its new ID is accepted", AuthPolicy{}, func(w *authWorld) (Caller, error) {
			c := w.extended(1)
			c.NewServerID = "new.example:2289"
			return w.verify(token(w.peerKey, c), OpNotifyNewID, "new.example:2289")
		}, nil},
		{"an extended token stamped before this server started is refused", AuthPolicy{}, func(w *authWorld) (Caller, error) {
			c := w.extended(1)
			c.Time -= 2
			return w.verify(token(w.peerKey, c), OpPush, "")
		}, ErrTokenReplayed},
		{"a token for this server's earlier ID is accepted within the grace period", AuthPolicy{}, func(w *authWorld) (Caller, error) {
			w.verifier.self.Rename(MustParseServerID("renamed.example:2289"), w.clock.Now())
			return w.verify(token(w.peerKey, w.extended(3)), OpPush, "")
		}, nil},
		{"a token for this server's earlier ID is refused after the grace period", AuthPolicy{}, func(w *authWorld) (Caller, error) {
			w.verifier.self.Rename(MustParseServerID("renamed.example:2289"), w.clock.Now().Add(-DefaultAudienceGrace-time.Second))
			return w.verify(token(w.peerKey, w.extended(3)), OpPush, "")
		}, ErrWrongAudience},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := givenAServer(t, tc.policy)
			caller, err := tc.when(w)
			if tc.then == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if caller.ServerID != w.peer {
					t.Fatalf("caller %v, want %v", caller.ServerID, w.peer)
				}
				return
			}
			if !errors.Is(err, tc.then) {
				t.Fatalf("error %v, want %v", err, tc.then)
			}
		})
	}
}

// Given a server renamed from old to self, when a peer calls addressing
// either ID with the extension, or with a plain token, then the caller
// says which ID it addressed (none for a plain token): a first contact is
// registered as knowing that one.
func TestTheCallerSaysWhichOfOurIDsItAddressed(t *testing.T) {
	t.Parallel()
	w := givenAServer(t, AuthPolicy{})
	old := MustParseServerID("old.example:2289")
	identity := NewIdentity(old, DefaultAudienceGrace)
	identity.Rename(w.self, w.clock.Now())
	w.verifier = NewVerifier(AuthPolicy{}, w.clock, w.keys, identity)
	w.clock.Advance(time.Second)
	toOld := w.extended(1)
	toOld.Audience = old.String()
	for _, tc := range []struct {
		name   string
		claims Claims
		want   Caller
	}{
		{"addressed to the former ID", toOld, Caller{ServerID: w.peer, Extended: true, Audience: old}},
		{"addressed to the current ID", w.extended(2), Caller{ServerID: w.peer, Extended: true, Audience: w.self}},
		{"a plain token", w.plain(), Caller{ServerID: w.peer}},
	} {
		got, err := w.verify(token(w.peerKey, tc.claims), OpPush, "")
		if err != nil || got != tc.want {
			t.Errorf("%s: %+v, %v; want %+v", tc.name, got, err, tc.want)
		}
	}
}

func TestNonceExpiresWithItsToken(t *testing.T) {
	t.Parallel()
	l := NewNonceLedger()
	id := MustParseServerID("a.example:1")
	nonce := bytes.Repeat([]byte{1}, NonceSize)
	t0 := time.Unix(1000, 0)
	if !l.Remember(id, nonce, t0.Add(time.Minute), t0) {
		t.Fatal("a new nonce was refused")
	}
	if l.Remember(id, nonce, t0.Add(time.Minute), t0.Add(59*time.Second)) {
		t.Fatal("a nonce was accepted twice inside its window")
	}
	if !l.Remember(MustParseServerID("b.example:1"), nonce, t0.Add(time.Minute), t0) {
		t.Fatal("nonces are per sender")
	}
	if !l.Remember(id, nonce, t0.Add(3*time.Minute), t0.Add(2*time.Minute)) {
		t.Fatal("an expired nonce is still remembered")
	}
	if l.Len() != 1 {
		t.Fatalf("expired nonces are not swept: %d left", l.Len())
	}
}

func mustAccess(allow, block []string) AccessList {
	l, err := NewAccessList(allow, block)
	if err != nil {
		panic(err)
	}
	return l
}

func TestNonceLedgerShrinksAfterABurst(t *testing.T) {
	t.Parallel()
	l := NewNonceLedger()
	id := MustParseServerID("a.example:1")
	t0 := time.Unix(1000, 0)
	nonce := func(i int) []byte {
		b := make([]byte, NonceSize)
		binary.BigEndian.PutUint64(b, uint64(i))
		return b
	}
	// Given a burst of nonces that expire together,
	for i := range 2 * nonceLedgerMinPeak {
		l.Remember(id, nonce(i), t0.Add(time.Minute), t0)
	}
	// and one that outlives them,
	l.Remember(id, nonce(-1), t0.Add(time.Hour), t0)
	// when the burst has expired and the next token arrives,
	later := t0.Add(2 * time.Minute)
	if !l.Remember(id, nonce(0), later.Add(time.Minute), later) {
		t.Fatal("an expired nonce is still remembered")
	}
	// then the ledger holds what is alive in a map sized for it, and
	// still refuses what it holds.
	if l.Len() != 2 || l.peak != 2 {
		t.Fatalf("after the burst: %d entries, peak %d; want 2 and 2", l.Len(), l.peak)
	}
	if l.Remember(id, nonce(-1), t0.Add(time.Hour), later) {
		t.Fatal("a live nonce was forgotten when the ledger shrank")
	}
}
