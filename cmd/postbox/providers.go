package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"connectrpc.com/grpchealth"

	"github.com/harmony-postbox/postbox/adapters/admin"
	"github.com/harmony-postbox/postbox/adapters/authtoken"
	"github.com/harmony-postbox/postbox/adapters/delivery"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb"
	"github.com/harmony-postbox/postbox/adapters/federation"
	"github.com/harmony-postbox/postbox/adapters/httpserver"
	"github.com/harmony-postbox/postbox/adapters/keyfile"
	"github.com/harmony-postbox/postbox/adapters/metrics"
	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/adapters/peerkeys"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	"github.com/harmony-postbox/postbox/gen/postbox/admin/v1/adminv1connect"
	"github.com/harmony-postbox/postbox/gen/protocol/sync/v1/syncv1connect"
	"github.com/harmony-postbox/postbox/projections"
)

// Small providers that turn Config into what the adapters take.

func provideKey(cfg Config, logger *slog.Logger) (keyfile.PrivateKey, error) {
	key, created, err := keyfile.LoadOrCreate(cfg.KeyFile, rand.Reader)
	if err != nil {
		return keyfile.PrivateKey{}, err
	}
	if created {
		logger.Info("created a new server key", "path", cfg.KeyFile)
	}
	return key, nil
}

func providePublicKey(key keyfile.PrivateKey) ed25519.PublicKey { return key.PublicKey() }

func provideRandom() io.Reader { return rand.Reader }

// provideIdentity settles this server's ID against the one stored in the
// peers stream: the first start records it; an explicitly given
// --server-id that differs renames the server (peers are told once it
// serves); a default --server-id never renames, the stored ID stays.
func provideIdentity(ctx context.Context, cfg Config, registry *delivery.Registry, clock domain.Clock, logger *slog.Logger) (*domain.Identity, error) {
	stored, ok := registry.OwnID()
	switch {
	case !ok:
		if err := registry.RecordOwnID(ctx, cfg.ServerID); err != nil {
			return nil, err
		}
		return domain.NewIdentity(cfg.ServerID, domain.DefaultAudienceGrace), nil
	case stored == cfg.ServerID:
		return domain.NewIdentity(stored, domain.DefaultAudienceGrace), nil
	case !cfg.ServerIDGiven:
		logger.Info("using the server ID stored in the data directory", "server_id", stored.String())
		return domain.NewIdentity(stored, domain.DefaultAudienceGrace), nil
	}
	if _, _, taken := registry.Resolve(cfg.ServerID); taken {
		return nil, fmt.Errorf("--server-id %s: %w", cfg.ServerID, domain.ErrIDTaken)
	}
	identity := domain.NewIdentity(stored, domain.DefaultAudienceGrace)
	if err := registry.RecordOwnID(ctx, cfg.ServerID); err != nil {
		return nil, err
	}
	identity.Rename(cfg.ServerID, clock.Now())
	logger.Info("this server renamed; peers will be told", "old", stored.String(), "new", cfg.ServerID.String())
	return identity, nil
}

// keyRecorder records the keys fetched for registered peers, so they are
// known after a restart (a renamed peer's old address may be gone).
type keyRecorder struct {
	registry *delivery.Registry
	logger   *slog.Logger
}

func (k keyRecorder) KeyFetched(ctx context.Context, id domain.ServerID, key ed25519.PublicKey) {
	if err := k.registry.RecordKey(ctx, id, key); err != nil {
		k.logger.Warn("recording a peer key failed", "peer", id.String(), "err", err)
	}
}

// provideResolver fetches peer keys, starting from those recorded.
func provideResolver(cfg peerkeys.Config, clock domain.Clock, logger *slog.Logger, registry *delivery.Registry) *peerkeys.Resolver {
	r := peerkeys.New(cfg, clock, logger, keyRecorder{registry, logger})
	for id, key := range registry.Keys() {
		r.Remember(id, key)
	}
	return r
}

func provideAccessList(cfg Config) (domain.AccessList, error) {
	return domain.NewAccessList(cfg.AllowPeers, cfg.BlockPeers)
}

func provideAuthPolicy(cfg Config, access domain.AccessList) domain.AuthPolicy {
	return domain.AuthPolicy{Window: cfg.AuthWindow, RequireExtension: cfg.RequireExt, Access: access}
}

// provideClientTLS trusts the system roots plus --peer-ca.
func provideClientTLS(cfg Config) (*tls.Config, error) {
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool()
	}
	if cfg.PeerCA != "" {
		pem, err := os.ReadFile(cfg.PeerCA)
		if err != nil {
			return nil, fmt.Errorf("--peer-ca: %w", err)
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--peer-ca: no PEM certificates in %s", cfg.PeerCA)
		}
	}
	return &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}, nil
}

func providePeerKeysConfig(cfg Config, access domain.AccessList, clientTLS *tls.Config) peerkeys.Config {
	c := peerkeys.DefaultConfig()
	c.Insecure, c.Access, c.TLS = cfg.InsecurePeers, access, clientTLS
	return c
}

func provideSigner(key keyfile.PrivateKey, clock domain.Clock, random io.Reader) *authtoken.Signer {
	return authtoken.NewSigner(key.PrivateKey, clock, random)
}

func providePeerClientConfig(cfg Config, clientTLS *tls.Config) peerclient.Config {
	return peerclient.Config{Insecure: cfg.InsecurePeers, TLS: clientTLS, Protocol: cfg.PeerProtocol}
}

func provideVersion() admin.Version { return admin.Version(buildVersion()) }

// provideHealth reports NOT_SERVING until the startup pulls are done.
func provideHealth() *grpchealth.StaticChecker {
	h := grpchealth.NewStaticChecker(syncv1connect.PostboxServiceName, adminv1connect.AdminServiceName)
	h.SetStatus("", grpchealth.StatusNotServing)
	return h
}

func provideEmbeddedStore(ctx context.Context, cfg Config, clock domain.Clock, logger *slog.Logger) (*embedded.Store, func(), error) {
	s, err := embedded.Open(ctx, cfg.DataDir, embedded.Options{Logger: logger, Clock: clock.Now})
	if err != nil {
		return nil, nil, err
	}
	return s, func() { _ = s.Close() }, nil
}

func provideESDBStore(ctx context.Context, cfg Config, logger *slog.Logger) (*esdb.Store, func(), error) {
	s, err := esdb.Open(ctx, cfg.Store, logger)
	if err != nil {
		return nil, nil, err
	}
	return s, func() { _ = s.Close() }, nil
}

// provideBinaryCodec writes binary protobuf bodies, for the embedded store.
func provideBinaryCodec(random io.Reader) *streams.Codec {
	return streams.NewCodecWithBodies(random, streams.BinaryBodies)
}

// provideJSONCodec writes protojson bodies, which EventStoreDB's own tools
// read.
func provideJSONCodec(random io.Reader) *streams.Codec {
	return streams.NewCodecWithBodies(random, streams.JSONBodies)
}

func provideRegistry(ctx context.Context, store delivery.Store, codec *streams.Codec, random io.Reader) (*delivery.Registry, error) {
	return delivery.LoadRegistry(ctx, store, codec, random)
}

func provideEngine(cfg Config, store delivery.Store, codec *streams.Codec, registry *delivery.Registry, client delivery.PeerClient,
	clock domain.Clock, logger *slog.Logger, random io.Reader, observer *forwardingObserver,
) (*delivery.Engine, func()) {
	dc := cfg.Delivery
	dc.Observer = observer
	e := delivery.New(dc, store, codec, registry, client, clock, logger, random)
	return e, e.Close
}

func provideFederationListener(ctx context.Context, cfg Config, h *httpserver.FederationHandler, logger *slog.Logger) (federationListener, func(), error) {
	s, err := httpserver.Listen(ctx, "federation", cfg.Listen, h, cfg.TLS, logger)
	if err != nil {
		return federationListener{}, nil, err
	}
	return federationListener{s}, func() { _ = s.Shutdown(context.Background()) }, nil
}

func provideAdminListener(ctx context.Context, cfg Config, h httpserver.AdminHandler, logger *slog.Logger) (adminListener, func(), error) {
	s, err := httpserver.Listen(ctx, "admin", cfg.AdminListen, h, httpserver.TLSFiles{}, logger)
	if err != nil {
		return adminListener{}, nil, err
	}
	s.WithoutWriteTimeout() // Watch --follow streams for as long as it is followed
	return adminListener{s}, func() { _ = s.Shutdown(context.Background()) }, nil
}

func provideMaxRequest(cfg Config) httpserver.MaxRequestBytes { return cfg.MaxRequest }

func provideAdminToken(cfg Config) admin.Token { return cfg.AdminToken }

// engineGauges reads the per-peer metrics from the engine's current state.
type engineGauges struct{ engine *delivery.Engine }

func (g engineGauges) PeerGauges() []metrics.PeerGauges {
	var out []metrics.PeerGauges
	for _, c := range g.engine.Cursors() {
		out = append(out, metrics.PeerGauges{
			ServerID: c.ServerID.String(), Head: c.Outbox.Head,
			Delivered: c.Outbox.Delivered - c.Outbox.Skipped, Skipped: c.Outbox.Skipped,
			Pending: c.Outbox.Pending(), Queue: c.Outbox.Mode == domain.ModeQueue,
		})
	}
	return out
}

// provideMetrics counts what the engine and the federation handlers do.
// The engine reports to it through a forwarding observer, because the
// metrics' gauges read the engine in turn.
func provideMetrics(observer *forwardingObserver, engine *delivery.Engine) *metrics.Metrics {
	m := metrics.New(engineGauges{engine})
	observer.target.Store(m)
	return m
}

// forwardingObserver lets the engine be built before the metrics that
// observe it.
type forwardingObserver struct {
	target atomic.Pointer[metrics.Metrics]
}

func provideForwardingObserver() *forwardingObserver { return &forwardingObserver{} }

func (f *forwardingObserver) PushAttempted(peer domain.ServerID, took time.Duration, events int, err error) {
	if m := f.target.Load(); m != nil {
		m.PushAttempted(peer, took, events, err)
	}
}

func (f *forwardingObserver) PullServed(peer domain.ServerID, events int) {
	if m := f.target.Load(); m != nil {
		m.PullServed(peer, events)
	}
}

func (f *forwardingObserver) PullMade(peer domain.ServerID, err error) {
	if m := f.target.Load(); m != nil {
		m.PullMade(peer, err)
	}
}

func (f *forwardingObserver) Received(peer domain.ServerID, via string, n int) {
	if m := f.target.Load(); m != nil {
		m.Received(peer, via, n)
	}
}

func (f *forwardingObserver) ReceivedTooLarge(peer domain.ServerID, n int) {
	if m := f.target.Load(); m != nil {
		m.ReceivedTooLarge(peer, n)
	}
}

func providePostboxService(cfg Config, auth federation.Authenticator, box federation.Postbox, m *metrics.Metrics) *federation.PostboxService {
	return federation.NewPostboxService(auth, box).AcceptBatches(int64(cfg.MaxRequest)).ObserveAuthFailures(m)
}

// provideLive follows the store into the projections, checkpointed in the
// data directory (where postbox audit compares it with a replay).
func provideLive(cfg Config, store projections.LiveStore, logger *slog.Logger) *projections.Live {
	return projections.NewLive(store, filepath.Join(cfg.DataDir, "projections.checkpoint"), logger)
}
