package delivery

import (
	"context"
	"crypto/rand"
	"log/slog"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb/fakestreams"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/adapters/streams"
)

// The EventStoreDB stand-in times an outbox append out after storing it and
// goes down; it restarts, forgetting its cache of recent event IDs, before
// the retry. The retry, at the same exact revision with the same event ID,
// stores nothing twice, and Send returns once, with the event's sequence
// number.
func TestASendTimedOutAcrossAServerRestartIsStoredOnce(t *testing.T) {
	t.Parallel()
	srv := fakestreams.StartServer(t, fakestreams.Options{Profile: "24.10"})
	ctx := t.Context()
	engine, store, reg := newESDBEngine(t, srv, "", testConfig(), nil)
	if seq, err := engine.Send(ctx, peerB, added(0)); err != nil || seq != 0 {
		t.Fatalf("first Send: %d, %v", seq, err)
	}

	srv.TimeoutThenStop()
	type result struct {
		seq uint64
		err error
	}
	done := make(chan result, 2)
	go func() {
		seq, err := engine.Send(ctx, peerB, added(1))
		done <- result{seq, err}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !srv.Down() {
		if time.Now().After(deadline) {
			t.Fatal("the append never reached the server")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // retries meet the server down
	select {
	case r := <-done:
		t.Fatalf("Send returned while the server was down: %d, %v", r.seq, r.err)
	default:
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Send did not return after the restart")
	}
	if r.err != nil || r.seq != 1 {
		t.Fatalf("Send across the restart: %d, %v; want 1", r.seq, r.err)
	}
	id, _ := reg.Lookup(peerB)
	recs, err := store.ReadStream(context.Background(), streams.Outbox(id), 0, 10)
	if err != nil || len(recs) != 2 {
		t.Fatalf("the outbox holds %d events (%v), want 2", len(recs), err)
	}
	if seq, err := engine.Send(ctx, peerB, added(2)); err != nil || seq != 2 {
		t.Fatalf("Send after the restart: %d, %v; want 2", seq, err)
	}
}

// newESDBEngine opens the adapter on srv (query: more of the connection
// string) and an engine on it.
func newESDBEngine(t *testing.T, srv *fakestreams.Server, query string, cfg Config, client PeerClient) (*Engine, *esdb.Store, *registry.Registry) {
	t.Helper()
	ctx := t.Context()
	store, err := esdb.Open(ctx, srv.ConnString()+"&maxDiscoverAttempts=2&discoveryInterval=20"+query, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	codec := streams.NewCodec(rand.Reader)
	reg, err := registry.Load(ctx, store, codec, rand.Reader, nil)
	if err != nil {
		t.Fatal(err)
	}
	if client == nil {
		client = &fakePeers{}
	}
	engine := New(cfg, store, codec, reg, client, systemClock{}, slog.New(slog.DiscardHandler), rand.Reader)
	runEngine(t, engine)
	return engine, store, reg
}
