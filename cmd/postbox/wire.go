//go:build wireinject

package main

import (
	"context"
	"log/slog"

	"github.com/google/wire"

	"github.com/harmony-postbox/postbox/adapters/admin"
	"github.com/harmony-postbox/postbox/adapters/clock"
	"github.com/harmony-postbox/postbox/adapters/delivery"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb"
	"github.com/harmony-postbox/postbox/adapters/federation"
	"github.com/harmony-postbox/postbox/adapters/httpserver"
	"github.com/harmony-postbox/postbox/adapters/metrics"
	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/adapters/peerkeys"
	"github.com/harmony-postbox/postbox/adapters/projector"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/domain"
	"github.com/harmony-postbox/postbox/gen/postbox/admin/v1/adminv1connect"
	"github.com/harmony-postbox/postbox/internal/assembly"
)

// configSet turns Config into what the adapters take.
var configSet = wire.NewSet(
	provideKey, providePublicKey, provideRandom, provideIdentity,
	provideAccessList, provideAuthPolicy, provideClientTLS, providePeerKeysConfig,
	provideSigner, providePeerClientConfig, provideVersion, provideGuard,
	provideHealth, provideHealthChecker,
	provideFederationListener, provideAdminListener, provideMaxRequest, provideAdminToken,
	provideDeliveryConfig, provideAdmission,
)

// authSet verifies federation tokens with keys fetched from peers.
var authSet = wire.NewSet(
	wire.Struct(new(clock.System)),
	wire.Bind(new(domain.Clock), new(clock.System)),
	wire.Bind(new(domain.Timers), new(clock.System)),
	provideResolver,
	wire.Bind(new(domain.PeerKeys), new(*peerkeys.Resolver)),
	wire.Bind(new(delivery.RenameKeys), new(*peerkeys.Resolver)),
	provideVerifier,
	wire.Bind(new(federation.Authenticator), new(*domain.Verifier)),
)

// engineSet is the delivery engine on whichever store the injector binds.
var engineSet = wire.NewSet(
	assembly.EngineSet,
	provideRegistry, provideCounters, provideMetrics, provideReplicas,
	wire.Bind(new(delivery.Observer), new(*metrics.Counters)),
	wire.Bind(new(federation.AuthObserver), new(*metrics.Counters)),
	provideAdminSender,
	wire.Bind(new(admin.Operator), new(*delivery.Engine)),
	wire.Bind(new(admin.PeerNames), new(*registry.Registry)),
	wire.Bind(new(peerclient.Self), new(*registry.Registry)),
	// Renames are part of the graph: NewRenames attaches itself to the
	// engine, which answers NotifyNewId through it.
	delivery.NewRenames,
	wire.Bind(new(delivery.Notifier), new(*peerclient.Client)),
	wire.Bind(new(admin.Renamer), new(*delivery.Renames)),
	provideLive,
	wire.Bind(new(admin.PeerViews), new(*projector.Live)),
)

// handlerSet mounts the services on the listeners.
var handlerSet = wire.NewSet(
	provideAdminService,
	provideConsumers,
	wire.Bind(new(adminv1connect.AdminServiceHandler), new(*admin.Service)),
	httpserver.NewAdminHandler,
	newServer,
)

// initEmbeddedServer runs on the embedded store in the data directory.
func initEmbeddedServer(ctx context.Context, cfg Config, logger *slog.Logger) (*server, func(), error) {
	wire.Build(configSet, authSet, engineSet, handlerSet,
		provideEmbeddedStore, provideBinaryCodec, wire.Bind(new(delivery.Store), new(*embedded.Store)),
		wire.Bind(new(diskState), new(*embedded.Store)),
		wire.Bind(new(replicaStore), new(*embedded.Store)), // --replica is refused without --store
		wire.Bind(new(admin.ReceivedLog), new(*embedded.Store)),
		wire.Bind(new(projector.LiveStore), new(*embedded.Store)))
	return nil, nil, nil
}

// initESDBServer runs on EventStoreDB (--store esdb://...).
func initESDBServer(ctx context.Context, cfg Config, logger *slog.Logger) (*server, func(), error) {
	wire.Build(configSet, authSet, engineSet, handlerSet,
		provideESDBStore, provideJSONCodec, wire.Bind(new(delivery.Store), new(*esdb.Store)),
		wire.InterfaceValue(new(diskState), noDiskState{}),
		wire.Bind(new(replicaStore), new(*esdb.Store)),
		wire.Bind(new(admin.ReceivedLog), new(*esdb.Store)),
		wire.Bind(new(projector.LiveStore), new(*esdb.Store)))
	return nil, nil, nil
}
