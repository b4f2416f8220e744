// Package federationtest has a federation.Postbox for tests of the
// federation handlers and transports: it records what reaches it and keeps
// nothing else.
package federationtest

import (
	"context"
	"fmt"
	"sync"

	"github.com/harmony-postbox/postbox/adapters/federation"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// Recorder keeps pushed events in memory; Pull answers empty and renames
// are refused as unknown peers.
type Recorder struct {
	mu       sync.Mutex
	received []Received
}

// Received is one pushed event.
type Received struct {
	From  domain.ServerID
	Event *syncv1.Event
	Seq   *uint64
}

var _ federation.Postbox = (*Recorder)(nil)

// NewRecorder returns an empty recorder.
func NewRecorder() *Recorder { return &Recorder{} }

// ServeAccountedPull answers empty.
func (m *Recorder) ServeAccountedPull(context.Context, domain.Caller, *uint64, *domain.PullAccount) (domain.PullBatch[*syncv1.Event], error) {
	return domain.PullBatch[*syncv1.Event]{}, nil
}

// AcceptClaimedPush records the events, each with its sequence number; it
// checks no continuity claim, as an older Postbox receiver would not.
func (m *Recorder) AcceptClaimedPush(_ context.Context, caller domain.Caller, events []*syncv1.Event, seq *uint64, _ *domain.PushClaim) (domain.PushAnswer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.received = append(m.received, Each(caller.ServerID, events, seq)...)
	return domain.PushAnswer{}, nil
}

// Each is one Received for each event of a push whose first event has
// sequence number first (nil: none).
func Each(from domain.ServerID, events []*syncv1.Event, first *uint64) []Received {
	out := make([]Received, 0, len(events))
	for i, ev := range events {
		var seq *uint64
		if first != nil {
			s := *first + uint64(i)
			seq = &s
		}
		out = append(out, Received{From: from, Event: ev, Seq: seq})
	}
	return out
}

// AcceptRename refuses: the recorder knows no peers.
func (m *Recorder) AcceptRename(_ context.Context, caller domain.Caller, _ domain.ServerID) error {
	return fmt.Errorf("%w: %s", domain.ErrUnknownPeer, caller.ServerID)
}

// Received returns a copy of what was pushed so far.
func (m *Recorder) Received() []Received {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Received(nil), m.received...)
}
