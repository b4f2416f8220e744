package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"

	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

func runSend(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := newFlagSet("send", "", stdout)
	a := addAdminFlags(fs)
	to := fs.String("to", "", "server ID of the peer the event is for")
	eventJSON := fs.String("event", "", `the event, as protojson of protocol.sync.v1.Event, e.g. {"userAddedToGuild":{"userId":"42","guildId":"7"}}`)
	eventFile := fs.String("event-file", "", "read the event's protojson from this file instead of --event (/dev/stdin: standard input), for events too long for a command line")
	key := fs.String("idempotency-key", "", "name this send (e.g. a UUID): repeated with the same key, peer and event within the server's --idempotency-window, it prints the first send's sequence number and stores nothing")
	if _, err := parseFlags(fs, args, getenv); err != nil {
		return err
	}
	if *to == "" {
		return flagError("to", `""`, "send needs the peer's server ID", examples["to"])
	}
	if (*eventJSON == "") == (*eventFile == "") {
		return exitError{code: 2, err: fmt.Errorf("send needs one of --event or --event-file, e.g. --event %s", examples["event"])}
	}
	body := []byte(*eventJSON)
	if *eventFile != "" {
		var err error
		if body, err = os.ReadFile(*eventFile); err != nil {
			return exitError{code: 2, err: fmt.Errorf("--event-file: %w", err)}
		}
	}
	var event syncv1.Event
	if err := protojson.Unmarshal(body, &event); err != nil {
		source := "--event"
		if *eventFile != "" {
			source = "--event-file " + *eventFile
		}
		return exitError{code: 2, err: fmt.Errorf("%s is not a protocol.sync.v1.Event in JSON: %w; e.g. --event %s", source, err, examples["event"])}
	}
	res, err := a.client().Send(ctx, connect.NewRequest(&adminv1.SendRequest{To: *to, Event: &event, IdempotencyKey: *key}))
	if err != nil {
		return a.failed("send", err)
	}
	fmt.Fprintln(stdout, res.Msg.GetSeq())
	return nil
}
