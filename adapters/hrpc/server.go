package hrpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"strconv"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/rpcerrors"
	harmonytypesv1 "github.com/harmony-postbox/postbox/gen/protocol/harmonytypes/v1"
)

// DefaultMaxRequestBytes bounds a request body unless configured otherwise.
const DefaultMaxRequestBytes = 4 << 20

// Method is one unary procedure served over hRPC.
type Method struct {
	Procedure string // e.g. /protocol.sync.v1.PostboxService/Pull
	call      func(ctx context.Context, header http.Header, body []byte) ([]byte, error)
}

// errBadBody marks a request body that is not the expected message.
var errBadBody = errors.New("request body is not a valid protobuf message")

// message is a pointer to a generated protobuf struct.
type message[T any] interface {
	*T
	proto.Message
}

// Unary serves a generated Connect handler method over hRPC, so the very
// same handler answers Connect, gRPC and hRPC callers.
func Unary[Req, Res any, PReq message[Req], PRes message[Res]](
	procedure string,
	handle func(context.Context, *connect.Request[Req]) (*connect.Response[Res], error),
) Method {
	return Method{
		Procedure: procedure,
		call: func(ctx context.Context, header http.Header, body []byte) ([]byte, error) {
			msg := PReq(new(Req))
			if err := proto.Unmarshal(body, msg); err != nil {
				return nil, fmt.Errorf("%w: %w", errBadBody, err)
			}
			req := connect.NewRequest((*Req)(msg))
			maps.Copy(req.Header(), header)
			res, err := handle(ctx, req)
			if err != nil {
				return nil, err
			}
			return proto.Marshal(PRes(res.Msg))
		},
	}
}

// Handler serves a set of methods over hRPC.
type Handler struct {
	methods  map[string]Method
	maxBytes int64
	logger   *slog.Logger
	observe  func(procedure string, err error)
}

// Options configure a Handler.
type Options struct {
	MaxRequestBytes int64 // 0: DefaultMaxRequestBytes
	// Observe, if set, is told the outcome of every call (for metrics).
	Observe func(procedure string, err error)
}

// NewHandler returns an hRPC handler for methods.
func NewHandler(logger *slog.Logger, opts Options, methods ...Method) *Handler {
	h := &Handler{methods: make(map[string]Method, len(methods)), maxBytes: opts.MaxRequestBytes, logger: logger, observe: opts.Observe}
	if h.maxBytes <= 0 {
		h.maxBytes = DefaultMaxRequestBytes
	}
	for _, m := range methods {
		h.methods[m.Procedure] = m
	}
	return h
}

// Has reports whether path is one of the handler's procedures.
func (h *Handler) Has(path string) bool {
	_, ok := h.methods[path]
	return ok
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m, ok := h.methods[r.URL.Path]
	if !ok {
		h.fail(w, r, http.StatusNotFound, rpcerrors.NotFound, "no such procedure", nil)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		h.fail(w, r, http.StatusMethodNotAllowed, rpcerrors.BadUnaryRequest, "hRPC unary calls use POST", nil)
		return
	}
	if !IsContentType(r.Header.Get("Content-Type")) {
		h.fail(w, r, http.StatusUnsupportedMediaType, rpcerrors.BadUnaryRequest, "Content-Type must be application/hrpc", nil)
		return
	}
	body, err := readBody(w, r, h.maxBytes)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			h.fail(w, r, http.StatusRequestEntityTooLarge, rpcerrors.ResourceExhausted,
				"request body exceeds "+strconv.FormatInt(h.maxBytes, 10)+" bytes", nil)
			return
		}
		h.fail(w, r, http.StatusBadRequest, rpcerrors.BadUnaryRequest, "could not read request body", err)
		return
	}
	reply, err := m.call(r.Context(), r.Header, body)
	if h.observe != nil {
		h.observe(m.Procedure, err)
	}
	if errors.Is(err, errBadBody) {
		h.fail(w, r, http.StatusBadRequest, rpcerrors.BadUnaryRequest, errBadBody.Error(), err)
		return
	}
	if err != nil {
		c := rpcerrors.Classify(err)
		h.logger.Log(r.Context(), c.Level, "hrpc call failed", "procedure", m.Procedure, "identifier", c.Identifier, "err", err)
		WriteError(w, err)
		return
	}
	setHeaders(w.Header())
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(reply)
}

func (h *Handler) fail(w http.ResponseWriter, r *http.Request, status int, identifier, message string, err error) {
	h.logger.Info("hrpc request refused", "path", r.URL.Path, "method", r.Method, "identifier", identifier, "err", err)
	writeError(w, status, identifier, message, nil)
}

// readBody reads a request body of at most limit bytes. A body that says
// its length is read into a buffer of that size, so a large body costs its
// size once rather than the doublings of a growing buffer.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	body := http.MaxBytesReader(w, r.Body, limit)
	if r.ContentLength <= 0 || r.ContentLength > limit {
		return io.ReadAll(body)
	}
	buf := make([]byte, r.ContentLength+1) // one more, to see the end
	n, err := io.ReadFull(body, buf)
	switch {
	case int64(n) == r.ContentLength && errors.Is(err, io.ErrUnexpectedEOF):
		return buf[:n], nil // all of it, and then the end
	case err != nil:
		return nil, err
	}
	// More bytes than announced: net/http does not allow that.
	return nil, errors.New("request body longer than its Content-Length")
}

// WriteError answers err as an hRPC error, classified by rpcerrors: the
// identifier and status of its class, and RetryInfo in the details of a
// busy refusal.
func WriteError(w http.ResponseWriter, err error) {
	c := rpcerrors.Classify(err)
	writeError(w, c.HTTPStatus, c.Identifier, c.Message, rpcerrors.HRPCDetails(err))
}

func setHeaders(h http.Header) {
	h.Set("Content-Type", ContentType)
	h.Set(VersionHeader, Version)
}

// writeError writes an hRPC error reply; both hRPC headers are always set.
func writeError(w http.ResponseWriter, status int, identifier, message string, details []byte) {
	body, _ := proto.Marshal(&harmonytypesv1.Error{Identifier: identifier, HumanMessage: message, MoreDetails: details})
	setHeaders(w.Header())
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
