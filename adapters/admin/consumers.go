package admin

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
)

// ConsumerLedger keeps the durable consumers' positions in the store.
type ConsumerLedger interface {
	Get(ctx context.Context, name string) (domain.Consumer, bool, error)
	List(ctx context.Context) ([]domain.Consumer, error)
	Ack(ctx context.Context, name string, position uint64) (uint64, error)
	Delete(ctx context.Context, name string) error
}

// consumerSettings is what the durable consumer calls need; unset, they
// answer unimplemented.
type consumerSettings struct {
	ledger    ConsumerLedger
	idleAfter time.Duration
	clock     domain.Clock
}

// WithConsumers serves durable consumers from ledger, reporting one idle
// when it acknowledged nothing for longer than idleAfter.
func (s *Service) WithConsumers(ledger ConsumerLedger, idleAfter time.Duration, clock domain.Clock) *Service {
	s.consumers = consumerSettings{ledger: ledger, idleAfter: idleAfter, clock: clock}
	return s
}

func (s *Service) consumerLedger() (ConsumerLedger, error) {
	if s.consumers.ledger == nil {
		return nil, fmt.Errorf("%w: durable consumers are not set up on this server", domain.ErrNotImplemented)
	}
	return s.consumers.ledger, nil
}

// Ack records a consumer's position, once it is the position of an event in
// this store: a made-up or another store's position would skip events.
func (s *Service) Ack(ctx context.Context, req *connect.Request[adminv1.AckRequest]) (*connect.Response[adminv1.AckResponse], error) {
	ledger, err := s.consumerLedger()
	if err != nil {
		return nil, err
	}
	if err := domain.CheckConsumerName(req.Msg.GetConsumer()); err != nil {
		return nil, err
	}
	if err := s.checkPosition(ctx, req.Msg.GetPosition()); err != nil {
		return nil, err
	}
	now, err := ledger.Ack(ctx, req.Msg.GetConsumer(), req.Msg.GetPosition())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.AckResponse{Position: now}), nil
}

// checkPosition refuses a position that is not one of this store's events,
// or 0 (which acknowledges nothing).
func (s *Service) checkPosition(ctx context.Context, position uint64) error {
	if position == 0 {
		return nil
	}
	sub, err := s.received.Subscribe(ctx, eventstore.Filter{StreamPrefix: streams.InboxPrefix},
		eventstore.After(eventstore.Position{Commit: position, Prepare: position}))
	if errors.Is(err, eventstore.ErrNotAPosition) {
		return fmt.Errorf("%w: position %d is not the position of an event in this server's store: acknowledge a position that watch printed here",
			domain.ErrInvalidArgument, position)
	}
	if err != nil {
		return fmt.Errorf("ack: %w", err)
	}
	return sub.Close()
}

// ListConsumers lists the durable consumers.
func (s *Service) ListConsumers(ctx context.Context, _ *connect.Request[adminv1.ListConsumersRequest]) (*connect.Response[adminv1.ListConsumersResponse], error) {
	ledger, err := s.consumerLedger()
	if err != nil {
		return nil, err
	}
	all, err := ledger.List(ctx)
	if err != nil {
		return nil, err
	}
	now := s.consumers.clock.Now()
	out := make([]*adminv1.Consumer, 0, len(all))
	for _, c := range all {
		out = append(out, &adminv1.Consumer{
			Name:           c.Name,
			Position:       c.Position,
			AcknowledgedAt: timestamppb.New(c.AcknowledgedAt),
			Idle:           c.IdleSince(now, s.consumers.idleAfter),
		})
	}
	return connect.NewResponse(&adminv1.ListConsumersResponse{Consumers: out}), nil
}

// DeleteConsumer forgets a durable consumer.
func (s *Service) DeleteConsumer(ctx context.Context, req *connect.Request[adminv1.DeleteConsumerRequest]) (*connect.Response[adminv1.DeleteConsumerResponse], error) {
	ledger, err := s.consumerLedger()
	if err != nil {
		return nil, err
	}
	if err := ledger.Delete(ctx, req.Msg.GetConsumer()); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.DeleteConsumerResponse{}), nil
}

// watchStart is where a Watch begins: after `after`, or after the
// consumer's acknowledged position.
func (s *Service) watchStart(ctx context.Context, msg *adminv1.WatchRequest) (uint64, error) {
	if msg.GetConsumer() == "" {
		return msg.GetAfter(), nil
	}
	if msg.GetAfter() != 0 {
		return 0, fmt.Errorf("%w: after and consumer together: a consumer resumes after the position it acknowledged; give one of them", domain.ErrInvalidArgument)
	}
	ledger, err := s.consumerLedger()
	if err != nil {
		return 0, err
	}
	c, _, err := ledger.Get(ctx, msg.GetConsumer())
	if err != nil {
		return 0, err
	}
	return c.Position, nil
}
