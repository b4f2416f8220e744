package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	"github.com/harmony-postbox/postbox/gen/postbox/admin/v1/adminv1connect"
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
		addr:  fs.String("admin", "127.0.0.1:2290", "the server's admin listener, `host:port`"),
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

// failed explains an admin API error (exit status 1): an unreachable
// server or a missing token is said so; the server's own words (the admin
// API sends them in full) follow the code.
func (a adminFlags) failed(what string, err error) error {
	code := connect.CodeOf(err)
	switch {
	case !connect.IsWireError(err) && code == connect.CodeUnavailable:
		return fmt.Errorf("%s: no Postbox admin API at %s (is the server running? --admin sets the address): %w", what, *a.addr, err)
	case code == connect.CodeUnauthenticated && *a.token == "":
		return fmt.Errorf("%s: the admin listener at %s wants a token: give it with --admin-token or POSTBOX_ADMIN_TOKEN", what, *a.addr)
	case code == connect.CodeUnauthenticated:
		return fmt.Errorf("%s: the admin listener at %s refused --admin-token: it is not the server's --admin-token", what, *a.addr)
	}
	if ce := (*connect.Error)(nil); errors.As(err, &ce) {
		// "invalid_argument: invalid argument: ..." says it twice.
		msg := strings.TrimPrefix(ce.Message(), strings.ReplaceAll(code.String(), "_", " ")+": ")
		return fmt.Errorf("%s failed (%s): %s", what, code, msg)
	}
	return fmt.Errorf("%s: %w", what, err)
}

type bearer string

func (b bearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("Authorization", "Bearer "+string(b))
		return next(ctx, req)
	}
}

func (b bearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set("Authorization", "Bearer "+string(b))
		return conn
	}
}

func (b bearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// jsonLine writes zero values too, so scripts always find every field.
var jsonLine = protojson.MarshalOptions{EmitUnpopulated: true}

// printJSON writes m as one line of protojson.
func printJSON(w io.Writer, m proto.Message) error {
	b, err := jsonLine.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func runPeers(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := newFlagSet("peers", "", stdout)
	a := addAdminFlags(fs)
	asJSON := fs.Bool("json", false, "print one protojson object per peer and line")
	if _, err := parseFlags(fs, args, getenv); err != nil {
		return err
	}
	res, err := a.client().ListPeers(ctx, connect.NewRequest(&adminv1.ListPeersRequest{}))
	if err != nil {
		return a.failed("peers", err)
	}
	if *asJSON {
		for _, p := range res.Msg.GetPeers() {
			if err := printJSON(stdout, p); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	// The last error is the last column, whole: its cause is at its end.
	fmt.Fprintln(tw, "SERVER ID\tPEER ID\tMODE\tHEAD\tDELIVERED\tSKIPPED\tPENDING\tOLDEST PENDING\tRECEIVED\tLAST PUSH\tOWNER\tLAST ERROR")
	now := time.Now()
	for _, p := range res.Msg.GetPeers() {
		lastPush := "-"
		if p.GetLastPush() != nil {
			lastPush = p.GetLastPush().AsTime().Local().Format(time.DateTime)
		}
		owner := "-" // a single process
		if p.GetOwner() != "" {
			owner = p.GetOwner()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\t%d\t%s\t%s\t%s\n", p.GetServerId(), p.GetPeerId(),
			strings.ToLower(strings.TrimPrefix(p.GetMode().String(), "MODE_")),
			p.GetHead(), p.GetDelivered()-p.GetSkipped(), p.GetSkipped(), p.GetPending(), pendingAge(p, now), p.GetEventsReceived(), lastPush, owner, oneLine(p.GetLastError()))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// Whole sentences, under the table: what an operator must act on.
	for _, p := range res.Msg.GetPeers() {
		if st := p.GetStuck(); st != nil {
			fmt.Fprintf(stdout, "%s: STUCK at event %d: %s\n", p.GetServerId(), st.GetSeq(), st.GetReason())
		}
		if n := p.GetEpochsStarted(); n > 0 {
			fmt.Fprintf(stdout, "%s: this server's store went back (restored or recreated) %d time(s): events not known delivered were sent again under a new epoch (now %d)\n",
				p.GetServerId(), n, p.GetEpoch())
		}
		if n := p.GetReceiverRewinds(); n > 0 {
			fmt.Fprintf(stdout, "%s: the peer lost events it had been given %d time(s) (its store went back): they were sent again\n", p.GetServerId(), n)
		}
		if from := p.GetOutboxRetainedFrom(); from > 0 {
			fmt.Fprintf(stdout, "%s: outbox kept from event %d (%d event(s) stored); retention removed the delivered ones before it\n",
				p.GetServerId(), from, p.GetOutboxRetained())
		}
		if from := p.GetInboxRetainedFrom(); from > 0 {
			fmt.Fprintf(stdout, "%s: retention removed the inbox records before record %d (%d events received)\n",
				p.GetServerId(), from, p.GetEventsReceived())
		}
		if s := p.GetLastSkip(); s != nil {
			fmt.Fprintf(stdout, "%s: %d event(s) skipped, never delivered; last skip: events %d to %d: %q\n",
				p.GetServerId(), p.GetSkipped(), s.GetFromSeq(), s.GetThroughSeq(), s.GetReason())
		}
	}
	return nil
}

// oneLine keeps a table row on one line.
func oneLine(s string) string {
	if s == "" {
		return "-"
	}
	return strings.ReplaceAll(s, "\n", " ")
}

// pendingAge is how long the peer's oldest pending event has waited, e.g.
// "3m12s ago"; "-" when nothing waits.
func pendingAge(p *adminv1.Peer, now time.Time) string {
	if p.GetOldestPending() == nil || p.GetPending() == 0 {
		return "-"
	}
	return max(0, now.Sub(p.GetOldestPending().AsTime())).Round(time.Second).String()
}

func runWatch(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := newFlagSet("watch", "", stdout)
	a := addAdminFlags(fs)
	after := fs.Uint64("after", 0, "print the events after this position (each event is printed with its position, so the last one printed resumes there; 0: from the first)")
	consumer := fs.String("consumer", "", "start after the position this durable consumer acknowledged (postbox ack); not with --after")
	follow := fs.Bool("follow", false, "keep printing events as they arrive")
	asJSON := fs.Bool("json", false, "print one protojson object per event and line")
	if _, err := parseFlags(fs, args, getenv); err != nil {
		return err
	}
	stream, err := a.client().Watch(ctx, connect.NewRequest(&adminv1.WatchRequest{After: *after, Follow: *follow, Consumer: *consumer}))
	if err != nil {
		return a.failed("watch", err)
	}
	defer stream.Close()
	for stream.Receive() {
		ev := stream.Msg().GetEvent()
		if ev == nil {
			continue // caught up; the server ends the stream unless following
		}
		if *asJSON {
			if err := printJSON(stdout, ev); err != nil {
				return err
			}
			continue
		}
		seq := "-"
		if ev.SenderSeq != nil {
			seq = strconv.FormatUint(ev.GetSenderSeq(), 10)
		}
		body, _ := jsonLine.Marshal(ev.GetEvent())
		fmt.Fprintf(stdout, "%d\t%s\t%s\tseq %s\t%s\n", ev.GetPosition(), ev.GetFrom(), ev.GetVia(), seq, body)
	}
	if err := stream.Err(); err != nil && !(errors.Is(err, context.Canceled) && ctx.Err() != nil) {
		return a.failed("watch", err)
	}
	return nil
}

func runPull(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := newFlagSet("pull", "ID", stdout)
	a := addAdminFlags(fs)
	if _, err := parseCommand(fs, args, getenv, 1); err != nil {
		return err
	}
	if _, err := a.client().PullNow(ctx, connect.NewRequest(&adminv1.PullNowRequest{ServerId: fs.Arg(0)})); err != nil {
		return a.failed("pull", err)
	}
	fmt.Fprintf(stdout, "pulled from %s\n", fs.Arg(0))
	return nil
}

func runResume(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := newFlagSet("resume", "ID", stdout)
	a := addAdminFlags(fs)
	if _, err := parseCommand(fs, args, getenv, 1); err != nil {
		return err
	}
	if _, err := a.client().ResumePush(ctx, connect.NewRequest(&adminv1.ResumePushRequest{ServerId: fs.Arg(0)})); err != nil {
		return a.failed("resume", err)
	}
	fmt.Fprintf(stdout, "pushing to %s again\n", fs.Arg(0))
	return nil
}

func runSkip(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := newFlagSet("skip", "ID", stdout)
	a := addAdminFlags(fs)
	through := fs.String("through", "", "skip the peer's undelivered events up to and including this sequence number (required)")
	reason := fs.String("reason", "", "why, recorded for the audit (required)")
	if _, err := parseCommand(fs, args, getenv, 1); err != nil {
		return err
	}
	seq, err := strconv.ParseUint(*through, 10, 64)
	if err != nil {
		return flagError("through", fmt.Sprintf("%q", *through), "want the sequence number of the last event to skip (postbox peers shows where delivery is)", examples["through"])
	}
	if *reason == "" {
		return flagError("reason", `""`, "say why, for the audit", examples["reason"])
	}
	res, err := a.client().Skip(ctx, connect.NewRequest(&adminv1.SkipRequest{ServerId: fs.Arg(0), ThroughSeq: seq, Reason: *reason}))
	if err != nil {
		return a.failed("skip", err)
	}
	s := res.Msg.GetSkipped()
	fmt.Fprintf(stdout, "skipped events %d to %d of %s: recorded, never delivered; later events go on\n", s.GetFromSeq(), s.GetThroughSeq(), fs.Arg(0))
	return nil
}

func runRename(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := newFlagSet("rename", "NEW_ID", stdout)
	a := addAdminFlags(fs)
	if _, err := parseCommand(fs, args, getenv, 1); err != nil {
		return err
	}
	if _, err := a.client().Rename(ctx, connect.NewRequest(&adminv1.RenameRequest{NewServerId: fs.Arg(0)})); err != nil {
		return a.failed("rename", err)
	}
	fmt.Fprintf(stdout, "renamed to %s; peers are being told (see postbox peers)\n", fs.Arg(0))
	return nil
}
