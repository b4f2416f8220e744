package admin

import (
	"context"
	"fmt"

	"connectrpc.com/connect"

	"github.com/harmony-postbox/postbox/domain"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
)

// ListGuilds lists a local user's guilds on peers, from the projections
// once they have caught up with everything stored when the call arrived.
func (s *Service) ListGuilds(ctx context.Context, req *connect.Request[adminv1.ListGuildsRequest]) (*connect.Response[adminv1.ListGuildsResponse], error) {
	state, err := s.views.Current(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: projections: %w", domain.ErrUnavailable, err)
	}
	res := &adminv1.ListGuildsResponse{Guilds: []*adminv1.GuildEntry{}}
	for _, g := range state.Guilds(req.Msg.GetUserId()) {
		res.Guilds = append(res.Guilds, &adminv1.GuildEntry{GuildId: g.GuildID, ServerId: g.ServerID})
	}
	return connect.NewResponse(res), nil
}

// ListInvites lists a local user's pending invites from peers, likewise.
func (s *Service) ListInvites(ctx context.Context, req *connect.Request[adminv1.ListInvitesRequest]) (*connect.Response[adminv1.ListInvitesResponse], error) {
	state, err := s.views.Current(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: projections: %w", domain.ErrUnavailable, err)
	}
	res := &adminv1.ListInvitesResponse{Invites: []*adminv1.PendingInvite{}}
	for _, inv := range state.Invites(req.Msg.GetUserId()) {
		res.Invites = append(res.Invites, &adminv1.PendingInvite{InviteId: inv.InviteID, InviterId: inv.InviterID, ServerId: inv.ServerID})
	}
	return connect.NewResponse(res), nil
}
