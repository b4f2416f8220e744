// Package admin serves postbox.admin.v1.AdminService, the local API for
// operators and the homeserver, on the admin listener.
package admin

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	"github.com/harmony-postbox/postbox/adapters/rpcerrors"
	"github.com/harmony-postbox/postbox/domain"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	"github.com/harmony-postbox/postbox/gen/postbox/admin/v1/adminv1connect"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// Version is the running build's version.
type Version string

// Sender hands an event over for delivery to a peer and returns its
// sequence number in that peer's outbox.
type Sender interface {
	Send(ctx context.Context, to domain.ServerID, event *syncv1.Event) (uint64, error)
	// SendKeyed is Send with an idempotency key.
	SendKeyed(ctx context.Context, to domain.ServerID, event *syncv1.Event, key string) (uint64, error)
	// SendBatch hands over many events, each peer's together, with an
	// outcome per send.
	SendBatch(ctx context.Context, sends []domain.BatchSend[*syncv1.Event]) []domain.SendOutcome
}

// Service implements adminv1connect.AdminServiceHandler.
type Service struct {
	identity  *domain.Identity
	public    ed25519.PublicKey
	version   Version
	sender    Sender
	operator  Operator
	received  ReceivedLog
	names     PeerNames
	renamer   Renamer
	views     PeerViews
	ages      PendingAges // optional
	retention Retention   // optional

	consumers consumerSettings // optional
}

// NewService returns the admin API.
func NewService(identity *domain.Identity, public ed25519.PublicKey, version Version, sender Sender, operator Operator,
	received ReceivedLog, names PeerNames, renamer Renamer, views PeerViews,
) *Service {
	return &Service{identity: identity, public: public, version: version, sender: sender, operator: operator,
		received: received, names: names, renamer: renamer, views: views}
}

// Send hands an event over for delivery.
func (s *Service) Send(ctx context.Context, req *connect.Request[adminv1.SendRequest]) (*connect.Response[adminv1.SendResponse], error) {
	to, err := s.checkSend(req.Msg)
	if err != nil {
		return nil, err
	}
	var seq uint64
	if key := req.Msg.GetIdempotencyKey(); key != "" {
		seq, err = s.sender.SendKeyed(ctx, to, req.Msg.GetEvent(), key)
	} else {
		seq, err = s.sender.Send(ctx, to, req.Msg.GetEvent())
	}
	if err != nil {
		return nil, sendError(err)
	}
	return connect.NewResponse(&adminv1.SendResponse{Seq: seq}), nil
}

// checkSend refuses a send no peer could take.
func (s *Service) checkSend(req *adminv1.SendRequest) (domain.ServerID, error) {
	to, err := parsePeer("to", req.GetTo())
	if err != nil {
		return to, err
	}
	if to == s.identity.Current() {
		return to, fmt.Errorf("%w: to: %s is this server's own ID; send to a peer's ID", domain.ErrInvalidArgument, to)
	}
	if req.GetEvent().GetKind() == nil {
		return to, fmt.Errorf(`%w: the event has no kind: set one of protocol.sync.v1.Event's kinds, e.g. {"userAddedToGuild":{"userId":"42","guildId":"7"}}`, domain.ErrInvalidArgument)
	}
	if key := req.GetIdempotencyKey(); key != "" {
		if err := domain.CheckIdempotencyKey(key); err != nil {
			return to, err
		}
	}
	return to, nil
}

// sendError names the limit an event too large is over: the sender must
// know it to fix the event.
func sendError(err error) error {
	if tooLarge := (*domain.EventTooLargeError)(nil); errors.As(err, &tooLarge) {
		return fmt.Errorf("%w: %w (the server's --max-event-bytes)", domain.ErrInvalidArgument, tooLarge)
	}
	return err
}

// SendBatch hands many events over for delivery, with a result per send.
func (s *Service) SendBatch(ctx context.Context, req *connect.Request[adminv1.SendBatchRequest]) (*connect.Response[adminv1.SendBatchResponse], error) {
	reqs := req.Msg.GetSends()
	if len(reqs) > domain.MaxBatchSends {
		return nil, fmt.Errorf("%w: %d sends in one batch, over %d: split it", domain.ErrInvalidArgument, len(reqs), domain.MaxBatchSends)
	}
	results := make([]*adminv1.SendBatchResult, len(reqs))
	var sends []domain.BatchSend[*syncv1.Event]
	var at []int
	for i, r := range reqs {
		to, err := s.checkSend(r)
		if err != nil {
			results[i] = batchResult(0, fmt.Errorf("send %d: %w", i, err))
			continue
		}
		sends = append(sends, domain.BatchSend[*syncv1.Event]{To: to, Event: r.GetEvent(), Key: r.GetIdempotencyKey()})
		at = append(at, i)
	}
	if len(sends) > 0 {
		for n, o := range s.sender.SendBatch(ctx, sends) {
			var err error
			if o.Err != nil {
				err = fmt.Errorf("send %d: %w", at[n], sendError(o.Err))
			}
			results[at[n]] = batchResult(o.Seq, err)
		}
	}
	return connect.NewResponse(&adminv1.SendBatchResponse{Results: results}), nil
}

func batchResult(seq uint64, err error) *adminv1.SendBatchResult {
	if err == nil {
		return &adminv1.SendBatchResult{Seq: seq}
	}
	ce := rpcerrors.ToConnect(err)
	return &adminv1.SendBatchResult{Error: ce.Message(), Code: ce.Code().String()}
}

// GetServerInfo describes this server.
func (s *Service) GetServerInfo(context.Context, *connect.Request[adminv1.GetServerInfoRequest]) (*connect.Response[adminv1.GetServerInfoResponse], error) {
	return connect.NewResponse(&adminv1.GetServerInfoResponse{
		ServerId:  s.identity.Current().String(),
		PublicKey: s.public,
		Version:   string(s.version),
	}), nil
}

var _ adminv1connect.AdminServiceHandler = (*Service)(nil)
