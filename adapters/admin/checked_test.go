package admin

import (
	"errors"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/harmony-postbox/postbox/adapters/netguard"
	"github.com/harmony-postbox/postbox/domain"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

func TestSendToAnInternalAddressIsRefusedAtOnce(t *testing.T) {
	t.Parallel()
	self := domain.MustParseServerID("self.example:2289")
	event := &syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: 1, GuildId: 2}}}
	loop, _ := netguard.ParseNetworks([]string{"127.0.0.0/8"})
	for _, tc := range []struct {
		name  string
		guard *netguard.Guard
		to    string
		ok    bool
	}{
		{"loopback, no network allowed", netguard.New(nil, domain.AccessList{}), "127.0.0.1:2289", false},
		{"a private IPv6 literal", netguard.New(nil, domain.AccessList{}), "[fd12::1]:2289", false},
		{"localhost", netguard.New(nil, domain.AccessList{}), "localhost:2289", false},
		{"loopback, its network allowed", netguard.New(loop, domain.AccessList{}), "127.0.0.1:2289", true},
		{"a name", netguard.New(nil, domain.AccessList{}), "peer.example:2289", true},
	} {
		sender := &fakeSender{}
		svc := NewService(domain.NewIdentity(self, domain.DefaultAudienceGrace), nil, "test", CheckedSender(sender, tc.guard), nil, nil, nil, nil, nil)
		_, err := svc.Send(t.Context(), connect.NewRequest(&adminv1.SendRequest{To: tc.to, Event: event}))
		if tc.ok {
			if err != nil || len(sender.sent) != 1 {
				t.Errorf("%s: %v, sent %v; want it handed over", tc.name, err, sender.sent)
			}
			continue
		}
		if connect.CodeOf(err) != connect.CodeFailedPrecondition || !errors.Is(err, netguard.ErrAddressRefused) || !strings.Contains(err.Error(), "--allow-peer-networks") {
			t.Errorf("%s: %v, want a failed precondition naming --allow-peer-networks", tc.name, err)
		}
		if len(sender.sent) != 0 {
			t.Errorf("%s: the refused event reached the engine", tc.name)
		}
	}
}
