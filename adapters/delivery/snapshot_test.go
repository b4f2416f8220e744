package delivery

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"log/slog"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb/fakestreams"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// deliverOneByOne sends events to an upstream peer, which takes one per
// push, until n were sent: one delivery record each.
func (w *world) deliverOneByOne(n int) domain.Outbox {
	w.t.Helper()
	w.send(n - int(w.state().Head))
	eventually(w.t, "every event delivered", func() bool {
		return w.state().Delivered == uint64(n)
	})
	eventually(w.t, "the records written", func() bool {
		id, _ := w.engine.registry.Lookup(peerB)
		p := w.engine.peer(id)
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.deliveryNext == uint64(n) && !p.flushing
	})
	return w.state()
}

func (w *world) snapshotStream() string {
	id, _ := w.engine.registry.Lookup(peerB)
	return streams.DeliverySnapshot(id)
}

// Given a peer with 1,000 delivery records, a restart reads the latest
// snapshot and fewer than snapshotEvery records, and rebuilds the same
// state as the whole fold.
func TestAStartReadsTheLatestSnapshotAndTheRecordsAfterIt(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	want := w.deliverOneByOne(600)
	w.restart()
	if got := w.engine.recordsRead.Load(); got >= snapshotEvery {
		t.Fatalf("a start read %d delivery records, want fewer than %d", got, snapshotEvery)
	}
	if got := w.state(); got.Delivered != want.Delivered || got.Head != want.Head || got.Given != want.Given || got.HasGiven != want.HasGiven {
		t.Fatalf("rebuilt from the snapshot %+v, want %+v", got, want)
	}
	// It keeps delivering from there, and writes the next snapshots.
	want = w.deliverOneByOne(600 + snapshotEvery)
	recs, err := w.store.ReadStreamBackward(t.Context(), w.snapshotStream(), 1)
	if err != nil || len(recs) != 1 {
		t.Fatalf("snapshot stream: %v, %d", err, len(recs))
	}
	snap, err := streams.DecodeOutboxSnapshot(recs[0])
	if err != nil || snap.Revision < 600 || snap.Outbox().Delivered != snap.Revision {
		t.Fatalf("latest snapshot %+v (%v)", snap, err)
	}
}

// A snapshot that cannot be trusted is ignored: the whole stream is folded.
func TestAnUntrustedSnapshotIsIgnored(t *testing.T) {
	t.Parallel()
	for name, spoil := range map[string]func(s *streams.OutboxSnapshot){
		"newer format":     func(s *streams.OutboxSnapshot) { s.Format = streams.SnapshotFormat + 1 },
		"later revision":   func(s *streams.OutboxSnapshot) { s.Revision = 10_000 },
		"another database": func(s *streams.OutboxSnapshot) { s.DatabaseID = "elsewhere" },
		"another stream":   func(s *streams.OutboxSnapshot) { s.Stream = "delivery-other" },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, testConfig())
			w.deliverOneByOne(snapshotEvery + 10)
			recs, err := w.store.ReadStreamBackward(t.Context(), w.snapshotStream(), 1)
			if err != nil || len(recs) != 1 {
				t.Fatalf("no snapshot written: %v", err)
			}
			snap, _ := streams.DecodeOutboxSnapshot(recs[0])
			// A snapshot claiming far more was delivered than the records say.
			snap.Delivered, snap.Given = 5000, 4999
			spoil(&snap)
			data, _ := json.Marshal(snap)
			if _, err := w.store.Append(t.Context(), w.snapshotStream(), eventstore.Any(),
				eventstore.EventData{ID: eventstore.EventID{1}, Type: streams.TypeSnapshot, Data: data}); err != nil {
				t.Fatal(err)
			}
			w.restart()
			if got := w.engine.recordsRead.Load(); got != snapshotEvery+10 {
				t.Fatalf("read %d records, want the whole stream (%d)", got, snapshotEvery+10)
			}
			if got := w.state(); got.Delivered != snapshotEvery+10 {
				t.Fatalf("rebuilt Delivered %d, want %d", got.Delivered, snapshotEvery+10)
			}
		})
	}
}

// On EventStoreDB (the stand-in) a start reads the snapshot too.
func TestAStartReadsTheSnapshotOnEventStoreDB(t *testing.T) {
	t.Parallel()
	srv := fakestreams.StartServer(t, fakestreams.Options{Profile: "24.10"})
	peers := &fakePeers{}
	open := func() (*Engine, func()) {
		store, err := esdb.Open(t.Context(), srv.ConnString(), slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		codec := streams.NewCodec(rand.Reader)
		reg, err := registry.Load(t.Context(), store, codec, rand.Reader, nil)
		if err != nil {
			t.Fatal(err)
		}
		e := New(testConfig(), store, codec, reg, peers, systemClock{}, slog.New(slog.DiscardHandler), rand.Reader)
		stop := runEngine(t, e)
		return e, func() { stop(); _ = store.Close() }
	}
	e, stop := open()
	const n = snapshotEvery + 40
	for i := range n {
		if _, err := e.Send(context.Background(), peerB, added(uint64(i))); err != nil {
			t.Fatal(err)
		}
	}
	id, _ := e.registry.Lookup(peerB)
	eventually(t, "every event delivered and recorded", func() bool {
		p := e.peer(id)
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.deliveryNext == n && !p.flushing && p.snapshotWritten >= snapshotEvery
	})
	p := e.peer(id)
	p.mu.Lock()
	covered := p.snapshotWritten
	p.mu.Unlock()
	stop()
	e, stop = open()
	defer stop()
	if got := e.recordsRead.Load(); got != n-covered {
		t.Fatalf("a start read %d records, want the %d after the snapshot", got, n-covered)
	}
	p = e.peer(id)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.out.Delivered != n || p.deliveryNext != n {
		t.Fatalf("rebuilt Delivered %d, stream length %d; want %d", p.out.Delivered, p.deliveryNext, n)
	}
}
