package admin

import (
	"context"
	"fmt"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/harmony-postbox/postbox/domain"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	"github.com/harmony-postbox/postbox/projections"
)

// PeerViews gives the projections as of now: Current includes every event
// stored when it was called.
type PeerViews interface {
	Current(ctx context.Context) (*projections.State, error)
}

// ListPeers lists every peer from the projections, once they have caught
// up with everything stored when the call arrived.
func (s *Service) ListPeers(ctx context.Context, _ *connect.Request[adminv1.ListPeersRequest]) (*connect.Response[adminv1.ListPeersResponse], error) {
	state, err := s.views.Current(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: projections: %w", domain.ErrUnavailable, err)
	}
	res := &adminv1.ListPeersResponse{}
	stuck := s.operator.Stuck()
	for _, v := range state.Peers() {
		res.Peers = append(res.Peers, peerMessage(v, stuck))
	}
	return connect.NewResponse(res), nil
}

// GetPeer shows one peer, found by its current or a former server ID.
func (s *Service) GetPeer(ctx context.Context, req *connect.Request[adminv1.GetPeerRequest]) (*connect.Response[adminv1.GetPeerResponse], error) {
	id, err := parsePeer("server_id", req.Msg.GetServerId())
	if err != nil {
		return nil, err
	}
	state, err := s.views.Current(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: projections: %w", domain.ErrUnavailable, err)
	}
	v, ok := state.Peer(id.String())
	if !ok {
		return nil, fmt.Errorf("%w: %s", domain.ErrUnknownPeer, id)
	}
	return connect.NewResponse(&adminv1.GetPeerResponse{Peer: peerMessage(v, s.operator.Stuck())}), nil
}

func peerMessage(v projections.PeerView, stuck map[domain.ServerID]domain.StuckEvent) *adminv1.Peer {
	mode := adminv1.Mode_MODE_PUSH
	if v.Mode == domain.ModeQueue {
		mode = adminv1.Mode_MODE_QUEUE
	}
	p := &adminv1.Peer{
		ServerId:         v.ServerID,
		PeerId:           v.PeerID,
		Head:             v.Head,
		Delivered:        v.Delivered,
		Pending:          v.Pending(),
		Mode:             mode,
		AwaitingAck:      v.HandedOver - min(v.Delivered, v.HandedOver),
		Attempts:         v.Attempts,
		LastError:        v.LastError,
		EventsReceived:   v.EventsReceived,
		FormerServerIds:  v.FormerServerIDs,
		PublicKey:        v.PublicKey,
		KnowsOurServerId: v.KnowsOurServerID,
		Skipped:          v.Skipped,
		Epoch:            v.Epoch,
		EpochsStarted:    v.EpochsStarted,
		ReceiverRewinds:  v.ReceiverRewinds,
		LastSkip:         skippedMessage(v.LastSkip),
	}
	if id, err := domain.ParseServerID(v.ServerID); err == nil {
		// The engine's view may be ahead of the projections: a stuck event
		// they show delivered already is not stuck.
		if st, ok := stuck[id]; ok && st.Seq >= v.Delivered {
			p.Stuck = &adminv1.StuckEvent{Seq: st.Seq, Reason: st.Reason}
		}
	}
	if !v.LastPush.IsZero() {
		p.LastPush = timestamppb.New(v.LastPush)
	}
	if !v.LastPullServed.IsZero() {
		p.LastPullServed = timestamppb.New(v.LastPullServed)
	}
	return p
}
