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
	"github.com/harmony-postbox/postbox/domain"
	"github.com/harmony-postbox/postbox/gen/protocol/auth/v1/authv1connect"
	"github.com/harmony-postbox/postbox/gen/protocol/sync/v1/syncv1connect"
)

// MaxRequestBytes bounds a federation request body on every protocol.
type MaxRequestBytes int64

// FederationHandler routes federation requests: hRPC requests (and anything
// that is not a POST to a known procedure, so hRPC clients get hRPC errors)
// to the hRPC handler, the rest to connect-go. Before either reads a body,
// the caller is authenticated from its headers and the body admitted within
// the byte budgets (Admission).
type FederationHandler struct {
	hrpc    *hrpc.Handler
	connect *http.ServeMux
	errors  *connect.ErrorWriter
	logger  *slog.Logger

	// preauth is the PostboxService when it can authenticate from headers
	// (federation.PostboxService can); nil for a stand-in that needs no
	// token (tests serving only keys).
	preauth Preauthenticator
	limit   int64
	adm     Admission
	all     *byteBudget
	peers   *peerBudgets
}

// NewFederationHandler mounts the federation services, with the default
// Admission (see WithAdmission). If postbox implements Preauthenticator,
// every call that needs a token is authenticated before its body is read.
func NewFederationHandler(postbox syncv1connect.PostboxServiceHandler, auth authv1connect.AuthServiceHandler, limit MaxRequestBytes, logger *slog.Logger) *FederationHandler {
	if limit <= 0 {
		limit = hrpc.DefaultMaxRequestBytes
	}
	opts := []connect.HandlerOption{
		connect.WithInterceptors(rpcerrors.NewInterceptor(logger)),
		connect.WithReadMaxBytes(int(limit)),
		// Decompression stops at the size limit, instead of connect-go's
		// own, which inflates a whole gzip bomb to report its size.
		connect.WithCompression(gzipName, newCappedGzip(int64(limit)), newGzipWriter),
		connect.WithCompressMinBytes(compressMinBytes),
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
	f := &FederationHandler{hrpc: h, connect: mux, errors: connect.NewErrorWriter(opts...), logger: logger, limit: int64(limit)}
	if p, ok := postbox.(Preauthenticator); ok {
		f.preauth = p
	}
	return f.WithAdmission(Admission{})
}

// WithAdmission sets the budgets and the body rate (zero fields: defaults).
// Call it before serving.
func (f *FederationHandler) WithAdmission(a Admission) *FederationHandler {
	f.adm = a.withDefaults(f.limit)
	f.all = &byteBudget{limit: f.adm.InflightBytes}
	f.peers = &peerBudgets{used: make(map[domain.ServerID]int64), limit: f.adm.PeerBytes}
	return f
}

func (f *FederationHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	known := r.Method == http.MethodPost && f.hrpc.Has(r.URL.Path)
	isHRPC := !known || hrpc.IsContentType(r.Header.Get("Content-Type"))
	if known {
		// hRPC answers the rest (wrong method, unknown path) without
		// reading the body.
		admitted, release, err := f.admit(w, r)
		if err != nil {
			f.refuse(w, r, isHRPC, err)
			return
		}
		defer release()
		r = admitted
	}
	if isHRPC {
		f.hrpc.ServeHTTP(w, r)
		return
	}
	f.connect.ServeHTTP(w, r)
}

// refuse answers err in the request's protocol, through the one rpcerrors
// mapping, without having read the body.
func (f *FederationHandler) refuse(w http.ResponseWriter, r *http.Request, isHRPC bool, err error) {
	c := rpcerrors.Classify(err)
	f.logger.Log(r.Context(), c.Level, "federation request refused before its body", "procedure", r.URL.Path, "identifier", c.Identifier, "err", err)
	// The body is left unread. On HTTP/1, net/http would first drain up
	// to 256 KiB of it, so a caller still sending (or holding back) its
	// body would not see the answer until then; closing the connection
	// after the answer sends it at once. On HTTP/2 the stream is reset,
	// leaving the connection to the caller's other calls (there a
	// Connection header would end them all).
	if r.ProtoMajor == 1 && r.ContentLength != 0 {
		w.Header().Set("Connection", "close")
	}
	if isHRPC {
		hrpc.WriteError(w, err)
		return
	}
	_ = f.errors.Write(w, r, rpcerrors.ToConnect(err))
}
