// Package fakestreams is a test double: an in-process fake of the gRPC
// streams API that the esdb adapter talks to, served on 127.0.0.1 so that
// the adapter can be tested with the real client library where the real
// server cannot be installed.
//
// It is not the real server and makes no claim to behave like one beyond
// what the adapter uses; each behaviour below follows the server's
// documented or observed wire behaviour:
//
//   - Append with an expected revision (any, no stream, exact, stream
//     exists) and idempotent retries by event IDs: a retry of the same IDs at
//     the same place succeeds without writing again.
//   - Read of a stream forward and backward (stream-not-found message,
//     stream-deleted error with the "exception" trailers the client checks)
//     and of $all forward and backward.
//   - Subscriptions to a stream and to $all, with a stream-name or
//     event-type filter (prefixes or regular expression): a confirmation,
//     the history, a caught-up message, then live events. A filtered $all
//     subscription sends checkpoints every window × multiplier considered
//     events, as the server does. A subscription's start position is
//     exclusive the way the server makes it so: it skips the first event at
//     or after the position given.
//   - Delete (soft) and Tombstone (hard delete, which writes a
//     "$streamDeleted" event into $all, as the server does).
//   - ServerFeatures, reporting a recent server version.
//
// Every recorded event carries the system metadata the client requires
// ("type", "content-type" and "created", whose absence makes the client
// exit the process) and commit and prepare positions. Within one append,
// events share the commit position of the first and have their own prepare
// positions.
//
// Not served: gossip (so esdb+discover:// and multi-host connection strings
// cannot reach it), batch append, persistent subscriptions, projections,
// users, operations, authentication (credentials are ignored), TLS, link
// resolution, stream metadata beyond soft delete, scavenging, and the
// server's slow-consumer drops. Tests can cut subscriptions on purpose with
// DropSubscriptions and take the whole server away with Stop and Restart.
package fakestreams

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/serverfeatures"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// DefaultServerVersion is the version the test double reports unless told
// otherwise: one that sends caught-up messages on every subscription.
const DefaultServerVersion = "24.10.0"

// Options adjust the test double.
type Options struct {
	// ServerVersion is reported through ServerFeatures; DefaultServerVersion
	// when empty.
	ServerVersion string
	// NoCaughtUp leaves out the caught-up message on subscriptions, as
	// servers before 23.10 do, so that clients must work it out themselves.
	NoCaughtUp bool
	// UnexpectedReadReplies ends every stream read with a last-stream-
	// position message, which servers send only to clients that ask for it
	// and which the v4 client does not expect (it panics on it).
	UnexpectedReadReplies bool
}

// Server is a running test double.
type Server struct {
	opts Options
	log  *eventLog

	mu   sync.Mutex
	addr string
	gs   *grpc.Server
}

// Start starts a test double with default options and returns its
// connection string. It stops when the test ends.
func Start(t testing.TB) string {
	t.Helper()
	return StartServer(t, Options{}).ConnString()
}

// StartServer starts a test double on 127.0.0.1 on a free port. It stops
// when the test ends.
func StartServer(t testing.TB, opts Options) *Server {
	t.Helper()
	if opts.ServerVersion == "" {
		opts.ServerVersion = DefaultServerVersion
	}
	s := &Server{opts: opts, log: newEventLog()}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("fakestreams: listen: %v", err)
	}
	s.addr = lis.Addr().String()
	s.serve(lis)
	t.Cleanup(s.Stop)
	return s
}

// ConnString returns a connection string for the client: plain text, as the
// test double serves no TLS.
func (s *Server) ConnString() string {
	return fmt.Sprintf("esdb://%s?tls=false", s.addr)
}

// Addr returns the host:port the test double listens on.
func (s *Server) Addr() string { return s.addr }

func (s *Server) serve(lis net.Listener) {
	gs := grpc.NewServer(
		// The client pings every 10s even when idle; the default policy
		// would answer such pings with GOAWAY.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             time.Second,
			PermitWithoutStream: true,
		}),
	)
	streams.RegisterStreamsServer(gs, &streamsService{log: s.log, opts: s.opts})
	serverfeatures.RegisterServerFeaturesServer(gs, &featuresService{version: s.opts.ServerVersion})
	s.mu.Lock()
	s.gs = gs
	s.mu.Unlock()
	go func() { _ = gs.Serve(lis) }()
}

// Stop closes every connection and stops listening; the stored events are
// kept for Restart. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	gs := s.gs
	s.gs = nil
	s.mu.Unlock()
	if gs != nil {
		gs.Stop()
	}
}

// Restart stops the server if it runs and serves the same events again on
// the same address, as a server restart would.
func (s *Server) Restart() error {
	s.Stop()
	var lis net.Listener
	var err error
	// The port was just released; retry briefly in case the kernel still
	// holds it.
	for range 50 {
		lis, err = net.Listen("tcp", s.addr)
		if err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("fakestreams: listen again on %s: %w", s.addr, err)
	}
	s.serve(lis)
	return nil
}

// DropSubscriptions cuts every open subscription with an Unavailable status,
// as a lost connection would, and returns how many it cut. Reads, appends
// and later subscriptions are unaffected.
func (s *Server) DropSubscriptions() int {
	return s.log.dropSubscriptions()
}

// Subscriptions returns the number of open subscriptions.
func (s *Server) Subscriptions() int {
	return s.log.subscriptionCount()
}

// AllEvents returns how many events $all holds, system events included.
func (s *Server) AllEvents() int {
	return s.log.length()
}
