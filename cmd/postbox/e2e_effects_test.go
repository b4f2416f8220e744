package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"

	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// TestGuildsAndInvitesOfALocalUser: what A's events did to B's user 42 is
// read back through postbox guilds and postbox invites on B.
func TestGuildsAndInvitesOfALocalUser(t *testing.T) {
	t.Parallel()
	a, b := newE2ENode(t, "A", ""), newE2ENode(t, "B", "")
	a.start()
	b.start()
	events := []*syncv1.Event{
		{Kind: &syncv1.Event_UserAddedToGuild_{UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: 42, GuildId: 7}}},
		{Kind: &syncv1.Event_UserAddedToGuild_{UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: 42, GuildId: 8}}},
		{Kind: &syncv1.Event_UserRemovedFromGuild_{UserRemovedFromGuild: &syncv1.Event_UserRemovedFromGuild{UserId: 42, GuildId: 7}}},
		{Kind: &syncv1.Event_UserAddedToGuild_{UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: 43, GuildId: 9}}},
		{Kind: &syncv1.Event_UserInvited_{UserInvited: &syncv1.Event_UserInvited{UserId: 42, InviterId: 5, InviteId: "inv-1"}}},
	}
	for _, ev := range events {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		_, err := a.admins.Send(ctx, connect.NewRequest(&adminv1.SendRequest{To: b.id, Event: ev}))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	b.waitInboxLen(a, len(events), 20*time.Second)

	out, errOut, code := runCLI(t, "guilds", "42", "--json", "--admin", b.admin)
	if code != 0 {
		t.Fatalf("postbox guilds 42 --json: exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var g adminv1.GuildEntry
	if len(lines) != 1 || protojson.Unmarshal([]byte(lines[0]), &g) != nil || g.GetGuildId() != 8 || g.GetServerId() != a.id {
		t.Errorf("postbox guilds 42 --json printed %q; want guild 8 of %s only (7 was removed, 9 is user 43's)", out, a.id)
	}
	if out, _, code := runCLI(t, "guilds", "--admin", b.admin, "42"); code != 0 || !strings.Contains(out, a.id) || !strings.Contains(out, "8") {
		t.Errorf("postbox guilds: exit %d, printed\n%s", code, out)
	}

	out, errOut, code = runCLI(t, "invites", "42", "--json", "--admin", b.admin)
	var inv adminv1.PendingInvite
	if code != 0 || protojson.Unmarshal([]byte(strings.TrimSpace(out)), &inv) != nil ||
		inv.GetInviteId() != "inv-1" || inv.GetInviterId() != 5 || inv.GetServerId() != a.id {
		t.Errorf("postbox invites 42 --json: exit %d, printed %q %s; want invite inv-1 from user 5 of %s", code, out, errOut, a.id)
	}
	if out, _, code := runCLI(t, "invites", "43", "--admin", b.admin); code != 0 || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("postbox invites 43: exit %d, printed %q; want the header only", code, out)
	}
	if _, errOut, code := runCLI(t, "guilds", "alice", "--admin", b.admin); code != 2 || !strings.Contains(errOut, `not "alice"`) {
		t.Errorf("postbox guilds alice: exit %d, %q; want 2 naming the value", code, errOut)
	}
}
