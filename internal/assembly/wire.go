//go:build wireinject

package assembly

import (
	"context"
	"log/slog"

	"github.com/google/wire"

	"github.com/harmony-postbox/postbox/adapters/clock"
	"github.com/harmony-postbox/postbox/adapters/delivery"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/federation"
	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/adapters/peerkeys"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/domain"
)

// InitNode assembles a node for the benchmark: EngineSet, as `postbox
// serve` has it, on the node's own store, key and verifier.
func InitNode(ctx context.Context, cfg NodeConfig, logger *slog.Logger) (*Node, func(), error) {
	wire.Build(EngineSet,
		wire.Struct(new(clock.System)),
		wire.Bind(new(domain.Clock), new(clock.System)),
		wire.Bind(new(domain.Timers), new(clock.System)),
		nodeRandom, nodeKey, nodePublicKey, nodeSigner,
		nodeStore, wire.Bind(new(delivery.Store), new(*embedded.Store)),
		nodeCodec, nodeRegistry, wire.Bind(new(peerclient.Self), new(*registry.Registry)),
		nodeIdentity, nodeResolver, wire.Bind(new(domain.PeerKeys), new(*peerkeys.Resolver)),
		nodeVerifier, wire.Bind(new(federation.Authenticator), new(*domain.Verifier)),
		nodeDelivery, nodeObserver, nodeMaxRequest, nodeAdmission, nodeAuthObserver, nodePeerClient,
		nodeListener, newNode)
	return nil, nil, nil
}
