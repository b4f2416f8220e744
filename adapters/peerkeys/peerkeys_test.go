package peerkeys

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/federation"
	"github.com/harmony-postbox/postbox/adapters/hrpc"
	"github.com/harmony-postbox/postbox/adapters/netguard"
	"github.com/harmony-postbox/postbox/domain"
	"github.com/harmony-postbox/postbox/gen/protocol/auth/v1/authv1connect"
)

type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// keyServer serves AuthService.Key over hRPC on loopback and counts calls.
type keyServer struct {
	id    domain.ServerID
	calls atomic.Int64
	mu    sync.Mutex
	key   ed25519.PublicKey
}

func startKeyServer(t *testing.T, seed byte) *keyServer {
	ks, _ := startKeyServerTLS(t, seed, false)
	return ks
}

// startKeyServerTLS starts a key server, over TLS if secure; it returns the
// client TLS configuration that trusts it.
func startKeyServerTLS(t *testing.T, seed byte, secure bool) (*keyServer, *tls.Config) {
	t.Helper()
	ks := &keyServer{}
	ks.setKey(seed)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ks.calls.Add(1)
		ks.mu.Lock()
		key := ks.key
		ks.mu.Unlock()
		svc := federation.NewKeyService(key)
		hrpc.NewHandler(slog.New(slog.DiscardHandler), hrpc.Options{},
			hrpc.Unary(authv1connect.AuthServiceKeyProcedure, svc.Key)).ServeHTTP(w, r)
	}))
	var clientTLS *tls.Config
	if secure {
		srv.StartTLS()
		clientTLS = srv.Client().Transport.(*http.Transport).TLSClientConfig
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	ks.id = domain.MustParseServerID(strings.TrimPrefix(strings.TrimPrefix(srv.URL, "http://"), "https://"))
	return ks, clientTLS
}

func (ks *keyServer) setKey(seed byte) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.key = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, 32)).Public().(ed25519.PublicKey)
}

func newResolver(cfg Config, clock *testClock) *Resolver {
	return New(cfg, clock, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
}

func TestLoopbackPeerIsNotFetchedUnlessAllowed(t *testing.T) {
	t.Parallel()
	ks := startKeyServer(t, 1)
	clock := &testClock{now: time.Unix(1_700_000_000, 0)}

	guarded := newResolver(DefaultConfig(), clock)
	_, err := guarded.Key(t.Context(), ks.id)
	if !errors.Is(err, ErrAddressRefused) {
		t.Fatalf("guarded fetch of %s: %v, want ErrAddressRefused", ks.id, err)
	}
	localhost := domain.MustParseServerID("localhost:" + strings.Split(ks.id.String(), ":")[1])
	if _, err := guarded.Key(t.Context(), localhost); !errors.Is(err, ErrAddressRefused) {
		t.Fatalf("a name resolving to loopback: %v, want ErrAddressRefused", err)
	}
	if n := ks.calls.Load(); n != 0 {
		t.Fatalf("the key server got %d requests; the guard must refuse before connecting", n)
	}

	tlsServer, clientTLS := startKeyServerTLS(t, 1, true)
	cfg := DefaultConfig()
	cfg.TLS = clientTLS
	cfg.Access, _ = domain.NewAccessList([]string{tlsServer.id.String()}, nil)
	allowed := newResolver(cfg, clock)
	if _, err := allowed.Key(t.Context(), tlsServer.id); err != nil {
		t.Fatalf("an allow-listed loopback peer over TLS: %v", err)
	}

	// A wildcard entry vouches for no address; an allowed network does.
	wildcard := DefaultConfig()
	wildcard.Plaintext = true
	wildcard.Access, _ = domain.NewAccessList([]string{"*.localhost"}, nil)
	if _, err := newResolver(wildcard, clock).Fetch(t.Context(), localhost); !errors.Is(err, ErrAddressRefused) {
		t.Fatalf("a loopback peer under a wildcard entry: %v, want ErrAddressRefused", err)
	}
	networks := DefaultConfig()
	networks.Plaintext = true
	loop, _ := netguard.ParseNetworks([]string{"127.0.0.0/8"})
	networks.Guard = netguard.New(loop, domain.AccessList{})
	if _, err := newResolver(networks, clock).Fetch(t.Context(), ks.id); err != nil {
		t.Fatalf("a loopback peer with 127.0.0.0/8 allowed: %v", err)
	}
}

func TestKeysAreCachedAndRefreshedAtMostOncePerInterval(t *testing.T) {
	t.Parallel()
	ks := startKeyServer(t, 1)
	clock := &testClock{now: time.Unix(1_700_000_000, 0)}
	cfg := DefaultConfig()
	cfg.Insecure = true
	r := newResolver(cfg, clock)
	ctx := t.Context()

	first, err := r.Key(ctx, ks.id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Key(ctx, ks.id); err != nil || ks.calls.Load() != 1 {
		t.Fatalf("the second lookup fetched again (calls=%d, err=%v)", ks.calls.Load(), err)
	}
	ks.setKey(2)
	if _, ok, _ := r.RefreshKey(ctx, ks.id); ok {
		t.Fatal("a refresh right after a fetch was allowed")
	}
	clock.Advance(cfg.RefreshEvery)
	fresh, ok, err := r.RefreshKey(ctx, ks.id)
	if err != nil || !ok || fresh.Equal(first) {
		t.Fatalf("refresh after the interval: ok=%v err=%v changed=%v", ok, err, !fresh.Equal(first))
	}
	if cached, _ := r.Key(ctx, ks.id); !cached.Equal(fresh) {
		t.Fatal("the refreshed key did not replace the cached one")
	}
}

func TestFailuresAreRememberedAndFetchesAreBudgeted(t *testing.T) {
	t.Parallel()
	clock := &testClock{now: time.Unix(1_700_000_000, 0)}
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		calls.Add(1)
		w.WriteHeader(http.StatusBadGateway)
	}))
	t.Cleanup(srv.Close)
	id := domain.MustParseServerID(strings.TrimPrefix(srv.URL, "http://"))
	cfg := DefaultConfig()
	cfg.Insecure = true
	cfg.UnknownPerSecond, cfg.UnknownBurst = 1, 2
	r := newResolver(cfg, clock)
	ctx := context.Background()

	if _, err := r.Key(ctx, id); err == nil {
		t.Fatal("a failing peer yielded a key")
	}
	if _, err := r.Key(ctx, id); err == nil || calls.Load() != 1 {
		t.Fatalf("a recent failure was not remembered: calls=%d", calls.Load())
	}
	// The unknown IDs' budget (burst 2, one already spent) stops a flood
	// of distinct IDs from turning into a flood of fetches.
	other := domain.MustParseServerID("127.0.0.1:1")
	r.Key(ctx, other)
	if _, err := r.Key(ctx, domain.MustParseServerID("127.0.0.1:2")); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("fetch over budget: %v, want ErrRateLimited", err)
	}
}

func TestKeyOfTheWrongSizeIsRefused(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", hrpc.ContentType)
		w.Write([]byte{0x0a, 0x03, 1, 2, 3}) // KeyResponse{key: 3 bytes}
	}))
	t.Cleanup(srv.Close)
	cfg := DefaultConfig()
	cfg.Insecure = true
	r := newResolver(cfg, &testClock{now: time.Unix(1, 0)})
	if _, err := r.Fetch(t.Context(), domain.MustParseServerID(strings.TrimPrefix(srv.URL, "http://"))); err == nil || !strings.Contains(err.Error(), "32-byte") {
		t.Fatalf("a 3-byte key: %v", err)
	}
}

// knownSet is a KnownPeers of fixed IDs.
type knownSet map[domain.ServerID]bool

func (k knownSet) Knows(id domain.ServerID) bool { return k[id] }

func TestUnknownIDsDoNotSpendTheKnownPeersBudget(t *testing.T) {
	t.Parallel()
	clock := &testClock{now: time.Unix(1_700_000_000, 0)}
	// Two key servers that never answer hold the in-flight slots of
	// unknown IDs, as forged IDs pointing at black holes would.
	hold := make(chan struct{})
	var arrived sync.WaitGroup
	arrived.Add(2)
	hanging := func() domain.ServerID {
		srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
			arrived.Done()
			<-hold
		}))
		t.Cleanup(srv.Close)
		return domain.MustParseServerID(strings.TrimPrefix(srv.URL, "http://"))
	}
	black1, black2 := hanging(), hanging()
	t.Cleanup(func() { close(hold) })
	rotated := startKeyServer(t, 1)      // a known peer that rotated its key
	firstContact := startKeyServer(t, 2) // in the registry, key not yet fetched

	cfg := DefaultConfig()
	cfg.Insecure = true
	cfg.FetchesPerSecond, cfg.Burst = 1, 2
	cfg.UnknownPerSecond, cfg.UnknownBurst, cfg.UnknownInFlight = 1, 3, 2
	r := newResolver(cfg, clock).WithKnownPeers(knownSet{firstContact.id: true})
	old := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, 32)).Public().(ed25519.PublicKey)
	r.Remember(rotated.id, old)
	ctx := t.Context()

	var done sync.WaitGroup
	for _, id := range []domain.ServerID{black1, black2} {
		done.Add(1)
		go func() { defer done.Done(); _, _ = r.Key(ctx, id) }()
	}
	arrived.Wait()
	// Both slots held: a third unknown ID is refused at once, without
	// a connection, and so is every further one.
	for port := 1; port <= 5; port++ {
		_, err := r.Key(ctx, domain.MustParseServerID("127.0.0.1:"+strconv.Itoa(port)))
		if !errors.Is(err, ErrRateLimited) {
			t.Fatalf("unknown ID %d with the slots held: %v, want ErrRateLimited", port, err)
		}
	}
	// The known peers' fetches are untouched by all of that.
	fresh, ok, err := r.RefreshKey(ctx, rotated.id)
	if err != nil || !ok || fresh.Equal(old) {
		t.Fatalf("refetch of a known peer's key: ok=%v err=%v", ok, err)
	}
	if _, err := r.Key(ctx, firstContact.id); err != nil {
		t.Fatalf("first key fetch of a peer the registry knows: %v", err)
	}
}
