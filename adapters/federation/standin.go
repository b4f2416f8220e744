package federation

import (
	"context"
	"fmt"
	"sync"

	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// InMemoryStandIn is a TEMPORARY Postbox that keeps received events in
// memory and has no outbox: Pull always answers empty and renames are
// refused as unknown peers. It lets the protocol surface run end to end
// until the delivery engine, which keeps everything in the event store,
// replaces it. Nothing it holds survives a restart.
type InMemoryStandIn struct {
	mu       sync.Mutex
	received []ReceivedEvent
}

// ReceivedEvent is one pushed event the stand-in holds.
type ReceivedEvent struct {
	From  domain.ServerID
	Event *syncv1.Event
	Seq   *uint64
}

// NewInMemoryStandIn returns an empty stand-in.
func NewInMemoryStandIn() *InMemoryStandIn { return &InMemoryStandIn{} }

// ServePull answers empty: the stand-in has no outbox.
func (m *InMemoryStandIn) ServePull(context.Context, domain.Caller, *uint64) (PullBatch, error) {
	return PullBatch{}, nil
}

// AcceptPush keeps the event in memory.
func (m *InMemoryStandIn) AcceptPush(_ context.Context, caller domain.Caller, event *syncv1.Event, seq *uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.received = append(m.received, ReceivedEvent{From: caller.ServerID, Event: event, Seq: seq})
	return nil
}

// AcceptRename refuses: the stand-in knows no peers.
func (m *InMemoryStandIn) AcceptRename(_ context.Context, caller domain.Caller, _ domain.ServerID) error {
	return fmt.Errorf("%w: %s", domain.ErrUnknownPeer, caller.ServerID)
}

// Received returns a copy of what was pushed so far.
func (m *InMemoryStandIn) Received() []ReceivedEvent {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]ReceivedEvent(nil), m.received...)
}

// Pusher pushes one event to a peer.
type Pusher interface {
	Push(ctx context.Context, peer domain.ServerID, event *syncv1.Event, seq uint64) error
}

// DirectSenderStandIn is a TEMPORARY admin Sender: it pushes the event to
// the peer at once, a single attempt with no outbox, no retries and no
// queue, and reports the peer's answer. The delivery engine replaces it.
type DirectSenderStandIn struct {
	pusher Pusher
}

// NewDirectSenderStandIn returns the stand-in sender.
func NewDirectSenderStandIn(pusher Pusher) *DirectSenderStandIn {
	return &DirectSenderStandIn{pusher: pusher}
}

// Send pushes event to the peer once; the sequence number is always 0.
func (s *DirectSenderStandIn) Send(ctx context.Context, to domain.ServerID, event *syncv1.Event) (uint64, error) {
	if err := s.pusher.Push(ctx, to, event, 0); err != nil {
		return 0, fmt.Errorf("%w: push to %s: %w", domain.ErrUnavailable, to, err)
	}
	return 0, nil
}
