package admin

import (
	"context"
	"fmt"

	"connectrpc.com/connect"

	"github.com/harmony-postbox/postbox/domain"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
)

// Operator runs an operator's commands on the delivery engine.
type Operator interface {
	PullFrom(ctx context.Context, server domain.ServerID) error
	Resume(ctx context.Context, server domain.ServerID) error
}

func parsePeer(field, raw string) (domain.ServerID, error) {
	id, err := domain.ParseServerID(raw)
	if err != nil {
		return domain.ServerID{}, fmt.Errorf("%w: %s: %w", domain.ErrInvalidArgument, field, err)
	}
	return id, nil
}

// PullNow pulls from a peer now and returns once the pull is done.
func (s *Service) PullNow(ctx context.Context, req *connect.Request[adminv1.PullNowRequest]) (*connect.Response[adminv1.PullNowResponse], error) {
	id, err := parsePeer("server_id", req.Msg.GetServerId())
	if err != nil {
		return nil, err
	}
	if err := s.operator.PullFrom(ctx, id); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.PullNowResponse{}), nil
}

// ResumePush returns a peer in queue mode to push mode.
func (s *Service) ResumePush(ctx context.Context, req *connect.Request[adminv1.ResumePushRequest]) (*connect.Response[adminv1.ResumePushResponse], error) {
	id, err := parsePeer("server_id", req.Msg.GetServerId())
	if err != nil {
		return nil, err
	}
	if err := s.operator.Resume(ctx, id); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.ResumePushResponse{}), nil
}

// Renamer renames this server.
type Renamer interface {
	Rename(ctx context.Context, newID domain.ServerID) error
}

// Rename renames this server; peers are told in the background, each until
// it accepts (see ListPeers' knows_our_server_id).
func (s *Service) Rename(ctx context.Context, req *connect.Request[adminv1.RenameRequest]) (*connect.Response[adminv1.RenameResponse], error) {
	id, err := parsePeer("new_server_id", req.Msg.GetNewServerId())
	if err != nil {
		return nil, err
	}
	if err := s.renamer.Rename(ctx, id); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.RenameResponse{}), nil
}
