// Package peerclient calls other servers' PostboxService: it signs a fresh
// token for every request and speaks hRPC by default, since that is what
// Harmony servers accept, or Connect or gRPC when configured (per peer or
// for all).
package peerclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/authtoken"
	"github.com/harmony-postbox/postbox/adapters/hrpc"
	"github.com/harmony-postbox/postbox/adapters/netguard"
	"github.com/harmony-postbox/postbox/adapters/rpcerrors"
	"github.com/harmony-postbox/postbox/adapters/seqext"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
	"github.com/harmony-postbox/postbox/gen/protocol/sync/v1/syncv1connect"
)

// Protocol is a wire protocol for outbound calls.
type Protocol string

// The outbound protocols.
const (
	HRPC    Protocol = "hrpc"
	Connect Protocol = "connect"
	GRPC    Protocol = "grpc"
)

// ParseProtocol reads a protocol name.
func ParseProtocol(s string) (Protocol, error) {
	switch p := Protocol(strings.ToLower(strings.TrimSpace(s))); p {
	case HRPC, Connect, GRPC:
		return p, nil
	case "":
		return HRPC, nil
	}
	return "", fmt.Errorf("%w: protocol %q: want hrpc, connect or grpc", domain.ErrInvalidArgument, s)
}

// Config tunes the client.
type Config struct {
	// Insecure is Plaintext with every address allowed: for loopback work
	// (--insecure-peers).
	Insecure bool
	// Plaintext calls peers over http:// (h2c for gRPC).
	Plaintext bool
	// Guard decides which addresses may be dialled; nil: public addresses
	// only (every address if Insecure).
	Guard *netguard.Guard
	// Timeouts bound each call; zero fields take DefaultTimeouts'.
	Timeouts Timeouts
	// TLS is the client TLS configuration (system roots plus --peer-ca).
	TLS *tls.Config
	// Protocol is the default protocol; PerPeer overrides it.
	Protocol Protocol
	PerPeer  map[domain.ServerID]Protocol
	// MaxReplyBytes bounds a reply (a Pull reply can be large).
	MaxReplyBytes int64
	// Transport, if set, carries every call instead of dialling: for a
	// simulated network (adapters/simnet). Guard, TLS and the dial and
	// handshake timeouts then do not apply; never set from configuration.
	Transport http.RoundTripper
}

// Self tells which of this server's IDs to sign with toward a peer: after a
// rename, the old one until that peer has accepted the new one.
type Self interface {
	IDFor(peer domain.ServerID) domain.ServerID
}

// Client calls peers. It is safe for concurrent use.
type Client struct {
	cfg    Config
	signer *authtoken.Signer
	self   Self
	web    *http.Client // HTTP/1.1, and HTTP/2 over TLS
	h2c    *http.Client // gRPC over plaintext needs HTTP/2 without TLS
}

// New returns a client.
func New(cfg Config, signer *authtoken.Signer, self Self) *Client {
	if cfg.Protocol == "" {
		cfg.Protocol = HRPC
	}
	if cfg.MaxReplyBytes <= 0 {
		cfg.MaxReplyBytes = 8 << 20
	}
	if cfg.Insecure {
		cfg.Plaintext = true
		if cfg.Guard == nil {
			cfg.Guard = netguard.New(netguard.Everything, domain.AccessList{})
		}
	}
	cfg.Timeouts = cfg.Timeouts.orDefault()
	dial := cfg.Guard.DialContext(cfg.Timeouts.Dial)
	web := new(http.Protocols)
	web.SetHTTP1(true)
	web.SetHTTP2(true)
	h2c := new(http.Protocols)
	h2c.SetUnencryptedHTTP2(true)
	transport := func(p *http.Protocols) *http.Client {
		return &http.Client{Transport: &http.Transport{
			// No proxy from the environment: the guard must judge the
			// peer's address, and HTTPS_PROXY would make it the proxy's.
			Proxy:       nil,
			DialContext: dial,
			// A clone per transport: transports write their ALPN protocols into
			// the config, so a shared one would offer "h2" to HTTP/1-only ones.
			TLSClientConfig: cfg.TLS.Clone(),
			Protocols:       p,
			// Idle connections are capped in all, not only per peer: a
			// server with thousands of peers would otherwise keep a
			// connection (and its goroutines) per recently pushed peer.
			MaxIdleConns:        256,
			MaxIdleConnsPerHost: 16,
			IdleConnTimeout:     30 * time.Second,
			TLSHandshakeTimeout: cfg.Timeouts.TLSHandshake,
		}}
	}
	if cfg.Transport != nil {
		simulated := &http.Client{Transport: cfg.Transport}
		return &Client{cfg: cfg, signer: signer, self: self, web: simulated, h2c: simulated}
	}
	return &Client{cfg: cfg, signer: signer, self: self, web: transport(web), h2c: transport(h2c)}
}

func (c *Client) protocol(peer domain.ServerID) Protocol {
	if p, ok := c.cfg.PerPeer[peer]; ok {
		return p
	}
	return c.cfg.Protocol
}

// message is a pointer to a generated protobuf struct.
type message[T any] interface {
	*T
	proto.Message
}

// call sends one request over the peer's protocol.
func call[Req, Res any, PReq message[Req], PRes message[Res]](ctx context.Context, c *Client, peer domain.ServerID, procedure, newServerID string, req PReq,
	viaConnect func(syncv1connect.PostboxServiceClient, context.Context, *connect.Request[Req]) (*connect.Response[Res], error),
) (PRes, error) {
	header, err := c.signer.Extended(c.self.IDFor(peer), peer, newServerID)
	if err != nil {
		return nil, err
	}
	base := peer.URL(!c.cfg.Plaintext)
	protocol := c.protocol(peer)
	ctx, stop := c.cfg.Timeouts.answerDeadline(ctx, proto.Size(req), procedure != syncv1connect.PostboxServicePushProcedure)
	defer stop()
	if protocol == HRPC {
		res := PRes(new(Res))
		h := http.Header{authtoken.HeaderName: {header}}
		if err := hrpc.Call(ctx, c.web, base, procedure, h, req, res, c.cfg.MaxReplyBytes); err != nil {
			return nil, noAnswer(ctx, fromPeer(err))
		}
		return res, nil
	}
	httpClient, opts := c.web, []connect.ClientOption{connect.WithReadMaxBytes(int(c.cfg.MaxReplyBytes))}
	if protocol == GRPC {
		opts = append(opts, connect.WithGRPC())
		if c.cfg.Plaintext {
			httpClient = c.h2c
		}
	}
	client := syncv1connect.NewPostboxServiceClient(httpClient, base, opts...)
	r := connect.NewRequest((*Req)(req))
	r.Header().Set(authtoken.HeaderName, header)
	out, err := viaConnect(client, ctx, r)
	if err != nil {
		return nil, noAnswer(ctx, fromPeer(fromConnect(procedure, err)))
	}
	return PRes(out.Msg), nil
}

// fromConnect gives Connect and gRPC errors the same shape as hRPC ones.
// Only an error the peer sent is a RemoteError; one connect-go made up on
// this side (a refused dial, a timeout) stays a local error, as over hRPC.
func fromConnect(procedure string, err error) error {
	var ce *connect.Error
	if !errors.As(err, &ce) || !connect.IsWireError(ce) {
		return fmt.Errorf("%s: %w", procedure, err)
	}
	remote := &hrpc.RemoteError{
		Procedure:    procedure,
		HTTPStatus:   connectHTTPStatus(ce.Code()),
		Identifier:   ce.Meta().Get(rpcerrors.IdentifierHeader),
		HumanMessage: ce.Message(),
	}
	remote.RetryAfter, remote.HasRetryInfo = rpcerrors.RetryAfterOf(ce)
	if ce.Code() == connect.CodeResourceExhausted && !remote.HasRetryInfo {
		// Connect has one code for "busy" and "too large"; a busy refusal
		// carries RetryInfo, so without it this is the size limit, hRPC's
		// 413: a failure, not a request to wait.
		remote.HTTPStatus = http.StatusRequestEntityTooLarge
	}
	return remote
}

// fromPeer marks an error answer from the peer as the peer's, read back
// through the one error table (a domain.RemoteError that errors.Is matches
// with the sentinel it stands for); an error made on this side (no answer)
// stays as it is.
func fromPeer(err error) error {
	var remote *hrpc.RemoteError
	if !errors.As(err, &remote) {
		return err
	}
	wait, busy := remote.Busy()
	return rpcerrors.FromPeer(remote.Identifier, err, busy, wait)
}

// Busy reports whether err is a peer's refusal for now as too busy (429,
// hrpc.resource-exhausted, ResourceExhausted), with the wait it asked for
// (0 when it sent no RetryInfo).
func Busy(err error) (time.Duration, bool) { return domain.PeerBusy(fromPeer(err)) }

// PushResult is a receiver's answer to a push.
type PushResult = domain.PushResult

// Push delivers events[0] with sequence number seq and, to a receiver that
// announced it takes them, events[1:] as the events that follow it.
func (c *Client) Push(ctx context.Context, peer domain.ServerID, seq uint64, events []*syncv1.Event) (PushResult, error) {
	return c.push(ctx, peer, seq, events, nil)
}

// PushClaimed is Push with a continuity claim, which a receiver that checks
// continuity compares with what it holds before applying anything.
func (c *Client) PushClaimed(ctx context.Context, peer domain.ServerID, seq uint64, events []*syncv1.Event, claim domain.PushClaim) (PushResult, error) {
	return c.push(ctx, peer, seq, events, &claim)
}

func (c *Client) push(ctx context.Context, peer domain.ServerID, seq uint64, events []*syncv1.Event, claim *domain.PushClaim) (PushResult, error) {
	if len(events) == 0 {
		return PushResult{}, errors.New("push of no event")
	}
	req := &syncv1.PushRequest{Event: events[0]}
	seqext.SetPushSeq(req, seq)
	if err := seqext.AddFollowing(req, events[1:]...); err != nil {
		return PushResult{}, err
	}
	if claim != nil {
		seqext.SetPushContinuity(req, seqext.Continuity{Epoch: claim.Epoch, Last: toRef(claim.Prev)}, claim.LastID)
		seqext.SetPushTerm(req, claim.Term)
	}
	res, err := call(ctx, c, peer, syncv1connect.PostboxServicePushProcedure, "", req, syncv1connect.PostboxServiceClient.Push)
	if err != nil {
		return PushResult{}, err
	}
	reply, ok := seqext.GetPushReply(res)
	var answer *domain.PushAnswer
	if outcome, checked := seqext.GetPushOutcome(res); checked {
		answer = &domain.PushAnswer{Refused: outcome.Refused, Applied: fromRef(outcome.Applied)}
		if outcome.Refused {
			return PushResult{Through: seq, BatchBytes: reply.BatchBytes, BatchEvents: reply.BatchEvents, Answer: answer}, nil
		}
	}
	if !ok {
		return PushResult{Through: seq}, nil // an upstream receiver took the first event only
	}
	last := seq + uint64(len(events)) - 1
	return PushResult{Through: min(max(reply.LastSeq, seq), last), BatchBytes: reply.BatchBytes, BatchEvents: reply.BatchEvents, Answer: answer}, nil
}

func toRef(r *domain.EventRef) *seqext.Ref {
	if r == nil {
		return nil
	}
	return &seqext.Ref{Seq: r.Seq, ID: r.ID}
}

func fromRef(r *seqext.Ref) *domain.EventRef {
	if r == nil {
		return nil
	}
	return &domain.EventRef{Seq: r.Seq, ID: r.ID}
}

// PullResult is a peer's Pull reply.
type PullResult = domain.PullBatch[*syncv1.Event]

// Pull fetches the peer's queue for this server, acknowledging what this
// server has applied from it when ack is set.
func (c *Client) Pull(ctx context.Context, peer domain.ServerID, ack *uint64) (PullResult, error) {
	return c.pull(ctx, peer, ack, nil)
}

// PullAccounted is Pull with this server's account of what it applied
// from the peer, which a peer that checks continuity compares with its
// outbox.
func (c *Client) PullAccounted(ctx context.Context, peer domain.ServerID, ack *uint64, account domain.PullAccount) (PullResult, error) {
	return c.pull(ctx, peer, ack, &account)
}

func (c *Client) pull(ctx context.Context, peer domain.ServerID, ack *uint64, account *domain.PullAccount) (PullResult, error) {
	req := &syncv1.PullRequest{}
	if ack != nil {
		seqext.SetAck(req, *ack)
	}
	if account != nil {
		seqext.SetPullContinuity(req, account.Epoch, account.AckID)
	}
	res, err := call(ctx, c, peer, syncv1connect.PostboxServicePullProcedure, "", req, syncv1connect.PostboxServiceClient.Pull)
	if err != nil {
		return PullResult{}, err
	}
	first, ok := seqext.FirstSeq(res)
	epoch, lastID := seqext.PullReplyContinuity(res)
	out := PullResult{Events: res.GetEventQueue(), FirstSeq: first, HasSeq: ok, Epoch: epoch, LastID: lastID}
	if held, ok := seqext.PullReplyHeld(res); ok {
		out.Held = &domain.Held{Epoch: held.Epoch}
		if held.Last != nil {
			out.Held.Last = &domain.EventRef{Seq: held.Last.Seq, ID: held.Last.ID}
		}
	}
	return out, nil
}

// NotifyNewID tells peer that this server is now newID.
func (c *Client) NotifyNewID(ctx context.Context, peer, newID domain.ServerID) error {
	req := &syncv1.NotifyNewIdRequest{NewServerId: newID.String()}
	_, err := call(ctx, c, peer, syncv1connect.PostboxServiceNotifyNewIdProcedure, newID.String(), req, syncv1connect.PostboxServiceClient.NotifyNewId)
	return err
}

// connectHTTPStatus is the HTTP status Connect's protocol gives a code.
func connectHTTPStatus(code connect.Code) int {
	switch code {
	case connect.CodeCanceled:
		return 499
	case connect.CodeInvalidArgument, connect.CodeFailedPrecondition, connect.CodeOutOfRange:
		return http.StatusBadRequest
	case connect.CodeDeadlineExceeded:
		return http.StatusGatewayTimeout
	case connect.CodeNotFound:
		return http.StatusNotFound
	case connect.CodeAlreadyExists, connect.CodeAborted:
		return http.StatusConflict
	case connect.CodePermissionDenied:
		return http.StatusForbidden
	case connect.CodeResourceExhausted:
		return http.StatusTooManyRequests
	case connect.CodeUnimplemented:
		return http.StatusNotImplemented
	case connect.CodeUnavailable:
		return http.StatusServiceUnavailable
	case connect.CodeUnauthenticated:
		return http.StatusUnauthorized
	}
	return http.StatusInternalServerError
}
