// Command examplehomeserver shows how a homeserver uses Postbox's admin API:
// it hands events over for delivery to a peer (send), and it consumes the
// events received from peers as a durable consumer (consume), acknowledging
// what it has processed so that a restart of either side resumes after it.
//
//	examplehomeserver --admin 127.0.0.1:2290 send --to peer.example:2289 --users 1-10
//	examplehomeserver --admin 127.0.0.1:2290 consume --consumer homeserver [--max N]
//
// Delivery to a consumer is at least once: an event processed but not yet
// acknowledged when the consumer stopped is given to it again, so processing
// must be idempotent (this example's is: it prints). It acknowledges after
// every event here; a real homeserver would acknowledge every few hundred
// events or few hundred milliseconds, whichever comes first.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"

	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	"github.com/harmony-postbox/postbox/gen/postbox/admin/v1/adminv1connect"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "examplehomeserver:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("examplehomeserver", flag.ContinueOnError)
	addr := fs.String("admin", "127.0.0.1:2290", "the Postbox admin listener, host:port")
	token := fs.String("admin-token", "", "the admin listener's bearer token")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("want a command: send or consume")
	}
	client := newClient(*addr, *token)
	switch cmd, rest := fs.Arg(0), fs.Args()[1:]; cmd {
	case "send":
		return send(ctx, client, rest, stdout)
	case "consume":
		return consume(ctx, client, rest, stdout)
	default:
		return fmt.Errorf("unknown command %q: want send or consume", cmd)
	}
}

func newClient(addr, token string) adminv1connect.AdminServiceClient {
	var opts []connect.ClientOption
	if token != "" {
		opts = append(opts, connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
			return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
				req.Header().Set("Authorization", "Bearer "+token)
				return next(ctx, req)
			}
		})))
	}
	return adminv1connect.NewAdminServiceClient(http.DefaultClient, "http://"+addr, opts...)
}

// send announces that users first..last joined guild 1, one event each.
func send(ctx context.Context, client adminv1connect.AdminServiceClient, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("send", flag.ContinueOnError)
	to := fs.String("to", "", "the peer's server ID, host:port")
	users := fs.String("users", "1-10", "the user IDs, first-last")
	if err := fs.Parse(args); err != nil {
		return err
	}
	first, last, err := parseRange(*users)
	if err != nil {
		return err
	}
	for user := first; user <= last; user++ {
		ev := &syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: user, GuildId: 1}}}
		res, err := client.Send(ctx, connect.NewRequest(&adminv1.SendRequest{To: *to, Event: ev}))
		if err != nil {
			return fmt.Errorf("send user %d: %w", user, err)
		}
		fmt.Fprintf(stdout, "sent user %d as %d\n", user, res.Msg.GetSeq())
	}
	return nil
}

// consume processes received events after what the consumer acknowledged,
// acknowledging each once processed, until max events (0: until stopped).
func consume(ctx context.Context, client adminv1connect.AdminServiceClient, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("consume", flag.ContinueOnError)
	consumer := fs.String("consumer", "homeserver", "the durable consumer's name")
	limit := fs.Int("max", 0, "stop after this many events (0: run until stopped)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.Watch(ctx, connect.NewRequest(&adminv1.WatchRequest{Consumer: *consumer, Follow: true}))
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	defer stream.Close()
	processed := 0
	for stream.Receive() {
		ev := stream.Msg().GetEvent()
		if ev == nil {
			continue // caught up: what follows is live
		}
		if err := process(stdout, ev); err != nil {
			return err
		}
		if _, err := client.Ack(ctx, connect.NewRequest(&adminv1.AckRequest{Consumer: *consumer, Position: ev.GetPosition()})); err != nil {
			return fmt.Errorf("ack %d: %w", ev.GetPosition(), err)
		}
		if processed++; *limit > 0 && processed == *limit {
			return nil
		}
	}
	if err := stream.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("watch: %w", err)
	}
	return nil
}

// process is the homeserver's work for one event; here it prints it.
func process(w io.Writer, ev *adminv1.ReceivedEvent) error {
	body, err := protojson.Marshal(ev.GetEvent())
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%d\t%s\t%s\n", ev.GetPosition(), ev.GetFrom(), body)
	return err
}

func parseRange(s string) (first, last uint64, err error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		b = a
	}
	if first, err = strconv.ParseUint(a, 10, 64); err == nil {
		last, err = strconv.ParseUint(b, 10, 64)
	}
	if err != nil || last < first {
		return 0, 0, fmt.Errorf("--users %q: want first-last, e.g. 1-10", s)
	}
	return first, last, nil
}
