// Package assembly holds what `postbox serve` and cmd/deliverybench
// assemble alike: the delivery engine, its peer client and the federation
// handlers on it (EngineSet, used by both commands' wire injectors), and the
// benchmark's injector of a federation node (InitNode), so the benchmark
// measures the engine as the server builds it.
package assembly

import (
	"io"
	"log/slog"
	"time"

	"github.com/google/wire"

	"github.com/harmony-postbox/postbox/adapters/delivery"
	"github.com/harmony-postbox/postbox/adapters/federation"
	"github.com/harmony-postbox/postbox/adapters/httpserver"
	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	"github.com/harmony-postbox/postbox/gen/protocol/auth/v1/authv1connect"
	"github.com/harmony-postbox/postbox/gen/protocol/sync/v1/syncv1connect"
)

// EngineSet is the delivery engine, its peer client, and the federation
// handlers on the engine. The injector provides the configuration
// (delivery.Config, peerclient.Config, httpserver.MaxRequestBytes,
// httpserver.Admission), the store, codec, registry, clock, signer, the
// observers and the verifier.
var EngineSet = wire.NewSet(
	NewEngine,
	peerclient.New,
	wire.Bind(new(delivery.PeerClient), new(*peerclient.Client)),
	wire.Bind(new(federation.Postbox), new(*delivery.Engine)),
	NewPostboxService,
	wire.Bind(new(syncv1connect.PostboxServiceHandler), new(*federation.PostboxService)),
	federation.NewKeyService,
	wire.Bind(new(authv1connect.AuthServiceHandler), new(*federation.KeyService)),
	NewFederationHandler,
)

// NewEngine is the delivery engine on cfg, reporting to observer.
func NewEngine(cfg delivery.Config, store delivery.Store, codec *streams.Codec, registry *registry.Registry, client delivery.PeerClient,
	clock domain.Timers, logger *slog.Logger, random io.Reader, observer delivery.Observer,
) *delivery.Engine {
	cfg.Observer = observer
	// The peer client bounds each call by its size (a silent peer fails an
	// attempt in about 2 s); the engine's bound must not cut the largest
	// push on a slow link before that.
	cfg.AttemptTimeout = max(cfg.AttemptTimeout, peerclient.DefaultTimeouts().CallBound(cfg.PushBatchBytes)+time.Second)
	return delivery.New(cfg, store, codec, registry, client, clock, logger, random)
}

// NewPostboxService is the federation handlers on the engine, taking
// pushes of several events up to the request size limit, and telling
// observer of refused requests.
func NewPostboxService(limit httpserver.MaxRequestBytes, auth federation.Authenticator, box federation.Postbox, observer federation.AuthObserver) *federation.PostboxService {
	return federation.NewPostboxService(auth, box).AcceptBatches(int64(limit)).ObserveAuthFailures(observer)
}

// NewFederationHandler serves the federation services within the
// admission budgets.
func NewFederationHandler(postbox syncv1connect.PostboxServiceHandler, key authv1connect.AuthServiceHandler, limit httpserver.MaxRequestBytes,
	admission httpserver.Admission, logger *slog.Logger,
) *httpserver.FederationHandler {
	return httpserver.NewFederationHandler(postbox, key, limit, logger).WithAdmission(admission)
}
