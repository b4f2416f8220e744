package assembly

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/harmony-postbox/postbox/adapters/authtoken"
	"github.com/harmony-postbox/postbox/adapters/delivery"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/federation"
	"github.com/harmony-postbox/postbox/adapters/httpserver"
	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/adapters/peerkeys"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// NodeConfig is what the benchmark chooses of a node: a federation server
// on the embedded store, as `postbox serve --insecure-peers` on its first
// start, without the admin listener and the projections.
type NodeConfig struct {
	// ID is the node's server ID; Listen the address its federation
	// listener binds (the ID's, for peers to reach it).
	ID     domain.ServerID
	Listen string
	// DataDir holds the node's store; its key lives in memory only.
	DataDir    string
	Delivery   delivery.Config
	AuthWindow time.Duration
	MaxRequest httpserver.MaxRequestBytes
	// Observer is told what the engine does (nil: nobody).
	Observer delivery.Observer
	// Front, if set, wraps the federation handler (e.g. to play a peer
	// that is down).
	Front func(http.Handler) http.Handler
}

// Node is an assembled node, not yet running: the caller serves Listener
// and runs Engine, then shuts the listener down and stops the engine
// before the cleanup closes the store.
type Node struct {
	ID       domain.ServerID
	Public   ed25519.PublicKey
	Store    *embedded.Store
	Codec    *streams.Codec
	Registry *registry.Registry
	Engine   *delivery.Engine
	Resolver *peerkeys.Resolver
	Listener *httpserver.Server
}

func newNode(cfg NodeConfig, public ed25519.PublicKey, store *embedded.Store, codec *streams.Codec, registry *registry.Registry,
	engine *delivery.Engine, resolver *peerkeys.Resolver, listener *httpserver.Server,
) *Node {
	return &Node{ID: cfg.ID, Public: public, Store: store, Codec: codec, Registry: registry, Engine: engine, Resolver: resolver, Listener: listener}
}

func nodeRandom() io.Reader { return rand.Reader }

func nodeKey(random io.Reader) (ed25519.PrivateKey, error) {
	_, key, err := ed25519.GenerateKey(random)
	return key, err
}

func nodePublicKey(key ed25519.PrivateKey) ed25519.PublicKey { return key.Public().(ed25519.PublicKey) }

func nodeSigner(key ed25519.PrivateKey, clock domain.Clock, random io.Reader) *authtoken.Signer {
	return authtoken.NewSigner(key, clock, random)
}

func nodeStore(ctx context.Context, cfg NodeConfig, clock domain.Clock, logger *slog.Logger) (*embedded.Store, func(), error) {
	s, err := embedded.Open(ctx, cfg.DataDir, embedded.Options{Logger: logger, Clock: clock.Now})
	if err != nil {
		return nil, nil, err
	}
	return s, func() { _ = s.Close() }, nil
}

// nodeCodec writes binary bodies, as `postbox serve` on the embedded store.
func nodeCodec(random io.Reader) *streams.Codec {
	return streams.NewCodecWithBodies(random, streams.BinaryBodies)
}

func nodeRegistry(ctx context.Context, store *embedded.Store, codec *streams.Codec, random io.Reader) (*registry.Registry, error) {
	return registry.Load(ctx, store, codec, random, nil)
}

// nodeIdentity records the node's ID, as a first start does.
func nodeIdentity(ctx context.Context, cfg NodeConfig, registry *registry.Registry, clock domain.Clock) (*domain.Identity, error) {
	if err := registry.RecordOwnID(ctx, cfg.ID, clock.Now()); err != nil {
		return nil, err
	}
	return domain.NewIdentity(cfg.ID, domain.DefaultAudienceGrace), nil
}

// nodeResolver fetches peers' keys over plaintext, from any address.
func nodeResolver(clock domain.Clock, logger *slog.Logger) *peerkeys.Resolver {
	c := peerkeys.DefaultConfig()
	c.Insecure = true
	return peerkeys.New(c, clock, logger, nil)
}

func nodeVerifier(cfg NodeConfig, clock domain.Clock, keys domain.PeerKeys, identity *domain.Identity) *domain.Verifier {
	return domain.NewVerifier(domain.AuthPolicy{Window: cfg.AuthWindow}, clock, keys, identity)
}

func nodeDelivery(cfg NodeConfig) delivery.Config              { return cfg.Delivery }
func nodeObserver(cfg NodeConfig) delivery.Observer            { return cfg.Observer }
func nodeMaxRequest(cfg NodeConfig) httpserver.MaxRequestBytes { return cfg.MaxRequest }
func nodeAdmission() httpserver.Admission                      { return httpserver.Admission{} }

// nodeAuthObserver: nobody counts refused requests.
func nodeAuthObserver() federation.AuthObserver { return nil }

// nodePeerClient calls peers in plaintext hRPC, at any address
// (--insecure-peers).
func nodePeerClient() peerclient.Config {
	return peerclient.Config{Insecure: true, Protocol: peerclient.HRPC}
}

func nodeListener(ctx context.Context, cfg NodeConfig, handler *httpserver.FederationHandler, logger *slog.Logger) (*httpserver.Server, func(), error) {
	var h http.Handler = handler
	if cfg.Front != nil {
		h = cfg.Front(h)
	}
	s, err := httpserver.Listen(ctx, "federation", cfg.Listen, h, httpserver.TLSFiles{}, logger)
	if err != nil {
		return nil, nil, err
	}
	return s, func() { _ = s.Shutdown(context.WithoutCancel(ctx)) }, nil
}
