package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"connectrpc.com/grpchealth"

	"github.com/harmony-postbox/postbox/adapters/admin"
	"github.com/harmony-postbox/postbox/adapters/authtoken"
	"github.com/harmony-postbox/postbox/adapters/consumers"
	"github.com/harmony-postbox/postbox/adapters/delivery"
	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb"
	"github.com/harmony-postbox/postbox/adapters/httpserver"
	"github.com/harmony-postbox/postbox/adapters/keyfile"
	"github.com/harmony-postbox/postbox/adapters/metrics"
	"github.com/harmony-postbox/postbox/adapters/netguard"
	"github.com/harmony-postbox/postbox/adapters/noncefile"
	"github.com/harmony-postbox/postbox/adapters/noncestore"
	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/adapters/peerkeys"
	"github.com/harmony-postbox/postbox/adapters/projector"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/adapters/replicas"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	"github.com/harmony-postbox/postbox/gen/postbox/admin/v1/adminv1connect"
	"github.com/harmony-postbox/postbox/gen/protocol/sync/v1/syncv1connect"
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
// peers stream, as domain.DecideStartupID decides (the first start records
// it; a default --server-id never renames; a former ID given keeps the
// current one, with a warning; any other given ID renames the server only
// with --rename), and says what happened. The IDs this server had before
// stay accepted audiences for the grace period after each rename, counted
// from when it was recorded, across restarts.
func provideIdentity(ctx context.Context, cfg Config, registry *registry.Registry, clock domain.Clock, logger *slog.Logger) (*domain.Identity, error) {
	stored, _ := registry.OwnID()
	decision, err := registry.SettleStartupID(ctx, cfg.ServerID, cfg.ServerIDGiven, cfg.Rename, clock.Now())
	switch {
	case errors.Is(err, domain.ErrRenameNotAllowed):
		return nil, exitError{code: 2, err: fmt.Errorf("--server-id %s: this server is %s (stored in %s); to rename it, add --rename (peers are told), or run postbox rename %s while it serves; to keep %s, drop --server-id or give that",
			cfg.ServerID, stored, cfg.DataDir, cfg.ServerID, stored)}
	case errors.Is(err, domain.ErrIDTaken):
		return nil, exitError{code: 2, err: fmt.Errorf("--server-id %s: %w (a peer has it, or had it before a rename)", cfg.ServerID, domain.ErrIDTaken)}
	case err != nil:
		return nil, err
	}
	switch decision {
	case domain.StartStored:
		if stored != cfg.ServerID {
			logger.Info("using the server ID stored in the data directory", "server_id", stored.String())
		}
	case domain.StartFormer:
		logger.Warn("--server-id is a former ID of this server: keeping its current ID (to go back, run postbox rename while it serves; drop or update --server-id to silence this)",
			"server_id", stored.String(), "given", cfg.ServerID.String())
	case domain.StartRename:
		logger.Info("this server renamed; peers will be told", "old", stored.String(), "new", cfg.ServerID.String())
	}
	ids := registry.OwnIDs()
	now := clock.Now()
	for i, next := range ids[1:] {
		former, until := ids[i].ID, next.Since.Add(domain.DefaultAudienceGrace)
		if former != next.ID && now.Before(until) && former != ids[len(ids)-1].ID {
			logger.Info("tokens addressed to a former ID of this server are still accepted",
				"former_id", former.String(), "until", until.UTC().Format(time.RFC3339))
		}
	}
	return domain.IdentityFromHistory(ids, domain.DefaultAudienceGrace), nil
}

// provideResolver fetches peer keys, starting from those recorded; the
// registry records the keys it fetches (for a server that is not a peer
// yet, once its first call registers it), so they are known after a
// restart, when a renamed peer's old address may be gone.
func provideResolver(cfg peerkeys.Config, clock domain.Clock, logger *slog.Logger, registry *registry.Registry) *peerkeys.Resolver {
	r := peerkeys.New(cfg, clock, logger, registry).WithKnownPeers(registry)
	for id, key := range registry.Keys() {
		r.Remember(id, key)
	}
	return r
}

func provideAccessList(cfg Config) (domain.AccessList, error) {
	list, err := domain.NewAccessList(cfg.AllowPeers, cfg.BlockPeers)
	if err != nil {
		return list, exitError{code: 2, err: fmt.Errorf("--allow-peers or --block-peers: %w; e.g. --allow-peers %s", err, examples["allow-peers"])}
	}
	return list, nil
}

func provideAuthPolicy(cfg Config, access domain.AccessList) domain.AuthPolicy {
	return domain.AuthPolicy{Window: cfg.AuthWindow, RequireExtension: cfg.RequireExt, Access: access}
}

// provideVerifier checks federation tokens, and keeps what it needs to
// refuse replays across a restart in the data directory (domain.NonceLedger).
// Replicas share the ledger through the store instead, so that a token one
// accepted is refused by all.
func provideVerifier(cfg Config, policy domain.AuthPolicy, clock domain.Clock, keys domain.PeerKeys, self *domain.Identity,
	store replicaStore, codec *streams.Codec, logger *slog.Logger,
) (*domain.Verifier, func(), error) {
	v := domain.NewVerifier(policy, clock, keys, self)
	if cfg.Replica != "" {
		ledger, previous := noncestore.Open(store, codec, clock.Now, nonceTimeout, logger)
		v.PersistNonces(previous, ledger)
		return v, func() {}, nil
	}
	rec, previous, err := noncefile.Open(filepath.Join(cfg.DataDir, "nonces"), clock.Now, logger)
	if err != nil {
		return nil, nil, err
	}
	v.PersistNonces(previous, rec)
	return v, func() { _ = rec.Close() }, nil
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
			return nil, exitError{code: 2, err: fmt.Errorf("--peer-ca: %w", err)}
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, exitError{code: 2, err: fmt.Errorf("--peer-ca %s: no PEM certificates in it; e.g. --peer-ca %s", cfg.PeerCA, examples["peer-ca"])}
		}
	}
	return &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}, nil
}

// provideGuard is the one address guard every outbound call dials
// through: public addresses, --allow-peer-networks, and the peers
// --allow-peers names exactly.
func provideGuard(cfg Config, access domain.AccessList) *netguard.Guard {
	return netguard.New(cfg.PeerNetworks, access)
}

func providePeerKeysConfig(cfg Config, access domain.AccessList, clientTLS *tls.Config, guard *netguard.Guard) peerkeys.Config {
	c := peerkeys.DefaultConfig()
	c.Plaintext, c.Guard, c.Access, c.TLS = cfg.PlaintextPeers, guard, access, clientTLS
	return c
}

func provideSigner(key keyfile.PrivateKey, clock domain.Clock, random io.Reader) *authtoken.Signer {
	return authtoken.NewSigner(key.PrivateKey, clock, random)
}

func providePeerClientConfig(cfg Config, clientTLS *tls.Config, guard *netguard.Guard) peerclient.Config {
	return peerclient.Config{Plaintext: cfg.PlaintextPeers, Guard: guard, TLS: clientTLS, Protocol: cfg.PeerProtocol}
}

// provideAdminSender refuses at once a send to a peer whose ID is an
// address the guard would never let a push reach.
func provideAdminSender(engine *delivery.Engine, guard *netguard.Guard) admin.Sender {
	return admin.CheckedSender(engine, guard)
}

func provideVersion() admin.Version { return admin.Version(buildVersion()) }

// provideHealth reports NOT_SERVING until the startup pulls are done.
func provideHealth() *grpchealth.StaticChecker {
	h := grpchealth.NewStaticChecker(syncv1connect.PostboxServiceName, adminv1connect.AdminServiceName)
	h.SetStatus("", grpchealth.StatusNotServing)
	return h
}

// diskState reports whether the event store refuses writes for want of
// disk space.
type diskState interface{ DiskFull() bool }

// noDiskState is the state of a store without a local disk (EventStoreDB).
type noDiskState struct{}

func (noDiskState) DiskFull() bool { return false }

// storeHealth answers NOT_SERVING while the store's disk is full, and else
// what the static checker says (NOT_SERVING until the startup pulls are
// done): a server that cannot store what it is sent should be taken out of
// rotation, though it keeps serving reads and retrying.
type storeHealth struct {
	static *grpchealth.StaticChecker
	disk   diskState
}

func provideHealthChecker(static *grpchealth.StaticChecker, disk diskState) grpchealth.Checker {
	return storeHealth{static: static, disk: disk}
}

func (h storeHealth) Check(ctx context.Context, req *grpchealth.CheckRequest) (*grpchealth.CheckResponse, error) {
	res, err := h.static.Check(ctx, req)
	if err == nil && h.disk.DiskFull() {
		res.Status = grpchealth.StatusNotServing
	}
	return res, err
}

// exitStorageFailed is the exit status after the store's disk failed in a
// way that makes going on unsafe (EX_IOERR).
const exitStorageFailed = 74

// exitOnStorageFailure ends the process at once, without the graceful
// shutdown: after a failed fsync nothing more may be written or
// acknowledged, and the restarted process recovers from the files as after
// a crash. The supervisor (systemd, Kubernetes) restarts it.
func exitOnStorageFailure(logger *slog.Logger) func(error) {
	return func(err error) {
		logger.Error("exiting: the event store's disk failed (a failed sync or I/O error), so continuing could acknowledge events that are not on disk; the supervisor must restart postbox",
			"err", err, "exit_status", exitStorageFailed)
		os.Exit(exitStorageFailed)
	}
}

func provideEmbeddedStore(ctx context.Context, cfg Config, clock domain.Clock, logger *slog.Logger) (*embedded.Store, func(), error) {
	s, err := embedded.Open(ctx, cfg.DataDir, embedded.Options{Logger: logger, Clock: clock.Now, OnFatal: exitOnStorageFailure(logger)})
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

func provideRegistry(ctx context.Context, store delivery.Store, codec *streams.Codec, random io.Reader, logger *slog.Logger) (*registry.Registry, error) {
	return registry.Load(ctx, store, codec, random, logger)
}

func provideFederationListener(ctx context.Context, cfg Config, h *httpserver.FederationHandler, logger *slog.Logger) (federationListener, func(), error) {
	// A wrong --tls-cert or --tls-key is a configuration mistake (exit 2),
	// unlike an address in use.
	if (cfg.TLS.CertFile == "") != (cfg.TLS.KeyFile == "") {
		return federationListener{}, nil, exitError{code: 2, err: fmt.Errorf("--tls-cert and --tls-key go together; e.g. --tls-cert %s --tls-key %s", examples["tls-cert"], examples["tls-key"])}
	}
	if cfg.TLS.CertFile != "" {
		if _, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile); err != nil {
			return federationListener{}, nil, exitError{code: 2, err: fmt.Errorf("--tls-cert %s --tls-key %s: %w", cfg.TLS.CertFile, cfg.TLS.KeyFile, err)}
		}
	}
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

func provideDeliveryConfig(cfg Config) delivery.Config { return cfg.Delivery }

// provideAdmission bounds the federation request bodies held at once
// (--max-inflight-bytes, --max-peer-inflight-bytes) and how slowly one may
// arrive (--min-body-bytes per --body-window).
func provideAdmission(cfg Config) httpserver.Admission {
	return httpserver.Admission{
		InflightBytes: cfg.MaxInflight,
		PeerBytes:     cfg.MaxPeerInflight,
		MinBodyBytes:  cfg.MinBodyBytes,
		BodyWindow:    cfg.BodyWindow,
	}
}

// peerIDs labels metrics with the stable peer ID, which a rename keeps.
type peerIDs struct{ registry *registry.Registry }

func (p peerIDs) PeerIDOf(server domain.ServerID) (string, bool) {
	id, ok := p.registry.Lookup(server)
	return string(id), ok
}

// provideCounters counts what the engine and the federation handlers do;
// the engine reports to them.
func provideCounters(registry *registry.Registry) *metrics.Counters {
	return metrics.NewCounters(peerIDs{registry})
}

// provideMetrics is every metric: the counters, and the gauges read from
// the engine at scrape time.
func provideMetrics(cfg Config, counters *metrics.Counters, engine *delivery.Engine, disk diskState, identity *domain.Identity,
	ledger *consumers.Ledger, clock domain.Clock, replica *replicas.Replicas,
) *metrics.Metrics {
	m := metrics.New(counters, engine)
	m.ObserveDiskFull(disk.DiskFull)
	m.ObserveIdleConsumers(func() (int, error) {
		all, err := ledger.List(context.Background())
		idle := 0
		for _, c := range all {
			if c.IdleSince(clock.Now(), cfg.ConsumerIdleAfter) {
				idle++
			}
		}
		return idle, err
	})
	if replica != nil {
		m.ObserveReplica(func() string { return identity.Current().String() }, buildVersion(), replica.Name())
	} else {
		m.ObserveServer(func() string { return identity.Current().String() }, buildVersion())
	}
	return m
}

// provideLive follows the store into the projections, checkpointed in the
// data directory (where postbox audit compares it with a replay); with
// --retain-received it also removes received events.
func provideLive(cfg Config, store projector.LiveStore, logger *slog.Logger, ledger *consumers.Ledger, codec *streams.Codec, clock domain.Clock) *projector.Live {
	live := projector.NewLive(store, filepath.Join(cfg.DataDir, "projections.checkpoint"), logger)
	if cfg.RetainReceived <= 0 && cfg.Delivery.RetainDelivered <= 0 {
		return live
	}
	rs, ok := store.(projector.RetentionStore)
	if !ok {
		logger.Warn("this store cannot truncate streams: received events are kept")
		return live
	}
	r := &projector.ReceivedRetention{Store: rs, Consumers: ledger, Clock: clock,
		Keep: cfg.RetainReceived, Logger: logger.With("component", "retention"), Codec: codec}
	if d := cfg.Delivery.RetainDelivered; d > 0 {
		// Outbox events removed after d are in a projections snapshot
		// written since.
		r.Snapshots, r.Every = true, min(max(d/4, 10*time.Millisecond), time.Minute)
		if k := cfg.RetainReceived; k > 0 {
			r.Every = min(r.Every, max(k/4, 10*time.Millisecond))
		}
	}
	return live.WithReceivedRetention(r)
}

// provideConsumers reads the durable consumers' positions from the store.
func provideConsumers(ctx context.Context, store delivery.Store, codec *streams.Codec, clock domain.Clock) (*consumers.Ledger, error) {
	return consumers.Open(ctx, store, codec, clock)
}

// provideAdminService is the admin API, which reads the outboxes for the
// age of each peer's oldest pending event and keeps the durable consumers.
func provideAdminService(cfg Config, identity *domain.Identity, public ed25519.PublicKey, version admin.Version, sender admin.Sender, operator admin.Operator,
	received admin.ReceivedLog, names admin.PeerNames, renamer admin.Renamer, views admin.PeerViews, store delivery.Store,
	ledger *consumers.Ledger, clock domain.Clock,
) *admin.Service {
	return admin.NewService(identity, public, version, sender, operator, received, names, renamer, views).
		WithPendingAges(outboxAges{store}).
		WithRetention(outboxAges{store}).
		WithConsumers(ledger, cfg.ConsumerIdleAfter, clock)
}

// outboxAges reads when an outbox event was stored: its sequence number
// is its revision in the outbox stream.
type outboxAges struct{ store delivery.Store }

func (o outboxAges) HandedOverAt(ctx context.Context, peerID string, seq uint64) (time.Time, error) {
	recs, err := o.store.ReadStream(ctx, streams.Outbox(streams.PeerID(peerID)), seq, 1)
	if err != nil {
		return time.Time{}, err
	}
	if len(recs) == 0 {
		return time.Time{}, fmt.Errorf("outbox of %s has no event %d", peerID, seq)
	}
	return recs[0].Created, nil
}

// OutboxRetainedFrom is where retention truncated the peer's outbox; 0 on
// a store that cannot truncate.
func (o outboxAges) OutboxRetainedFrom(ctx context.Context, peerID string) (uint64, error) {
	return o.truncatedBefore(ctx, streams.Outbox(streams.PeerID(peerID)))
}

// InboxRetainedFrom is where retention truncated the peer's inbox.
func (o outboxAges) InboxRetainedFrom(ctx context.Context, peerID string) (uint64, error) {
	return o.truncatedBefore(ctx, streams.Inbox(streams.PeerID(peerID)))
}

func (o outboxAges) truncatedBefore(ctx context.Context, stream string) (uint64, error) {
	tr, ok := o.store.(interface {
		TruncatedBefore(ctx context.Context, stream string) (uint64, error)
	})
	if !ok {
		return 0, nil
	}
	from, err := tr.TruncatedBefore(ctx, stream)
	if errors.Is(err, eventstore.ErrStreamNotFound) {
		return 0, nil
	}
	return from, err
}
