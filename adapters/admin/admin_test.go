package admin

import (
	"context"
	"errors"
	"testing"

	"connectrpc.com/connect"

	"github.com/harmony-postbox/postbox/domain"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

type fakeSender struct{ sent []domain.ServerID }

func (f *fakeSender) Send(_ context.Context, to domain.ServerID, _ *syncv1.Event) (uint64, error) {
	f.sent = append(f.sent, to)
	return uint64(len(f.sent) - 1), nil
}

func (f *fakeSender) SendKeyed(ctx context.Context, to domain.ServerID, event *syncv1.Event, _ string) (uint64, error) {
	return f.Send(ctx, to, event)
}

func (f *fakeSender) SendBatch(ctx context.Context, sends []domain.BatchSend[*syncv1.Event]) []domain.SendOutcome {
	out := make([]domain.SendOutcome, len(sends))
	for i, s := range sends {
		out[i].Seq, out[i].Err = f.Send(ctx, s.To, s.Event)
	}
	return out
}

func TestSendRefusesBadInputAndHandsOverTheRest(t *testing.T) {
	t.Parallel()
	self := domain.MustParseServerID("self.example:2289")
	sender := &fakeSender{}
	svc := NewService(domain.NewIdentity(self, domain.DefaultAudienceGrace), nil, "test", sender, nil, nil, nil, nil, nil)
	event := &syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: 1, GuildId: 2}}}
	for name, req := range map[string]*adminv1.SendRequest{
		"a malformed peer ID":  {To: "peer.example", Event: event},
		"this server's own ID": {To: self.String(), Event: event},
		"no event":             {To: "peer.example:2289"},
		"an event of no kind":  {To: "peer.example:2289", Event: &syncv1.Event{}},
	} {
		if _, err := svc.Send(t.Context(), connect.NewRequest(req)); !errors.Is(err, domain.ErrInvalidArgument) {
			t.Errorf("%s: %v, want an invalid argument", name, err)
		}
	}
	if len(sender.sent) != 0 {
		t.Fatalf("refused sends reached the engine: %v", sender.sent)
	}
	res, err := svc.Send(t.Context(), connect.NewRequest(&adminv1.SendRequest{To: "Peer.Example:2289", Event: event}))
	if err != nil || res.Msg.GetSeq() != 0 || sender.sent[0].String() != "peer.example:2289" {
		t.Fatalf("send: %v, %v, %v", res, err, sender.sent)
	}
}
