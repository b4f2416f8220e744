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
	Skip(ctx context.Context, server domain.ServerID, through uint64, reason string) (domain.EventsSkipped, error)
	Stuck() map[domain.ServerID]domain.StuckEvent
}

// parsePeer reads a server ID from a request; a bad one is refused
// naming the field, the value and the form expected (ErrorsInFull sends
// the whole text).
func parsePeer(field, raw string) (domain.ServerID, error) {
	id, err := domain.ParseServerID(raw)
	if err != nil {
		return domain.ServerID{}, fmt.Errorf("%w: %s: %w; a server ID is host:port, e.g. chat.example.com:2289", domain.ErrInvalidArgument, field, err)
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

// Skip gives up on a peer's oldest undelivered events.
func (s *Service) Skip(ctx context.Context, req *connect.Request[adminv1.SkipRequest]) (*connect.Response[adminv1.SkipResponse], error) {
	id, err := parsePeer("server_id", req.Msg.GetServerId())
	if err != nil {
		return nil, err
	}
	skipped, err := s.operator.Skip(ctx, id, req.Msg.GetThroughSeq(), req.Msg.GetReason())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.SkipResponse{Skipped: skippedMessage(&skipped)}), nil
}

func skippedMessage(s *domain.EventsSkipped) *adminv1.SkippedEvents {
	if s == nil {
		return nil
	}
	return &adminv1.SkippedEvents{FromSeq: s.FromSeq, ThroughSeq: s.ThroughSeq, Reason: s.Reason}
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
