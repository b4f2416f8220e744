package fakestreams

import (
	"context"
	"net"
	"strconv"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// hooks are the faults tests ask for and what the test double saw.
type hooks struct {
	mu         sync.Mutex
	timeouts   int
	notLeaders int
	leader     map[string][2]int
	conns      atomic.Int64
	// crash: the next timed-out append takes the server down.
	crash bool
	// down refuses every call until Restart.
	down atomic.Bool
}

// TimeoutAfterStore makes the next n appends store their events and then
// answer the server's commit timeout, Aborted "Operation timed out", as a
// real server does when replication is slow: the write may have landed.
func (s *Server) TimeoutAfterStore(n int) {
	s.hooks.mu.Lock()
	defer s.hooks.mu.Unlock()
	s.hooks.timeouts = n
}

// TimeoutThenStop makes the next append store its events, answer the
// commit timeout as TimeoutAfterStore does, and take the server down as a
// crash would: every later call is refused as unavailable until Restart,
// so a client's retry can only arrive after the restart.
func (s *Server) TimeoutThenStop() {
	s.hooks.mu.Lock()
	defer s.hooks.mu.Unlock()
	s.hooks.timeouts = 1
	s.hooks.crash = true
}

// NotLeader makes the next n appends or reads that carry the
// requires-leader header answer as a follower does: NotFound with the
// trailers naming the leader (Services/Transport/Grpc/RpcExceptions.cs,
// LeaderInfo), here this test double's own address. Calls without the
// header are served, as a follower serves reads and forwards writes
// (Services/Transport/Grpc/ServiceBase.cs).
func (s *Server) NotLeader(n int) {
	s.hooks.mu.Lock()
	defer s.hooks.mu.Unlock()
	s.hooks.notLeaders = n
}

// RequiresLeader returns how many calls of kind ("append", "read" or
// "subscribe") arrived with and without the requires-leader header.
func (s *Server) RequiresLeader(kind string) (with, without int) {
	s.hooks.mu.Lock()
	defer s.hooks.mu.Unlock()
	c := s.hooks.leader[kind]
	return c[0], c[1]
}

// Connections returns how many connections the test double has accepted.
func (s *Server) Connections() int { return int(s.hooks.conns.Load()) }

// takeTimeout reports whether this append answers a timeout; it takes the
// server down if TimeoutThenStop asked for it.
func (h *hooks) takeTimeout() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.timeouts == 0 {
		return false
	}
	h.timeouts--
	if h.crash {
		h.crash = false
		h.down.Store(true)
	}
	return true
}

// Down reports whether the server is down after TimeoutThenStop.
func (s *Server) Down() bool { return s.hooks.down.Load() }

// unavailable refuses calls while the server is down.
func (h *hooks) unavailable() error {
	if h.down.Load() {
		return status.Error(codes.Unavailable, "the test double is down")
	}
	return nil
}

func requiresLeader(ctx context.Context) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get("requires-leader")
	return len(v) > 0 && v[0] == "true"
}

func (h *hooks) sawCall(kind string, ctx context.Context) {
	if h.down.Load() {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.leader == nil {
		h.leader = map[string][2]int{}
	}
	c := h.leader[kind]
	if requiresLeader(ctx) {
		c[0]++
	} else {
		c[1]++
	}
	h.leader[kind] = c
}

// notLeader answers NotLeader if the test asked for it and the call
// requires the leader.
func (h *hooks) notLeader(ctx context.Context, addr string) error {
	if !requiresLeader(ctx) {
		return nil
	}
	h.mu.Lock()
	if h.notLeaders == 0 {
		h.mu.Unlock()
		return nil
	}
	h.notLeaders--
	h.mu.Unlock()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	if _, err := strconv.Atoi(port); err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	_ = grpc.SetTrailer(ctx, metadata.Pairs(
		"exception", "not-leader",
		"leader-endpoint-host", host,
		"leader-endpoint-port", port,
	))
	return status.Error(codes.NotFound, "Leader info available")
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}
