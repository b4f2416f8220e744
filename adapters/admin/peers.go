package admin

import (
	"context"
	"fmt"
	"time"

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

// PendingAges tells when a peer's oldest undelivered event was handed
// over: the one at sequence number seq of the outbox of peer (its stable
// peer ID).
type PendingAges interface {
	HandedOverAt(ctx context.Context, peerID string, seq uint64) (time.Time, error)
}

// WithPendingAges makes the peers' listings say since when their oldest
// pending event waits.
func (s *Service) WithPendingAges(ages PendingAges) *Service {
	s.ages = ages
	return s
}

// oldestPending sets p.OldestPending; a failed read leaves it unset (the
// rest of the listing still helps).
func (s *Service) oldestPending(ctx context.Context, p *adminv1.Peer) {
	if s.ages == nil || p.GetPending() == 0 {
		return
	}
	if at, err := s.ages.HandedOverAt(ctx, p.GetPeerId(), p.GetDelivered()); err == nil && !at.IsZero() {
		p.OldestPending = timestamppb.New(at)
	}
}

// Retention tells where retention truncated a peer's outbox and inbox: the
// first event of each still stored (0 when all are).
type Retention interface {
	OutboxRetainedFrom(ctx context.Context, peerID string) (uint64, error)
	InboxRetainedFrom(ctx context.Context, peerID string) (uint64, error)
}

// WithRetention makes the peers' listings say what their outboxes keep.
func (s *Service) WithRetention(r Retention) *Service {
	s.retention = r
	return s
}

// retained sets what p's outbox keeps; a failed read leaves it as if
// every event were kept (the rest of the listing still helps).
func (s *Service) retained(ctx context.Context, p *adminv1.Peer) {
	p.OutboxRetained = p.GetHead()
	if s.retention == nil {
		return
	}
	if from, err := s.retention.OutboxRetainedFrom(ctx, p.GetPeerId()); err == nil {
		p.OutboxRetainedFrom = min(from, p.GetHead())
		p.OutboxRetained = p.GetHead() - p.OutboxRetainedFrom
	}
	if from, err := s.retention.InboxRetainedFrom(ctx, p.GetPeerId()); err == nil {
		p.InboxRetainedFrom = from
	}
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
		p := peerMessage(v, stuck)
		s.oldestPending(ctx, p)
		s.retained(ctx, p)
		res.Peers = append(res.Peers, p)
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
	p := peerMessage(v, s.operator.Stuck())
	s.oldestPending(ctx, p)
	s.retained(ctx, p)
	return connect.NewResponse(&adminv1.GetPeerResponse{Peer: p}), nil
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
		Owner:            v.Owner,
		OwnerTerm:        v.OwnerTerm,
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
