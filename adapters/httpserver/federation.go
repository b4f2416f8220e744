// Package httpserver runs the HTTP listeners: the federation listener, which
// serves the same handlers over hRPC, Connect, gRPC and gRPC-Web (the
// request's Content-Type picks the protocol), and the admin listener.
package httpserver

import (
	"log/slog"
	"net/http"

	"connectrpc.com/connect"

	"github.com/harmony-postbox/postbox/adapters/hrpc"
	"github.com/harmony-postbox/postbox/adapters/rpcerrors"
	"github.com/harmony-postbox/postbox/gen/protocol/auth/v1/authv1connect"
	"github.com/harmony-postbox/postbox/gen/protocol/sync/v1/syncv1connect"
)

// MaxRequestBytes bounds a federation request body on every protocol.
type MaxRequestBytes int64

// FederationHandler routes federation requests: hRPC requests (and anything
// that is not a POST to a known procedure, so hRPC clients get hRPC errors)
// to the hRPC handler, the rest to connect-go.
type FederationHandler struct {
	hrpc    *hrpc.Handler
	connect *http.ServeMux
}

// NewFederationHandler mounts the federation services.
func NewFederationHandler(postbox syncv1connect.PostboxServiceHandler, auth authv1connect.AuthServiceHandler, limit MaxRequestBytes, logger *slog.Logger) *FederationHandler {
	opts := []connect.HandlerOption{
		connect.WithInterceptors(rpcerrors.NewInterceptor(logger)),
		connect.WithReadMaxBytes(int(limit)),
	}
	mux := http.NewServeMux()
	mux.Handle(syncv1connect.NewPostboxServiceHandler(postbox, opts...))
	mux.Handle(authv1connect.NewAuthServiceHandler(auth, opts...))
	h := hrpc.NewHandler(logger, hrpc.Options{MaxRequestBytes: int64(limit)},
		hrpc.Unary(syncv1connect.PostboxServicePullProcedure, postbox.Pull),
		hrpc.Unary(syncv1connect.PostboxServicePushProcedure, postbox.Push),
		hrpc.Unary(syncv1connect.PostboxServiceNotifyNewIdProcedure, postbox.NotifyNewId),
		hrpc.Unary(authv1connect.AuthServiceKeyProcedure, auth.Key),
	)
	return &FederationHandler{hrpc: h, connect: mux}
}

func (f *FederationHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || !f.hrpc.Has(r.URL.Path) || hrpc.IsContentType(r.Header.Get("Content-Type")) {
		f.hrpc.ServeHTTP(w, r)
		return
	}
	f.connect.ServeHTTP(w, r)
}
