package httpserver

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"

	"github.com/harmony-postbox/postbox/adapters/admin"
	"github.com/harmony-postbox/postbox/adapters/metrics"
	"github.com/harmony-postbox/postbox/domain"
	"github.com/harmony-postbox/postbox/gen/postbox/admin/v1/adminv1connect"
)

// AdminHandler is the admin listener's handler: AdminService, gRPC health
// and reflection, Prometheus /metrics and the live page, behind the admin
// guard.
type AdminHandler struct{ http.Handler }

// NewAdminHandler mounts the admin services. The live page's feed streams
// end with ctx, so that a graceful shutdown does not wait for browsers.
func NewAdminHandler(ctx context.Context, svc adminv1connect.AdminServiceHandler, health grpchealth.Checker, m *metrics.Metrics, token admin.Token,
	clock domain.Clock, logger *slog.Logger,
) AdminHandler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	mux.Handle(admin.LivePrefix, admin.LivePage(ctx, svc, token, time.Second, clock.Now))
	mux.Handle(adminv1connect.NewAdminServiceHandler(svc, connect.WithInterceptors(admin.ErrorsInFull(logger)),
		connect.WithCompressMinBytes(compressMinBytes)))
	mux.Handle(grpchealth.NewHandler(health))
	reflector := grpcreflect.NewStaticReflector(adminv1connect.AdminServiceName)
	mux.Handle(grpcreflect.NewHandlerV1(reflector))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector))
	return AdminHandler{admin.Guard(mux, token, nil)}
}
