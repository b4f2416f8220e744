// Package fakestreams is a test double: an in-process stand-in for the gRPC
// streams API that the esdb adapter talks to, served on 127.0.0.1 so that
// the adapter can be tested with the real client library where no real
// server can be installed. It is not the real server.
//
// It models server versions as profiles (see Profile and profiles.go),
// each behaviour following the server's source (kurrent-io/KurrentDB,
// under src/KurrentDB.Core/, cited where it is modelled):
//
//   - Append with an expected revision (any, no stream, exact, stream
//     exists); idempotent retries by event IDs: a strong index check for
//     exact and no-stream expectations, a weak bounded cache of recent IDs
//     for any (forgotten on Restart), a partial match failing as a wrong
//     expected version; the append size limits of each version, ending
//     the call while the request is read.
//   - Every event its own position (commit = prepare); an append, and its
//     idempotent retry, reports the last event's.
//   - Read of a stream forward and backward (stream-not-found message,
//     stream-deleted error with the "exception" trailers the client checks)
//     and of $all forward and backward.
//   - Subscriptions to a stream and to $all, with a stream-name or
//     event-type filter (prefixes or regular expression): a confirmation,
//     the history, a caught-up message from 23.10, then live events. A
//     filtered $all subscription sends checkpoints every window ×
//     multiplier considered events. A $all start position follows the
//     version's rule (see Profile.ExclusiveAllStart).
//   - Delete (soft) and Tombstone (hard delete, which writes a
//     "$streamDeleted" event into $all).
//   - Truncate-before: a stream's metadata ("$$" + stream, written and read
//     as a stream) may set "$tb"; reads of the stream and the catch-up of a
//     stream subscription start at it, a fully truncated stream reads as
//     empty, and a value past the end is kept and hides later events
//     (Services/Storage/ReaderIndex/IndexReader.cs, minEventNumber). $all
//     keeps truncated events, as the server does until a scavenge
//     (ReaderIndex/AllReader.cs reads no metadata). A metadata stream
//     reads as its last event only (its $maxCount is 1). Every modelled
//     version does this alike: the rule predates them all.
//   - ServerFeatures, reporting the profile's version.
//   - Test hooks: an append that is stored and then answered with the
//     server's commit timeout (TimeoutAfterStore); NotLeader answers with
//     the trailers that send the client to the leader, this test double's
//     own address (NotLeader); which calls carried the requires-leader
//     header (RequiresLeader); connections accepted (Connections).
//
// Every recorded event carries the system metadata the client requires
// ("type", "content-type" and "created", whose absence makes the client
// exit the process).
//
// Not served: gossip (so esdb+discover:// and multi-host connection strings
// cannot reach it), batch append, persistent subscriptions, projections,
// users, operations, authentication (credentials are ignored), TLS, link
// resolution, stream metadata other than $tb (max age, max count, ACLs),
// scavenging, and the server's slow-consumer drops. Tests can cut
// subscriptions on purpose with DropSubscriptions and take the whole server
// away with Stop and Restart.
package fakestreams

import (
	"fmt"
	"math"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/serverfeatures"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// Options adjust the test double.
type Options struct {
	// Profile names the server version modelled; DefaultProfile when
	// empty.
	Profile string
	// MaxAppendSize is the server's MaxAppendSize setting;
	// DefaultMaxAppendSize when zero.
	MaxAppendSize int
	// MaxAppendEventSize is the per-event limit of profiles that have one;
	// no limit when zero (the server's default is int.MaxValue).
	MaxAppendEventSize int
	// RecentIDs bounds the weak idempotency cache; defaultRecentIDs when
	// zero.
	RecentIDs int
	// UnexpectedReadReplies ends every stream read with a last-stream-
	// position message, which servers send only to clients that ask for it
	// and which the v4 client does not expect (it panics on it).
	UnexpectedReadReplies bool
}

// Server is a running test double.
type Server struct {
	opts    Options
	profile Profile
	log     *eventLog
	hooks   *hooks

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
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("fakestreams: listen: %v", err)
	}
	s, err := New(lis, opts)
	if err != nil {
		_ = lis.Close()
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// New serves a test double on lis until Stop. Its state lives in memory.
func New(lis net.Listener, opts Options) (*Server, error) {
	if opts.Profile == "" {
		opts.Profile = DefaultProfile
	}
	p, err := LookupProfile(opts.Profile)
	if err != nil {
		return nil, err
	}
	if opts.MaxAppendSize == 0 {
		opts.MaxAppendSize = DefaultMaxAppendSize
	}
	if opts.MaxAppendEventSize == 0 {
		opts.MaxAppendEventSize = math.MaxInt32
	}
	s := &Server{opts: opts, profile: p, log: newEventLog(), hooks: &hooks{}}
	if opts.RecentIDs > 0 {
		s.log.recent = newIDCache(opts.RecentIDs)
	}
	s.addr = lis.Addr().String()
	s.serve(lis)
	return s, nil
}

// Profile returns the modelled version.
func (s *Server) Profile() Profile { return s.profile }

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
		// Large enough that the modelled append limits (up to 16 MiB),
		// not gRPC's 4 MiB default, decide what is refused.
		grpc.MaxRecvMsgSize(32<<20),
	)
	streams.RegisterStreamsServer(gs, &streamsService{
		log: s.log, opts: s.opts, profile: s.profile, hooks: s.hooks, addr: s.addr,
		maxAppendSize: s.opts.MaxAppendSize, maxEventSize: s.opts.MaxAppendEventSize,
	})
	serverfeatures.RegisterServerFeaturesServer(gs, &featuresService{version: s.profile.Version})
	s.mu.Lock()
	s.gs = gs
	s.mu.Unlock()
	go func() { _ = gs.Serve(countingListener{Listener: lis, n: &s.hooks.conns}) }()
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
// the same address, as a server restart would: the weak idempotency cache
// is lost.
func (s *Server) Restart() error {
	s.Stop()
	s.log.forgetRecent()
	s.hooks.down.Store(false)
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
