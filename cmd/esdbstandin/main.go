// Command esdbstandin serves the stand-in for the event store's gRPC
// streams API (package fakestreams) as a process, for demos and tests from
// outside: a test double, not a real server, modelling one server version.
//
//	go run ./cmd/esdbstandin --listen 127.0.0.1:2113 --profile 24.10
//	postbox serve --store 'esdb://127.0.0.1:2113?tls=false'
//
// It serves plaintext until SIGINT or SIGTERM; its state is in memory and
// lost when it stops.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb/fakestreams"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "esdbstandin:", err)
		}
		os.Exit(2)
	}
}

// run serves until ctx ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("esdbstandin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:2113", "address to listen on (host:port; port 0 picks a free one)")
	profile := fs.String("profile", fakestreams.DefaultProfile, "server version to model: "+strings.Join(fakestreams.Profiles(), ", "))
	maxAppend := fs.Int("max-append-size", fakestreams.DefaultMaxAppendSize, "the modelled server's MaxAppendSize setting, in bytes")
	maxEvent := fs.Int("max-append-event-size", 0, "the modelled server's MaxAppendEventSize setting, in bytes (24.10.4 and later; 0: no limit, the server's default)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if *maxAppend <= 0 || *maxEvent < 0 {
		return errors.New("--max-append-size must be positive and --max-append-event-size not negative")
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv, err := fakestreams.New(lis, fakestreams.Options{Profile: *profile, MaxAppendSize: *maxAppend, MaxAppendEventSize: *maxEvent})
	if err != nil {
		_ = lis.Close()
		return err
	}
	defer srv.Stop()
	fmt.Fprintf(stdout, "esdbstandin: TEST DOUBLE of the event store's gRPC streams API, not a real server.\n")
	fmt.Fprintf(stdout, "esdbstandin: modelling server version %s (profile %s), MaxAppendSize %d bytes; state in memory, lost on exit\n",
		srv.Profile().Version, srv.Profile().Name, *maxAppend)
	fmt.Fprintf(stdout, "esdbstandin: listening on %s (plaintext); connect with %s\n", srv.Addr(), srv.ConnString())
	<-ctx.Done()
	fmt.Fprintln(stdout, "esdbstandin: stopping")
	return nil
}
