package domain

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"time"
)

// DefaultAuthWindow is how far a token's time may be from now. The spec
// recommends about a minute.
const DefaultAuthWindow = 60 * time.Second

// NonceSize is the length of the nonce in Postbox's token extension.
const NonceSize = 16

// Operation is the federation call a token authorises.
type Operation int

// The federation calls.
const (
	OpPull Operation = iota + 1
	OpPush
	OpNotifyNewID
)

// Claims is what a federation token's signed AuthData says. The first two
// fields are upstream's; the rest are Postbox's wire-compatible extension.
type Claims struct {
	ServerID    string // unparsed: the verifier parses it
	Time        uint64 // UNIX seconds
	Audience    string
	Nonce       []byte
	NewServerID string
}

// Extended reports whether the token carries Postbox's extension.
func (c Claims) Extended() bool {
	return c.Audience != "" || len(c.Nonce) > 0 || c.NewServerID != ""
}

// SignedToken is a decoded federation token: the signed bytes, their
// signature, and the claims those bytes encode.
type SignedToken struct {
	Data   []byte
	Sig    []byte
	Claims Claims
}

// Caller is an authenticated federation caller.
type Caller struct {
	ServerID ServerID
	// Extended is true when the caller sent Postbox's token extension, so it
	// is a Postbox server that also speaks the sequence extension.
	Extended bool
	// Audience is the ID of this server the caller addressed (an extended
	// token's audience: the current ID or a recent former one); zero
	// without the extension.
	Audience ServerID
}

// PeerKeys finds the public key of a server. RefreshKey fetches it again,
// for a peer that may have rotated its key; it returns ok=false when a
// refetch is not allowed now (rate limit), so a forged token cannot make this
// server hammer a peer.
type PeerKeys interface {
	Key(ctx context.Context, id ServerID) (ed25519.PublicKey, error)
	RefreshKey(ctx context.Context, id ServerID) (key ed25519.PublicKey, ok bool, err error)
}

// AuthPolicy is how strict the verifier is.
type AuthPolicy struct {
	Window           time.Duration
	RequireExtension bool
	Access           AccessList
}

// Verifier checks federation tokens, as PROTOCOL.md §3 describes. It is
// safe for concurrent use.
type Verifier struct {
	policy  AuthPolicy
	clock   Clock
	keys    PeerKeys
	self    *Identity
	nonces  *NonceLedger
	started time.Time
}

// NewVerifier returns a verifier; tokens with the extension stamped before
// now are refused, so a restart (which forgets nonces) cannot reopen a
// replay window.
func NewVerifier(policy AuthPolicy, clock Clock, keys PeerKeys, self *Identity) *Verifier {
	if policy.Window <= 0 {
		policy.Window = DefaultAuthWindow
	}
	now := clock.Now()
	return &Verifier{
		policy:  policy,
		clock:   clock,
		keys:    keys,
		self:    self,
		nonces:  NewNonceLedger(),
		started: now.Truncate(time.Second),
	}
}

// Verify authenticates tok for op. For OpNotifyNewID, newServerID is the
// request's new ID, which the token must sign.
func (v *Verifier) Verify(ctx context.Context, tok SignedToken, op Operation, newServerID string) (Caller, error) {
	if len(tok.Sig) != ed25519.SignatureSize {
		return Caller{}, fmt.Errorf("%w: got %d bytes", ErrBadTokenSignature, len(tok.Sig))
	}
	c := tok.Claims
	id, err := ParseServerID(c.ServerID)
	if err != nil {
		return Caller{}, fmt.Errorf("%w: server_id: %w", ErrBadTokenData, err)
	}
	if !v.policy.Access.Allows(id) {
		return Caller{}, fmt.Errorf("%w: %s", ErrHostNotAllowed, id)
	}
	now := v.clock.Now()
	stamped := time.Unix(int64(min(c.Time, 1<<62)), 0)
	if skew := now.Sub(stamped).Abs(); skew > v.policy.Window {
		return Caller{}, fmt.Errorf("%w: token time is %s from now, window is %s", ErrBadAuth, skew.Truncate(time.Second), v.policy.Window)
	}
	if err := v.checkExtension(c, op, newServerID, now, stamped); err != nil {
		return Caller{}, err
	}
	if err := v.checkSignature(ctx, id, tok); err != nil {
		return Caller{}, err
	}
	// Nonces are recorded only after the signature verified, so nobody can
	// fill the ledger with tokens they could not sign.
	if len(c.Nonce) > 0 && !v.nonces.Remember(id, c.Nonce, stamped.Add(v.policy.Window), now) {
		return Caller{}, fmt.Errorf("%w: nonce seen before", ErrTokenReplayed)
	}
	caller := Caller{ServerID: id, Extended: c.Extended()}
	if caller.Extended {
		// checkExtension parsed it already.
		caller.Audience, _ = ParseServerID(c.Audience)
	}
	return caller, nil
}

func (v *Verifier) checkExtension(c Claims, op Operation, newServerID string, now, stamped time.Time) error {
	if !c.Extended() {
		switch {
		case op == OpNotifyNewID:
			return fmt.Errorf("%w: NotifyNewId must sign audience, nonce and new_server_id", ErrExtensionRequired)
		case v.policy.RequireExtension:
			return fmt.Errorf("%w: this server accepts only tokens with audience and nonce", ErrExtensionRequired)
		}
		return nil
	}
	if c.Audience == "" || len(c.Nonce) != NonceSize {
		return fmt.Errorf("%w: an extended token needs an audience and a %d-byte nonce", ErrExtensionRequired, NonceSize)
	}
	aud, err := ParseServerID(c.Audience)
	if err != nil {
		return fmt.Errorf("%w: audience: %w", ErrBadTokenData, err)
	}
	if !v.self.IsAudience(aud, now) {
		return fmt.Errorf("%w: token is for %s", ErrWrongAudience, aud)
	}
	if stamped.Before(v.started) {
		return fmt.Errorf("%w: token predates this server's start", ErrTokenReplayed)
	}
	if op == OpNotifyNewID && c.NewServerID != newServerID {
		return fmt.Errorf("%w: the token's new_server_id %q differs from the request's %q", ErrExtensionRequired, c.NewServerID, newServerID)
	}
	if op != OpNotifyNewID && c.NewServerID != "" {
		return fmt.Errorf("%w: new_server_id is only for NotifyNewId", ErrBadTokenData)
	}
	return nil
}

func (v *Verifier) checkSignature(ctx context.Context, id ServerID, tok SignedToken) error {
	key, err := v.keys.Key(ctx, id)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrKeyUnavailable, id, err)
	}
	if ed25519.Verify(key, tok.Data, tok.Sig) {
		return nil
	}
	// The peer may have rotated its key since it was cached.
	fresh, ok, err := v.keys.RefreshKey(ctx, id)
	switch {
	case err != nil && !errors.Is(err, context.Canceled):
		return fmt.Errorf("%w: signature failed with the cached key of %s, and refetching it failed: %w", ErrTokenVerifyFailure, id, err)
	case err != nil:
		return err
	case ok && ed25519.Verify(fresh, tok.Data, tok.Sig):
		return nil
	}
	return fmt.Errorf("%w: server %s", ErrTokenVerifyFailure, id)
}
