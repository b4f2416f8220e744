package admin

import (
	"context"
	"fmt"

	"connectrpc.com/connect"

	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// PeerCheck refuses a peer that no outbound call could ever reach, such as
// one whose ID is a loopback address this server may not connect to.
type PeerCheck interface {
	CheckPeer(id domain.ServerID) error
}

// CheckedSender refuses, at once and before anything is stored, an event
// for a peer check refuses: it would otherwise wait in an outbox forever,
// every push refused by the address guard.
func CheckedSender(next Sender, check PeerCheck) Sender {
	return checkedSender{next: next, check: check}
}

type checkedSender struct {
	next  Sender
	check PeerCheck
}

func (s checkedSender) Send(ctx context.Context, to domain.ServerID, event *syncv1.Event) (uint64, error) {
	if err := s.checkPeer(to); err != nil {
		return 0, err
	}
	return s.next.Send(ctx, to, event)
}

func (s checkedSender) SendKeyed(ctx context.Context, to domain.ServerID, event *syncv1.Event, key string) (uint64, error) {
	if err := s.checkPeer(to); err != nil {
		return 0, err
	}
	return s.next.SendKeyed(ctx, to, event, key)
}

// SendBatch refuses the sends to peers check refuses and hands on the rest.
func (s checkedSender) SendBatch(ctx context.Context, sends []domain.BatchSend[*syncv1.Event]) []domain.SendOutcome {
	out := make([]domain.SendOutcome, len(sends))
	var pass []domain.BatchSend[*syncv1.Event]
	var at []int
	for i, send := range sends {
		if err := s.checkPeer(send.To); err != nil {
			out[i].Err = err
			continue
		}
		pass = append(pass, send)
		at = append(at, i)
	}
	if len(pass) > 0 {
		for n, o := range s.next.SendBatch(ctx, pass) {
			out[at[n]] = o
		}
	}
	return out
}

func (s checkedSender) checkPeer(to domain.ServerID) error {
	if err := s.check.CheckPeer(to); err != nil {
		// A Connect error keeps its message on the way to the operator,
		// who needs the flag it names.
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("to: %w", err))
	}
	return nil
}
