// Package admin serves postbox.admin.v1.AdminService, the local API for
// operators and the homeserver, on the admin listener.
package admin

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"

	"connectrpc.com/connect"

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
}

// Service implements adminv1connect.AdminServiceHandler.
type Service struct {
	identity *domain.Identity
	public   ed25519.PublicKey
	version  Version
	sender   Sender
	operator Operator
	received ReceivedLog
	names    PeerNames
	renamer  Renamer
	views    PeerViews
	ages     PendingAges // optional

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
	to, err := parsePeer("to", req.Msg.GetTo())
	if err != nil {
		return nil, err
	}
	if to == s.identity.Current() {
		return nil, fmt.Errorf("%w: to: %s is this server's own ID; send to a peer's ID", domain.ErrInvalidArgument, to)
	}
	if req.Msg.GetEvent().GetKind() == nil {
		return nil, fmt.Errorf(`%w: the event has no kind: set one of protocol.sync.v1.Event's kinds, e.g. {"userAddedToGuild":{"userId":"42","guildId":"7"}}`, domain.ErrInvalidArgument)
	}
	seq, err := s.sender.Send(ctx, to, req.Msg.GetEvent())
	if tooLarge := (*domain.EventTooLargeError)(nil); errors.As(err, &tooLarge) {
		// The sender must know the limit to fix the event.
		return nil, fmt.Errorf("%w: %w (the server's --max-event-bytes)", domain.ErrInvalidArgument, tooLarge)
	}
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.SendResponse{Seq: seq}), nil
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
