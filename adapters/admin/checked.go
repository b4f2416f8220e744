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
	if err := s.check.CheckPeer(to); err != nil {
		// A Connect error keeps its message on the way to the operator,
		// who needs the flag it names.
		return 0, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("to: %w", err))
	}
	return s.next.Send(ctx, to, event)
}
