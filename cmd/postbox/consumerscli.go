package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"

	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
)

// runAck records that a durable consumer processed the received events
// through a position: `postbox ack --consumer NAME POSITION`.
func runAck(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := newFlagSet("ack", "POSITION", stdout)
	a := addAdminFlags(fs)
	consumer := fs.String("consumer", "", "the durable consumer's name (required)")
	if _, err := parseCommand(fs, args, getenv, 1); err != nil {
		return err
	}
	if *consumer == "" {
		return flagError("consumer", `""`, "name the consumer", examples["consumer"])
	}
	pos, err := strconv.ParseUint(fs.Arg(0), 10, 64)
	if err != nil {
		return exitError{code: 2, err: fmt.Errorf("ack: POSITION must be a position watch printed, such as 17, not %q", fs.Arg(0))}
	}
	res, err := a.client().Ack(ctx, connect.NewRequest(&adminv1.AckRequest{Consumer: *consumer, Position: pos}))
	if err != nil {
		return a.failed("ack", err)
	}
	if pos == 0 {
		fmt.Fprintf(stdout, "0 acknowledges nothing; %s is at %d\n", *consumer, res.Msg.GetPosition())
		return nil
	}
	if now := res.Msg.GetPosition(); now != pos {
		fmt.Fprintf(stdout, "%s had already acknowledged %d; still at %d\n", *consumer, now, now)
		return nil
	}
	fmt.Fprintf(stdout, "%s acknowledged through %d\n", *consumer, pos)
	return nil
}

// runConsumers lists the durable consumers, or deletes one:
// `postbox consumers [--json]`, `postbox consumers delete NAME`.
func runConsumers(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) > 0 && args[0] == "delete" {
		return runDeleteConsumer(ctx, args[1:], stdout, getenv)
	}
	fs := newFlagSet("consumers", "", stdout)
	a := addAdminFlags(fs)
	asJSON := fs.Bool("json", false, "print one protojson object per consumer and line")
	if _, err := parseFlags(fs, args, getenv); err != nil {
		return err
	}
	res, err := a.client().ListConsumers(ctx, connect.NewRequest(&adminv1.ListConsumersRequest{}))
	if err != nil {
		return a.failed("consumers", err)
	}
	if *asJSON {
		for _, c := range res.Msg.GetConsumers() {
			if err := printJSON(stdout, c); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CONSUMER\tPOSITION\tACKNOWLEDGED\tIDLE")
	for _, c := range res.Msg.GetConsumers() {
		idle := "-"
		if c.GetIdle() {
			idle = "idle"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", c.GetName(), c.GetPosition(), c.GetAcknowledgedAt().AsTime().Format(time.RFC3339), idle)
	}
	return tw.Flush()
}

func runDeleteConsumer(ctx context.Context, args []string, stdout io.Writer, getenv func(string) string) error {
	fs := newFlagSet("consumers delete", "NAME", stdout)
	a := addAdminFlags(fs)
	if _, err := parseCommand(fs, args, getenv, 1); err != nil {
		return err
	}
	if _, err := a.client().DeleteConsumer(ctx, connect.NewRequest(&adminv1.DeleteConsumerRequest{Consumer: fs.Arg(0)})); err != nil {
		return a.failed("consumers delete", err)
	}
	fmt.Fprintf(stdout, "deleted consumer %s; a watch under its name starts from the first event\n", fs.Arg(0))
	return nil
}
