package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"

	"connectrpc.com/connect"

	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
)

// parseUser reads the USER argument of guilds and invites: a user ID of
// this server.
func parseUser(cmd, raw string) (uint64, error) {
	id, err := strconv.ParseUint(raw, 10, 64)
	if err != nil {
		return 0, exitError{code: 2, err: fmt.Errorf("%s: USER must be a user ID, a whole number such as 42, not %q", cmd, raw)}
	}
	return id, nil
}

// effectsCommand parses `postbox guilds|invites USER [--json]`, the user
// before or after the flags.
func effectsCommand(name string, args []string, stdout io.Writer, getenv func(string) string) (adminFlags, uint64, bool, error) {
	fs := newFlagSet(name, "USER", stdout)
	a := addAdminFlags(fs)
	asJSON := fs.Bool("json", false, "print one protojson object per line")
	if _, err := parseCommand(fs, args, getenv, 1); err != nil {
		return adminFlags{}, 0, false, err
	}
	user, err := parseUser(name, fs.Arg(0))
	return a, user, *asJSON, err
}

func runGuilds(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	a, user, asJSON, err := effectsCommand("guilds", args, stdout, getenv)
	if err != nil {
		return err
	}
	res, err := a.client().ListGuilds(ctx, connect.NewRequest(&adminv1.ListGuildsRequest{UserId: user}))
	if err != nil {
		return a.failed("guilds", err)
	}
	if asJSON {
		for _, g := range res.Msg.GetGuilds() {
			if err := printJSON(stdout, g); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVER ID\tGUILD ID")
	for _, g := range res.Msg.GetGuilds() {
		fmt.Fprintf(tw, "%s\t%d\n", g.GetServerId(), g.GetGuildId())
	}
	return tw.Flush()
}

func runInvites(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	a, user, asJSON, err := effectsCommand("invites", args, stdout, getenv)
	if err != nil {
		return err
	}
	res, err := a.client().ListInvites(ctx, connect.NewRequest(&adminv1.ListInvitesRequest{UserId: user}))
	if err != nil {
		return a.failed("invites", err)
	}
	if asJSON {
		for _, inv := range res.Msg.GetInvites() {
			if err := printJSON(stdout, inv); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVER ID\tINVITE ID\tINVITER ID")
	for _, inv := range res.Msg.GetInvites() {
		fmt.Fprintf(tw, "%s\t%s\t%d\n", inv.GetServerId(), inv.GetInviteId(), inv.GetInviterId())
	}
	return tw.Flush()
}
