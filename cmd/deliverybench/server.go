package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/delivery"
	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/hrpc"
	"github.com/harmony-postbox/postbox/adapters/httpserver"
	"github.com/harmony-postbox/postbox/adapters/peerkeys"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/adapters/rpcerrors"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	harmonytypesv1 "github.com/harmony-postbox/postbox/gen/protocol/harmonytypes/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
	"github.com/harmony-postbox/postbox/internal/assembly"
)

// node is one Postbox server, assembled by the injector the server's
// engine and federation handlers share (internal/assembly.InitNode: the
// same engine, peer client, federation handlers and admission as
// `postbox serve --insecure-peers` on the embedded store, without the admin
// listener): its own store in its own directory, a real verifier with a
// peer key resolver, the federation handler on a 127.0.0.1 listener, and a
// peer client speaking hRPC. Two things are added, both thin: a door in
// front of the handler that can answer 503 as if the server were down, and
// an observer counting accepted pushes, so the bench can wait for
// deliveries without polling the store.
type node struct {
	id       domain.ServerID
	role     string
	store    *embedded.Store
	codec    *streams.Codec
	registry *registry.Registry
	engine   *delivery.Engine
	// stopEngine ends the engine's Run and waits for it.
	stopEngine func() error
	cleanup    func() // closes what the injector opened
	resolver   *peerkeys.Resolver
	pub        ed25519.PublicKey
	accepted   *counter      // events accepted by push
	pushes     *atomic.Int64 // pushes accepted
	door       *door
	srv        *httpserver.Server
}

type nodeConfig struct {
	delivery   delivery.Config
	authWindow time.Duration
}

// startNode assembles a server on a fresh data directory and serves it.
// Its goroutines (store writer, listener, connections) carry the profiler
// label server=role, so that one profile of many servers can be split:
// go tool pprof -tagfocus=server=receiver.
func startNode(ctx context.Context, role, dir string, cfg nodeConfig, logger *slog.Logger) (n *node, err error) {
	pprof.Do(ctx, pprof.Labels("server", role), func(ctx context.Context) {
		n, err = assemble(ctx, dir, cfg, logger)
	})
	if err == nil {
		n.role = role
	}
	return n, err
}

// as runs fn with n's profiler label, for work the bench starts on n's
// behalf (sends, pulls) and the goroutines that work starts.
func (n *node) as(ctx context.Context, fn func(context.Context)) {
	pprof.Do(ctx, pprof.Labels("server", n.role), fn)
}

func assemble(ctx context.Context, dir string, cfg nodeConfig, logger *slog.Logger) (*node, error) {
	// The server ID is the listener's address: a free port, found first.
	addr, err := freeAddr(ctx)
	if err != nil {
		return nil, err
	}
	id, err := domain.ParseServerID(addr)
	if err != nil {
		return nil, err
	}
	n := &node{id: id, accepted: new(counter), pushes: new(atomic.Int64), door: new(door)}
	assembled, cleanup, err := assembly.InitNode(ctx, assembly.NodeConfig{
		ID: id, Listen: addr, DataDir: dir, Delivery: cfg.delivery, AuthWindow: cfg.authWindow,
		MaxRequest: 4 << 20, Observer: pushCounter{accepted: n.accepted, pushes: n.pushes},
		Front: func(h http.Handler) http.Handler { n.door.next = h; return n.door },
	}, logger)
	if err != nil {
		return nil, err
	}
	n.cleanup, n.store, n.codec, n.registry, n.engine = cleanup, assembled.Store, assembled.Codec, assembled.Registry, assembled.Engine
	n.resolver, n.pub, n.srv = assembled.Resolver, assembled.Public, assembled.Listener
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	ran := make(chan error, 1)
	go func() { ran <- n.engine.Run(runCtx) }()
	n.stopEngine = func() error { stop(); return <-ran }
	go func() { _ = n.srv.Serve() }() // returns at Shutdown
	select {
	case <-n.engine.Ready(): // a new server has no peers: at once
	case err := <-ran:
		n.stopEngine = nil
		n.close(ctx)
		return nil, err
	}
	return n, nil
}

// freeAddr finds a free loopback port for a node to listen on.
func freeAddr(ctx context.Context) (string, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}

// close stops the listener, then the engine, then the store.
func (n *node) close(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if n.srv != nil {
		_ = n.srv.Shutdown(ctx)
	}
	if n.stopEngine != nil {
		_ = n.stopEngine()
	}
	if n.cleanup != nil {
		n.cleanup()
	}
}

// door passes requests to the federation handler, or, while down, answers
// every one with hrpc.unavailable, as a server behind a failing proxy would.
type door struct {
	next http.Handler
	down atomic.Bool
}

func (d *door) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !d.down.Load() {
		d.next.ServeHTTP(w, r)
		return
	}
	body, _ := proto.Marshal(&harmonytypesv1.Error{Identifier: rpcerrors.Unavailable, HumanMessage: "down for the bench"})
	w.Header().Set("Content-Type", hrpc.ContentType)
	w.Header().Set(hrpc.VersionHeader, hrpc.Version)
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = w.Write(body)
}

// pushCounter counts the pushes the engine accepted and their events,
// told once they are durable in the inbox (before the push is answered).
// A duplicate the engine drops is not counted; every measurement checks the
// inbox streams afterwards.
type pushCounter struct {
	accepted *counter
	pushes   *atomic.Int64
}

func (c pushCounter) Received(_ domain.ServerID, via string, n int) {
	if via == "push" {
		c.pushes.Add(1)
		c.accepted.add(int64(n))
	}
}

func (pushCounter) PushAttempted(domain.ServerID, time.Duration, int, error) {}
func (pushCounter) PullServed(domain.ServerID, int)                          {}
func (pushCounter) PullMade(domain.ServerID, error)                          {}
func (pushCounter) Continuity(domain.ServerID, string)                       {}

// counter counts, and closes a channel when the count reaches a goal.
type counter struct {
	n    atomic.Int64
	goal atomic.Int64 // 0: nobody waits
	mu   sync.Mutex
	ch   chan struct{}
}

func (c *counter) add(d int64) {
	v := c.n.Add(d)
	if g := c.goal.Load(); g == 0 || v < g {
		return
	}
	c.mu.Lock()
	if c.ch != nil && v >= c.goal.Load() {
		close(c.ch)
		c.ch = nil
		c.goal.Store(0)
	}
	c.mu.Unlock()
}

// await returns a channel closed once n more have been counted.
func (c *counter) await(n int64) <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan struct{})
	c.ch = ch
	c.goal.Store(c.n.Load() + n)
	return ch
}

// Stream helpers: the bench reads the streams to check what happened,
// never the engine's memory.

// streamLen is the number of events in a stream (0 if it does not exist).
func streamLen(ctx context.Context, s *embedded.Store, stream string) (uint64, error) {
	last, err := s.ReadStreamBackward(ctx, stream, 1)
	switch {
	case errors.Is(err, eventstore.ErrStreamNotFound):
		return 0, nil
	case err != nil:
		return 0, err
	case len(last) == 0:
		return 0, nil
	}
	return last[0].Revision + 1, nil
}

// lastType is the type of a stream's last event, "" if none.
func lastType(ctx context.Context, s *embedded.Store, stream string) (string, error) {
	last, err := s.ReadStreamBackward(ctx, stream, 1)
	if errors.Is(err, eventstore.ErrStreamNotFound) || err == nil && len(last) == 0 {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return last[0].Type, nil
}

// pushedThrough is how many events of the outbox the delivery stream
// records as pushed, judged by its last record (0 if that is not a push).
func pushedThrough(ctx context.Context, s *embedded.Store, stream string) (uint64, error) {
	last, err := s.ReadStreamBackward(ctx, stream, 1)
	if errors.Is(err, eventstore.ErrStreamNotFound) || err == nil && len(last) == 0 {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	ev, err := streams.DecodeDelivery(last[0])
	if err != nil {
		return 0, err
	}
	if p, ok := ev.(domain.EventPushed); ok {
		return p.Last() + 1, nil
	}
	return 0, nil
}

// peerOf is the stable peer ID n gave server.
func (n *node) peerOf(server domain.ServerID) (streams.PeerID, error) {
	id, ok := n.registry.Lookup(server)
	if !ok {
		return "", fmt.Errorf("%s does not know %s", n.id, server)
	}
	return id, nil
}

// inboxLen is how many events n holds from server.
func (n *node) inboxLen(ctx context.Context, server domain.ServerID) (uint64, error) {
	id, ok := n.registry.Lookup(server)
	if !ok {
		return 0, nil // not a peer yet: nothing received
	}
	// Events, not records: a receive of several is stored as runs.
	var count uint64
	for next := uint64(0); ; {
		recs, err := n.store.ReadStream(ctx, streams.Inbox(id), next, 4096)
		if errors.Is(err, eventstore.ErrStreamNotFound) {
			return 0, nil
		}
		if err != nil {
			return 0, err
		}
		events, err := streams.ReceivedOf(recs)
		if err != nil {
			return 0, err
		}
		count += uint64(len(events))
		if len(recs) < 4096 {
			return count, nil
		}
		next = recs[len(recs)-1].Revision + 1
	}
}

// preload appends count events to n's outbox for server directly, as Send
// would one by one, in batches; the engine learns of them at the next Send
// (which raises the outbox head it knows). This builds a backlog fast
// without measuring enqueues.
func (n *node) preload(ctx context.Context, server domain.ServerID, count int, event func(i int) *syncv1.Event) error {
	id, err := n.registry.Register(ctx, server) // as Send does first
	if err != nil {
		return err
	}
	stream := streams.Outbox(id)
	head, err := streamLen(ctx, n.store, stream)
	if err != nil {
		return err
	}
	const batch = 1000
	for done := 0; done < count; {
		m := min(batch, count-done)
		data := make([]eventstore.EventData, 0, m)
		for i := range m {
			d, err := n.codec.EncodeEnqueued(event(done + i))
			if err != nil {
				return err
			}
			data = append(data, d)
		}
		expected := eventstore.NoStream()
		if head > 0 {
			expected = eventstore.Exact(head - 1)
		}
		if _, err := n.store.Append(ctx, stream, expected, data...); err != nil {
			return fmt.Errorf("preload %s: %w", stream, err)
		}
		head += uint64(m)
		done += m
	}
	return nil
}

// waitFor polls cond every few milliseconds until it holds.
func waitFor(ctx context.Context, what string, timeout time.Duration, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		ok, err := cond()
		if err != nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}
