// Package federation serves the endpoints other servers call:
// protocol.sync.v1.PostboxService (Pull, Push, NotifyNewId) and
// protocol.auth.v1.AuthService.Key. Handlers are thin: authenticate the
// caller, translate the message, call the Postbox behind them. The same
// handler values serve Connect, gRPC and hRPC.
package federation

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"math"
	"net/http"

	"connectrpc.com/connect"

	"github.com/harmony-postbox/postbox/adapters/authtoken"
	"github.com/harmony-postbox/postbox/adapters/rpcerrors"
	"github.com/harmony-postbox/postbox/adapters/seqext"
	"github.com/harmony-postbox/postbox/domain"
	authv1 "github.com/harmony-postbox/postbox/gen/protocol/auth/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
	"github.com/harmony-postbox/postbox/gen/protocol/sync/v1/syncv1connect"
)

// Authenticator checks a caller's token for one operation.
type Authenticator interface {
	Verify(ctx context.Context, tok domain.SignedToken, op domain.Operation, newServerID string) (domain.Caller, error)
}

// Postbox is what the endpoints do once the caller is known.
type Postbox interface {
	// ServeAccountedPull answers a Pull from caller; ack is the caller's
	// acknowledgement, if it sent one, and account its continuity account,
	// if it gave one.
	ServeAccountedPull(ctx context.Context, caller domain.Caller, ack *uint64, account *domain.PullAccount) (domain.PullBatch[*syncv1.Event], error)
	// AcceptClaimedPush applies pushed events: one, or for a Postbox sender
	// the first at seq and those that follow it. seq is the sender's
	// sequence number, if it sent one, and claim its continuity claim, if it
	// made one. It returns once the events are durable, or refused.
	AcceptClaimedPush(ctx context.Context, caller domain.Caller, events []*syncv1.Event, seq *uint64, claim *domain.PushClaim) (domain.PushAnswer, error)
	// AcceptRename records that caller is now called newID.
	AcceptRename(ctx context.Context, caller domain.Caller, newID domain.ServerID) error
}

// AuthObserver learns of refused federation requests, by reason.
type AuthObserver interface {
	AuthFailed(identifier string)
}

// PostboxService implements syncv1connect.PostboxServiceHandler.
type PostboxService struct {
	auth        Authenticator
	box         Postbox
	observer    AuthObserver
	batchBytes  uint64
	batchEvents uint32 // 0: pushes of one event only
}

// MaxEventsPerPush is the most events a push to this server may carry, the
// first included, once it accepts batches: the same cap as a Pull reply's,
// so one append stays bounded however small the events.
const MaxEventsPerPush = 10000

// NewPostboxService returns the federation handlers.
func NewPostboxService(auth Authenticator, box Postbox) *PostboxService {
	return &PostboxService{auth: auth, box: box}
}

// AcceptBatches makes s tell Postbox senders that a push may carry
// following events, up to MaxEventsPerPush events and a request body of
// maxRequestBytes (the limit the transports enforce). Without it, a push
// of more than one event is refused.
func (s *PostboxService) AcceptBatches(maxRequestBytes int64) *PostboxService {
	s.batchBytes = uint64(max(maxRequestBytes, 0))
	s.batchEvents = MaxEventsPerPush
	return s
}

// ObserveAuthFailures makes s tell o of every refused request.
func (s *PostboxService) ObserveAuthFailures(o AuthObserver) *PostboxService {
	s.observer = o
	return s
}

// Authentication happens from the headers alone, before the request body
// is read (Preauthenticate, called by the listener), so a stranger cannot
// make this server hold request bodies: the token's signature, time,
// audience and nonce are all in Authorization. NotifyNewId's token signs
// the new ID, which the handler then compares with the body. A handler
// reached without Preauthenticate (mounted on its own) authenticates itself
// from the same header, after its body was read.
func (s *PostboxService) authenticate(ctx context.Context, h http.Header, op domain.Operation, newServerID string) (domain.Caller, error) {
	tok, err := authtoken.Decode(h.Get(authtoken.HeaderName))
	var caller domain.Caller
	if err == nil {
		caller, err = s.auth.Verify(ctx, tok, op, newServerID)
	}
	if err != nil {
		s.authFailed(err)
	}
	return caller, err
}

func (s *PostboxService) authFailed(err error) {
	if s.observer != nil {
		s.observer.AuthFailed(rpcerrors.Classify(err).Identifier)
	}
}

// preauthenticated is what Preauthenticate puts in a request's context.
type preauthenticated struct {
	caller      domain.Caller
	op          domain.Operation
	newServerID string // what the token signed, for NotifyNewId
}

type preauthKey struct{}

// operation is what a token for procedure authorises; ok is false for a
// procedure that needs no token.
func operation(procedure string) (_ domain.Operation, ok bool) {
	switch procedure {
	case syncv1connect.PostboxServicePullProcedure:
		return domain.OpPull, true
	case syncv1connect.PostboxServicePushProcedure:
		return domain.OpPush, true
	case syncv1connect.PostboxServiceNotifyNewIdProcedure:
		return domain.OpNotifyNewID, true
	}
	return 0, false
}

// Preauthenticate verifies the token of a call to procedure from its
// headers alone, before the body is read, and returns a context carrying the
// caller, which the handler then uses. For a procedure that needs no token
// (AuthService.Key, or a path that is not a federation call) it returns ctx
// and ok=false.
func (s *PostboxService) Preauthenticate(ctx context.Context, procedure string, h http.Header) (_ context.Context, _ domain.Caller, ok bool, _ error) {
	op, ok := operation(procedure)
	if !ok {
		return ctx, domain.Caller{}, false, nil
	}
	tok, err := authtoken.Decode(h.Get(authtoken.HeaderName))
	var caller domain.Caller
	if err == nil {
		// NotifyNewId: the ID the token signs; the handler compares it
		// with the body's.
		caller, err = s.auth.Verify(ctx, tok, op, tok.Claims.NewServerID)
	}
	if err != nil {
		s.authFailed(err)
		return ctx, domain.Caller{}, true, err
	}
	pre := preauthenticated{caller: caller, op: op, newServerID: tok.Claims.NewServerID}
	return context.WithValue(ctx, preauthKey{}, pre), caller, true, nil
}

// caller is the authenticated caller of a handler: the one Preauthenticate
// verified for this operation, else verified now from the header.
func (s *PostboxService) caller(ctx context.Context, h http.Header, op domain.Operation, newServerID string) (domain.Caller, error) {
	pre, ok := ctx.Value(preauthKey{}).(preauthenticated)
	if !ok || pre.op != op {
		return s.authenticate(ctx, h, op, newServerID)
	}
	if op == domain.OpNotifyNewID && pre.newServerID != newServerID {
		err := fmt.Errorf("%w: the token's new_server_id %q differs from the request's %q", domain.ErrExtensionRequired, pre.newServerID, newServerID)
		s.authFailed(err)
		return domain.Caller{}, err
	}
	return pre.caller, nil
}

// Pull serves the caller's queue.
func (s *PostboxService) Pull(ctx context.Context, req *connect.Request[syncv1.PullRequest]) (*connect.Response[syncv1.PullResponse], error) {
	caller, err := s.caller(ctx, req.Header(), domain.OpPull, "")
	if err != nil {
		return nil, err
	}
	var ack *uint64
	if a, ok := seqext.Ack(req.Msg); ok {
		ack = &a
	}
	var account *domain.PullAccount
	if epoch, ackID, ok := seqext.PullContinuity(req.Msg); ok {
		account = &domain.PullAccount{Epoch: epoch, AckID: ackID}
	}
	batch, err := s.box.ServeAccountedPull(ctx, caller, ack, account)
	if err != nil {
		return nil, err
	}
	res := &syncv1.PullResponse{EventQueue: batch.Events}
	if len(batch.Events) > 0 {
		seqext.SetFirstSeq(res, batch.FirstSeq)
		seqext.SetPullReplyContinuity(res, batch.Epoch, batch.LastID)
	}
	if h := batch.Held; h != nil {
		held := seqext.Continuity{Epoch: h.Epoch}
		if h.Last != nil {
			held.Last = &seqext.Ref{Seq: h.Last.Seq, ID: h.Last.ID}
		}
		seqext.SetPullReplyHeld(res, held)
	}
	return connect.NewResponse(res), nil
}

// Push accepts one event, or from a Postbox sender the events that follow
// it too, and answers a Postbox sender with how far it took them.
func (s *PostboxService) Push(ctx context.Context, req *connect.Request[syncv1.PushRequest]) (*connect.Response[syncv1.PushResponse], error) {
	caller, err := s.caller(ctx, req.Header(), domain.OpPush, "")
	if err != nil {
		return nil, err
	}
	if req.Msg.GetEvent() == nil {
		return nil, fmt.Errorf("%w: push without an event", domain.ErrInvalidArgument)
	}
	events := []*syncv1.Event{req.Msg.GetEvent()}
	n, hasSeq := seqext.PushSeq(req.Msg)
	if !hasSeq {
		// An upstream sender: one event, and an answer as upstream gives.
		if _, err := s.box.AcceptClaimedPush(ctx, caller, events, nil, nil); err != nil {
			return nil, err
		}
		return connect.NewResponse(&syncv1.PushResponse{}), nil
	}
	following, err := seqext.Following(req.Msg)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", domain.ErrInvalidArgument, err)
	}
	if limit := max(s.batchEvents, 1); len(following) >= int(limit) {
		return nil, fmt.Errorf("%w: a push of %d events; this server takes at most %d", domain.ErrInvalidArgument, 1+len(following), limit)
	}
	if uint64(len(following)) > math.MaxUint64-n {
		return nil, fmt.Errorf("%w: sequence numbers from %d overflow", domain.ErrInvalidArgument, n)
	}
	events = append(events, following...)
	var claim *domain.PushClaim
	if c, lastID, ok := seqext.PushContinuity(req.Msg); ok {
		claim = &domain.PushClaim{Epoch: c.Epoch, LastID: lastID, Term: seqext.PushTerm(req.Msg)}
		if c.Last != nil {
			claim.Prev = &domain.EventRef{Seq: c.Last.Seq, ID: c.Last.ID}
		}
	}
	answer, err := s.box.AcceptClaimedPush(ctx, caller, events, &n, claim)
	if err != nil {
		return nil, err
	}
	res := &syncv1.PushResponse{}
	if answer.Refused {
		// Nothing applied: no last_seq, which would count events delivered.
		seqext.SetPushLimits(res, s.batchBytes, s.batchEvents)
	} else {
		seqext.SetPushReply(res, seqext.PushReply{LastSeq: n + uint64(len(following)), BatchBytes: s.batchBytes, BatchEvents: s.batchEvents})
	}
	if claim != nil {
		outcome := seqext.PushOutcome{Refused: answer.Refused}
		if a := answer.Applied; a != nil {
			outcome.Applied = &seqext.Ref{Seq: a.Seq, ID: a.ID}
		}
		seqext.SetPushOutcome(res, outcome)
	}
	return connect.NewResponse(res), nil
}

// NotifyNewId accepts a peer's rename.
func (s *PostboxService) NotifyNewId(ctx context.Context, req *connect.Request[syncv1.NotifyNewIdRequest]) (*connect.Response[syncv1.NotifyNewIdResponse], error) {
	caller, err := s.caller(ctx, req.Header(), domain.OpNotifyNewID, req.Msg.GetNewServerId())
	if err != nil {
		return nil, err
	}
	newID, err := domain.ParseServerID(req.Msg.GetNewServerId())
	if err != nil {
		return nil, fmt.Errorf("%w: new_server_id: %w", domain.ErrInvalidArgument, err)
	}
	if err := s.box.AcceptRename(ctx, caller, newID); err != nil {
		return nil, err
	}
	return connect.NewResponse(&syncv1.NotifyNewIdResponse{}), nil
}

// KeyService implements authv1connect.AuthServiceHandler.
type KeyService struct {
	public ed25519.PublicKey
}

// NewKeyService serves this server's public key.
func NewKeyService(public ed25519.PublicKey) *KeyService {
	return &KeyService{public: public}
}

// Key returns the raw 32-byte public key; it needs no authentication.
func (s *KeyService) Key(context.Context, *connect.Request[authv1.KeyRequest]) (*connect.Response[authv1.KeyResponse], error) {
	return connect.NewResponse(&authv1.KeyResponse{Key: s.public}), nil
}
