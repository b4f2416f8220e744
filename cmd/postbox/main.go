// Command postbox is the Postbox federation server and its operator tools.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	privateFiles()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	if err != nil {
		var exit exitError
		if !errors.As(err, &exit) || exit.err != nil {
			fmt.Fprintln(os.Stderr, "postbox:", err)
		}
		os.Exit(exitCode(err))
	}
}

// exitError carries a specific exit status.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	var exit exitError
	if errors.As(err, &exit) {
		return exit.code
	}
	return 1
}

const usage = `postbox: the Harmony federation server

Usage:
  postbox serve [flags]     run the server (postbox serve -h lists the flags)
  postbox keygen [flags]    create the server's Ed25519 key file if missing
  postbox send --to ID --event JSON
                            hand an event to a running server for a peer
  postbox audit [--data-dir DIR | --store esdb://...] [--json]
                            check every stream's invariants (exit 1 on violations)
  postbox peers [--json]    list peers and their delivery state
  postbox watch [--after N | --consumer NAME] [--follow] [--json]
                            print received events in order from position N,
                            or after what consumer NAME acknowledged
  postbox ack --consumer NAME POSITION
                            record that consumer NAME processed every event
                            through POSITION (durably, in the store)
  postbox consumers [--json] | postbox consumers delete NAME
                            list durable consumers (idle ones marked), or
                            delete one
  postbox pull ID           pull from a peer now
  postbox resume ID         push to a peer in queue mode again
  postbox rename NEW_ID     rename this server and tell every peer
  postbox guilds USER [--json]
                            a local user's guilds on peers
  postbox invites USER [--json]
                            a local user's pending invites from peers
  postbox skip ID --through SEQ --reason TEXT
                            give up on a peer's undelivered events up to SEQ
                            (recorded, audited, never counted as delivered)
  postbox backup [--data-dir DIR] BACKUP_DIR
                            copy the embedded store, consistent, while it runs
                            or not, and the key, into a new data directory
  postbox version           print the version

Commands that talk to a running server take --admin host:port (POSTBOX_ADMIN,
default 127.0.0.1:2290) and --admin-token (POSTBOX_ADMIN_TOKEN).

Every flag falls back to an environment variable: --server-id reads
POSTBOX_SERVER_ID, --data-dir reads POSTBOX_DATA_DIR, and so on.
postbox COMMAND -h prints a command's flags and arguments.

Exit status: 0 done; 1 failed (the server refused or could not be reached,
or serve stopped on an error); 2 the command line or configuration is wrong
(the message names the flag, the value and an example); audit: 0 clean,
1 violations found, 2 the audit could not run; serve: 74 the store's disk
failed (the supervisor must restart it).
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitError{code: 2}
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return runServe(ctx, rest, stdout, stderr, getenv)
	case "keygen":
		return runKeygen(rest, stdout, stderr, getenv)
	case "send":
		return runSend(ctx, rest, stdout, stderr, getenv)
	case "audit":
		return runAudit(ctx, rest, stdout, stderr, getenv)
	case "peers":
		return runPeers(ctx, rest, stdout, stderr, getenv)
	case "watch":
		return runWatch(ctx, rest, stdout, stderr, getenv)
	case "ack":
		return runAck(ctx, rest, stdout, stderr, getenv)
	case "consumers":
		return runConsumers(ctx, rest, stdout, stderr, getenv)
	case "pull":
		return runPull(ctx, rest, stdout, stderr, getenv)
	case "resume":
		return runResume(ctx, rest, stdout, stderr, getenv)
	case "rename":
		return runRename(ctx, rest, stdout, stderr, getenv)
	case "skip":
		return runSkip(ctx, rest, stdout, stderr, getenv)
	case "guilds":
		return runGuilds(ctx, rest, stdout, stderr, getenv)
	case "invites":
		return runInvites(ctx, rest, stdout, stderr, getenv)
	case "backup":
		return runBackup(ctx, rest, stdout, stderr, getenv)
	case "version", "--version":
		fmt.Fprintln(stdout, "postbox", buildVersion())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return exitError{code: 2, err: fmt.Errorf("unknown command %q", cmd)}
}
