package admin

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"connectrpc.com/connect"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
)

// ReceivedLog is where received events are read from: the inbox streams.
type ReceivedLog interface {
	Subscribe(ctx context.Context, filter eventstore.Filter, from eventstore.SubscribeFrom) (eventstore.Subscription, error)
}

// PeerNames tells the server ID behind a peer's stable ID.
type PeerNames interface {
	ServerID(peer streams.PeerID) (domain.ServerID, bool)
}

// Watch streams the events received from peers, in the order they were
// applied, starting after a position; a caught_up item marks the end of
// what was stored when the call began. Without follow, the stream ends there.
func (s *Service) Watch(ctx context.Context, req *connect.Request[adminv1.WatchRequest], stream *connect.ServerStream[adminv1.WatchResponse]) error {
	after, err := s.watchStart(ctx, req.Msg)
	if err != nil {
		return err
	}
	from := eventstore.FromStart()
	if after > 0 {
		from = eventstore.After(eventstore.Position{Commit: after, Prepare: after})
	}
	sub, err := s.received.Subscribe(ctx, eventstore.Filter{StreamPrefix: streams.InboxPrefix}, from)
	if errors.Is(err, eventstore.ErrNotAPosition) {
		// A position from another database, or one made up: refused, rather
		// than quietly watching from somewhere else.
		return fmt.Errorf("%w: after %d is not the position of an event in this server's store: use a position that watch printed here",
			domain.ErrInvalidArgument, after)
	}
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	defer sub.Close()
	for {
		item, err := sub.Recv(ctx)
		if err != nil {
			if errors.Is(err, context.Canceled) && ctx.Err() != nil {
				return nil // the caller went away
			}
			return fmt.Errorf("watch: %w", err)
		}
		if item.CaughtUp {
			if err := stream.Send(&adminv1.WatchResponse{Item: &adminv1.WatchResponse_CaughtUp{CaughtUp: true}}); err != nil {
				return err
			}
			if !req.Msg.GetFollow() {
				return nil
			}
			continue
		}
		events, err := s.receivedEvents(item.Event, after)
		if err != nil {
			return err
		}
		for _, ev := range events {
			if err := stream.Send(&adminv1.WatchResponse{Item: &adminv1.WatchResponse_Event{Event: ev}}); err != nil {
				return err
			}
		}
		after = item.Event.Position.Commit
	}
}

// receivedEvents are the events of the inbox record r, which follows the
// record at position prev (0: none) in what the caller watches. The last
// one carries r's position; the others of a run carry prev, so that resuming
// after the position of any event processed gets each one not yet
// processed: a run is stored whole and comes again whole.
func (s *Service) receivedEvents(r *eventstore.RecordedEvent, prev uint64) ([]*adminv1.ReceivedEvent, error) {
	recs, err := streams.DecodeReceivedRecord(*r)
	if err != nil {
		return nil, err
	}
	peer := streams.PeerID(strings.TrimPrefix(r.Stream, streams.InboxPrefix))
	from := string(peer)
	if id, ok := s.names.ServerID(peer); ok {
		from = id.String()
	}
	out := make([]*adminv1.ReceivedEvent, len(recs))
	for i, rec := range recs {
		via := "push"
		if rec.Via == eventsv1.EventReceived_VIA_PULL {
			via = "pull"
		}
		position := prev
		if i == len(recs)-1 {
			position = r.Position.Commit
		}
		out[i] = &adminv1.ReceivedEvent{
			Position:  position,
			From:      from,
			Event:     rec.Event,
			Via:       via,
			SenderSeq: rec.SenderSeq,
		}
	}
	return out, nil
}
