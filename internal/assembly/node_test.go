package assembly

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/delivery"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// startNode assembles a node on a free loopback port, serves it and runs
// its engine until the test ends.
func startNode(t *testing.T) *Node {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := NodeConfig{ID: domain.MustParseServerID(addr), Listen: addr, DataDir: t.TempDir(),
		Delivery: delivery.DefaultConfig(), AuthWindow: domain.DefaultAuthWindow, MaxRequest: 4 << 20}
	n, cleanup, err := InitNode(t.Context(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- n.Engine.Run(ctx) }()
	go func() { _ = n.Listener.Serve() }()
	t.Cleanup(func() {
		_ = n.Listener.Shutdown(context.Background())
		stop()
		if err := <-ran; err != nil {
			t.Errorf("Run: %v", err)
		}
		cleanup()
	})
	return n
}

// Two nodes as the benchmark assembles them deliver to each other over
// signed hRPC: the injector gives each a working engine, peer client,
// verifier and federation handler.
func TestNodesAssembledByTheInjectorDeliver(t *testing.T) {
	t.Parallel()
	a, b := startNode(t), startNode(t)
	event := &syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: 42, GuildId: 7}}}
	if _, err := a.Engine.Send(t.Context(), b.ID, event); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if id, ok := b.Registry.Lookup(a.ID); ok {
			recs, err := b.Store.ReadStream(t.Context(), streams.Inbox(id), 0, 10)
			if err == nil && len(recs) == 1 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the event never reached the other node's inbox")
		}
		time.Sleep(10 * time.Millisecond) // a socket test: the push crosses a real listener
	}
}
