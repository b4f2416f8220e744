// Package peerkeys finds the Ed25519 public keys of other servers by calling
// their AuthService.Key, and remembers them. Because the server ID comes from
// the caller, fetching is an outbound request a stranger chooses, so it is
// guarded: no private or loopback addresses unless allowed, bounded time and
// reply size, a global and a per-peer rate limit, and failures remembered.
package peerkeys

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/harmony-postbox/postbox/adapters/hrpc"
	"github.com/harmony-postbox/postbox/adapters/netguard"
	"github.com/harmony-postbox/postbox/adapters/rpcerrors"
	"github.com/harmony-postbox/postbox/domain"
	authv1 "github.com/harmony-postbox/postbox/gen/protocol/auth/v1"
)

// KeyProcedure is the path of AuthService.Key.
const KeyProcedure = "/protocol.auth.v1.AuthService/Key"

// Config tunes the resolver.
type Config struct {
	// Insecure fetches over http:// and allows any address: for loopback
	// work (--insecure-peers, Plaintext and every network).
	Insecure bool
	// Plaintext fetches over http://.
	Plaintext bool
	// Guard decides which addresses may be dialled; nil: public addresses
	// and the servers Access names exactly (every address if Insecure).
	Guard *netguard.Guard
	// Access lists servers; one named exactly may be private (used only
	// when Guard is nil).
	Access domain.AccessList
	// TLS is the client TLS configuration (roots include --peer-ca).
	TLS *tls.Config
	// Transport, if set, carries every fetch instead of dialling: for a
	// simulated network (adapters/simnet). Guard, Access and TLS then do
	// not apply; never set from configuration.
	Transport http.RoundTripper
	// FetchTimeout bounds one fetch, dial to last byte.
	FetchTimeout time.Duration
	// RefreshEvery is the least time between two refetches of one peer's key.
	RefreshEvery time.Duration
	// FailureTTL is how long a failed fetch is remembered.
	FailureTTL time.Duration
	// FetchesPerSecond and Burst cap fetches of known peers' keys.
	FetchesPerSecond float64
	Burst            int
	// UnknownPerSecond, UnknownBurst and UnknownInFlight cap fetches for IDs
	// never seen before (no key, and unknown to KnownPeers): a budget of
	// their own, so tokens naming forged IDs spend only it, never what
	// known peers' fetches need.
	UnknownPerSecond float64
	UnknownBurst     int
	UnknownInFlight  int
}

// DefaultConfig returns conservative limits.
func DefaultConfig() Config {
	return Config{
		FetchTimeout:     5 * time.Second,
		RefreshEvery:     time.Minute,
		FailureTTL:       30 * time.Second,
		FetchesPerSecond: 20,
		Burst:            40,
		UnknownPerSecond: 5,
		UnknownBurst:     10,
		UnknownInFlight:  4,
	}
}

// maxKeyReply bounds a Key reply: 32 bytes of key plus framing.
const maxKeyReply = 1024

// ErrRateLimited is returned when the fetch budget is spent.
var ErrRateLimited = errors.New("key fetch rate limit reached")

// rateLimited refuses a fetch over a budget as a busy server does, so the
// caller is answered 429 with RetryInfo and waits, rather than counting a
// failure toward queue mode: a burst of real first contacts is only slowed.
func rateLimited(budget string) error {
	return fmt.Errorf("%w: %w", ErrRateLimited, &rpcerrors.Busy{Budget: budget, RetryAfter: time.Second})
}

// Observer learns of every key fetched, so it can be recorded.
type Observer interface {
	KeyFetched(ctx context.Context, id domain.ServerID, key ed25519.PublicKey)
}

// Resolver implements domain.PeerKeys. It is safe for concurrent use.
type Resolver struct {
	cfg      Config
	clock    domain.Clock
	logger   *slog.Logger
	client   *http.Client
	observer Observer
	budget   *tokenBucket // known peers
	unknown  *tokenBucket // IDs never seen before
	slots    chan struct{}
	known    KnownPeers

	mu      sync.Mutex
	entries map[domain.ServerID]*entry
}

type entry struct {
	// lock serializes fetches of one peer: full while held. A channel
	// rather than a mutex, so a caller waiting behind a fetch gives up when
	// its context ends, and so that inside a testing/synctest bubble the
	// wait is durable and virtual time can pass for the fetch it waits on.
	lock        chan struct{}
	key         ed25519.PublicKey
	lastFetch   time.Time
	failedUntil time.Time
	failure     error
}

// New returns a resolver. observer may be nil.
func New(cfg Config, clock domain.Clock, logger *slog.Logger, observer Observer) *Resolver {
	def := DefaultConfig()
	if cfg.FetchTimeout <= 0 {
		cfg.FetchTimeout = def.FetchTimeout
	}
	if cfg.FailureTTL <= 0 {
		cfg.FailureTTL = def.FailureTTL
	}
	if cfg.FetchesPerSecond <= 0 {
		cfg.FetchesPerSecond, cfg.Burst = def.FetchesPerSecond, def.Burst
	}
	if cfg.UnknownPerSecond <= 0 {
		cfg.UnknownPerSecond, cfg.UnknownBurst = def.UnknownPerSecond, def.UnknownBurst
	}
	if cfg.UnknownInFlight <= 0 {
		cfg.UnknownInFlight = def.UnknownInFlight
	}
	guard := cfg.Guard
	if guard == nil {
		guard = netguard.New(nil, cfg.Access)
		if cfg.Insecure {
			guard = netguard.New(netguard.Everything, cfg.Access)
		}
	}
	return &Resolver{
		cfg:      cfg,
		clock:    clock,
		logger:   logger,
		client:   newClient(cfg, guard.DialContext(cfg.FetchTimeout)),
		observer: observer,
		budget:   newTokenBucket(cfg.FetchesPerSecond, cfg.Burst, clock.Now()),
		unknown:  newTokenBucket(cfg.UnknownPerSecond, cfg.UnknownBurst, clock.Now()),
		slots:    make(chan struct{}, cfg.UnknownInFlight),
		entries:  make(map[domain.ServerID]*entry),
	}
}

func newClient(cfg Config, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *http.Client {
	t := &http.Transport{
		// A clone per transport: transports write their ALPN protocols into
		// the config, so a shared one would offer "h2" to HTTP/1-only ones.
		TLSClientConfig:        cfg.TLS.Clone(),
		TLSHandshakeTimeout:    cfg.FetchTimeout,
		ResponseHeaderTimeout:  cfg.FetchTimeout,
		MaxResponseHeaderBytes: 16 << 10,
		// Key fetches are rare; idle connections would only outlive their use.
		DisableKeepAlives: true,
		// No proxy: the guard must judge the peer's address, not a proxy's.
		Proxy:       nil,
		DialContext: dial,
	}
	var transport http.RoundTripper = t
	if cfg.Transport != nil {
		transport = cfg.Transport
	}
	return &http.Client{
		Transport: transport,
		Timeout:   cfg.FetchTimeout,
		// A redirect could point anywhere, past the address guard's intent.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// KnownPeers tells the IDs this server already deals with (its registry),
// whose first key fetch uses the known peers' budget.
type KnownPeers interface {
	Knows(id domain.ServerID) bool
}

// WithKnownPeers makes first fetches for k's IDs use the known peers'
// budget. Call it before use.
func (r *Resolver) WithKnownPeers(k KnownPeers) *Resolver {
	r.known = k
	return r
}

// Remember seeds the resolver with a key already known, such as one read
// back from the event store at startup.
func (r *Resolver) Remember(id domain.ServerID, key ed25519.PublicKey) {
	e := r.entry(id)
	e.lock <- struct{}{}
	e.key = key
	<-e.lock
}

// acquire takes e's lock, unless ctx ends first.
func (e *entry) acquire(ctx context.Context) error {
	select {
	case e.lock <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for a key fetch in progress: %w", ctx.Err())
	}
}

func (e *entry) release() { <-e.lock }

func (r *Resolver) entry(id domain.ServerID) *entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entries[id]
	if !ok {
		if len(r.entries) >= maxEntries {
			r.pruneLocked()
		}
		e = &entry{lock: make(chan struct{}, 1)}
		r.entries[id] = e
	}
	return e
}

// maxEntries bounds the cache: callers choose the IDs, so entries for IDs
// that never yielded a key are dropped once it fills.
const maxEntries = 10000

func (r *Resolver) pruneLocked() {
	for id, e := range r.entries {
		select {
		case e.lock <- struct{}{}:
			if e.key == nil {
				delete(r.entries, id)
			}
			<-e.lock
		default: // a fetch is under way
		}
	}
}

// Key returns id's key, fetching it on first use.
func (r *Resolver) Key(ctx context.Context, id domain.ServerID) (ed25519.PublicKey, error) {
	e := r.entry(id)
	if err := e.acquire(ctx); err != nil {
		return nil, err
	}
	defer e.release()
	if e.key != nil {
		return e.key, nil
	}
	now := r.clock.Now()
	if now.Before(e.failedUntil) {
		return nil, fmt.Errorf("recent fetch failed: %w", e.failure)
	}
	return r.fetchLocked(ctx, id, e, now)
}

// RefreshKey fetches id's key again, at most once per RefreshEvery.
func (r *Resolver) RefreshKey(ctx context.Context, id domain.ServerID) (ed25519.PublicKey, bool, error) {
	e := r.entry(id)
	if err := e.acquire(ctx); err != nil {
		return nil, false, err
	}
	defer e.release()
	now := r.clock.Now()
	if !e.lastFetch.IsZero() && now.Sub(e.lastFetch) < r.cfg.RefreshEvery {
		return nil, false, nil
	}
	key, err := r.fetchLocked(ctx, id, e, now)
	if err != nil {
		return nil, false, err
	}
	return key, true, nil
}

func (r *Resolver) fetchLocked(ctx context.Context, id domain.ServerID, e *entry, now time.Time) (ed25519.PublicKey, error) {
	if e.key != nil || (r.known != nil && r.known.Knows(id)) {
		if !r.budget.take(now) {
			return nil, rateLimited("key fetches")
		}
	} else {
		// Never seen: anyone can name such an ID in a token.
		select {
		case r.slots <- struct{}{}:
			defer func() { <-r.slots }()
		default:
			return nil, rateLimited("key fetches in flight for servers not seen before")
		}
		if !r.unknown.take(now) {
			return nil, rateLimited("key fetches for servers not seen before")
		}
	}
	e.lastFetch = now
	key, err := r.Fetch(ctx, id)
	if err != nil {
		if ctx.Err() == nil {
			e.failure, e.failedUntil = err, now.Add(r.cfg.FailureTTL)
		}
		r.logger.Warn("peer key fetch failed", "peer", id.String(), "err", err)
		return nil, err
	}
	if e.key != nil && !e.key.Equal(key) {
		r.logger.Info("peer key changed", "peer", id.String())
	}
	e.key, e.failure, e.failedUntil = key, nil, time.Time{}
	if r.observer != nil {
		r.observer.KeyFetched(ctx, id, key)
	}
	return key, nil
}

// Fetch calls id's AuthService.Key now, bypassing the cache (but not the
// address guard). NotifyNewId uses it to check that a new ID serves the
// same key.
func (r *Resolver) Fetch(ctx context.Context, id domain.ServerID) (ed25519.PublicKey, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.FetchTimeout)
	defer cancel()
	var res authv1.KeyResponse
	err := hrpc.Call(ctx, r.client, id.URL(!r.cfg.Insecure && !r.cfg.Plaintext), KeyProcedure, nil, &authv1.KeyRequest{}, &res, maxKeyReply)
	if err != nil {
		return nil, fmt.Errorf("fetch key of %s: %w", id, err)
	}
	if len(res.GetKey()) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("fetch key of %s: got %d bytes, want a raw %d-byte Ed25519 key", id, len(res.GetKey()), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(res.GetKey()), nil
}

// tokenBucket is a small rate limiter on the injected clock.
type tokenBucket struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func newTokenBucket(rate float64, burst int, now time.Time) *tokenBucket {
	return &tokenBucket{rate: rate, burst: float64(max(burst, 1)), tokens: float64(max(burst, 1)), last: now}
}

func (b *tokenBucket) take(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.After(b.last) {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
