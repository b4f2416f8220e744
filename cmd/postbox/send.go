package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"

	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	"github.com/harmony-postbox/postbox/gen/postbox/admin/v1/adminv1connect"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// adminFlags are the flags every admin API client command shares.
type adminFlags struct {
	addr  *string
	token *string
}

func addAdminFlags(fs interface {
	String(name, value, usage string) *string
}) adminFlags {
	return adminFlags{
		addr:  fs.String("admin", "127.0.0.1:2290", "the server's admin listener, host:port"),
		token: fs.String("admin-token", "", "bearer token of the admin listener"),
	}
}

func (a adminFlags) client() adminv1connect.AdminServiceClient {
	base := *a.addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	var opts []connect.ClientOption
	if *a.token != "" {
		opts = append(opts, connect.WithInterceptors(bearer(*a.token)))
	}
	return adminv1connect.NewAdminServiceClient(http.DefaultClient, base, opts...)
}

func bearer(token string) connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			req.Header().Set("Authorization", "Bearer "+token)
			return next(ctx, req)
		}
	}
}

func runSend(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := newFlagSet("send", stderr)
	a := addAdminFlags(fs)
	to := fs.String("to", "", "server ID of the peer the event is for")
	eventJSON := fs.String("event", "", `the event, as protojson of protocol.sync.v1.Event, e.g. {"userAddedToGuild":{"userId":"42","guildId":"7"}}`)
	if _, err := parseFlags(fs, args, getenv); err != nil {
		return err
	}
	if *to == "" || *eventJSON == "" {
		return exitError{code: 2, err: fmt.Errorf("send needs --to and --event")}
	}
	var event syncv1.Event
	if err := protojson.Unmarshal([]byte(*eventJSON), &event); err != nil {
		return exitError{code: 2, err: fmt.Errorf("--event is not a protocol.sync.v1.Event in JSON: %w", err)}
	}
	res, err := a.client().Send(ctx, connect.NewRequest(&adminv1.SendRequest{To: *to, Event: &event}))
	if err != nil {
		return fmt.Errorf("send via admin API at %s: %w", *a.addr, err)
	}
	fmt.Fprintln(stdout, res.Msg.GetSeq())
	return nil
}
