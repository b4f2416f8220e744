package delivery

import (
	"context"
	"crypto/rand"
	"io/fs"
	"path/filepath"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb/fakestreams"
	"github.com/harmony-postbox/postbox/adapters/projector"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/projections"
)

func retainConfig(keep time.Duration) Config {
	cfg := testConfig()
	cfg.RetainDelivered = keep
	return cfg
}

func (w *world) truncatedBefore(stream string) uint64 {
	w.t.Helper()
	tb, err := w.store.TruncatedBefore(context.Background(), stream)
	if err != nil {
		w.t.Fatal(err)
	}
	return tb
}

func (w *world) outboxStream() string {
	id, _ := w.engine.registry.Lookup(peerB)
	return streams.Outbox(id)
}

func (w *world) deliveryStream() string {
	id, _ := w.engine.registry.Lookup(peerB)
	return streams.Delivery(id)
}

// Given events delivered one per push with a short retention, the
// delivered outbox events go (all but the last delivered one), the
// delivery records go behind the latest snapshot, and after a restart the
// state is the same and delivery goes on.
func TestDeliveredEventsAreRemovedOnceRetainedLongEnough(t *testing.T) {
	t.Parallel()
	w := newWorld(t, retainConfig(200*time.Millisecond))
	want := w.deliverOneByOne(600)
	eventually(t, "the delivered events removed", func() bool {
		return w.truncatedBefore(w.outboxStream()) == 599 && w.truncatedBefore(w.deliveryStream()) >= snapshotEvery-1
	})
	recs, err := w.store.ReadStream(t.Context(), w.outboxStream(), 0, 10)
	if err != nil || len(recs) != 1 || recs[0].Revision != 599 {
		t.Fatalf("outbox after retention: %d records (%v)", len(recs), err)
	}
	eventually(t, "the peer's cursor to show the outbox retained from 599", func() bool {
		c := w.engine.Cursors()
		return len(c) == 1 && c[0].RetainedFrom == 599
	})
	// The audit starts from the snapshot and the first kept event, and
	// finds nothing wrong.
	auditRetained(t, w.store, w.outboxStream(), w.deliveryStream())
	w.restart()
	if got := w.state(); got.Delivered != want.Delivered || got.Head != want.Head || got.Given != want.Given {
		t.Fatalf("rebuilt after retention %+v, want %+v", got, want)
	}
	w.deliverOneByOne(620)
	if got := w.peers.pushes(); got[len(got)-1] != 619 {
		t.Fatalf("last push %d after the restart, want 619", got[len(got)-1])
	}
}

// An undelivered backlog is never removed, however long it waits: with the
// peer down, every event from the first undelivered one stays readable.
func TestAnUndeliveredBacklogIsNeverRemoved(t *testing.T) {
	t.Parallel()
	w := newWorld(t, retainConfig(50*time.Millisecond))
	w.deliverOneByOne(20)
	w.peers.setDown(true)
	w.send(100)
	time.Sleep(500 * time.Millisecond) // ten retention periods
	if got := w.state(); got.Delivered != 20 {
		t.Fatalf("Delivered %d with the peer down, want 20", got.Delivered)
	}
	if tb := w.truncatedBefore(w.outboxStream()); tb > 20 {
		t.Fatalf("the outbox was truncated before %d, past the first undelivered event 20", tb)
	}
	recs, err := w.store.ReadStream(t.Context(), w.outboxStream(), 20, 200)
	if err != nil || len(recs) != 100 || recs[0].Revision != 20 {
		t.Fatalf("the backlog reads %d events (%v), want 100 from 20", len(recs), err)
	}
}

func auditRetained(t *testing.T, store projector.AuditStore, outbox, delivery string) {
	t.Helper()
	rep, err := projector.Audit(t.Context(), store, projector.AuditOptions{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Clean() {
		t.Fatalf("audit of a retained store: %v", rep.Violations)
	}
	var sawOutbox, sawDelivery bool
	for _, r := range rep.Retained {
		sawOutbox = sawOutbox || (r.Stream == outbox && r.From > 0 && !r.FromSnapshot)
		sawDelivery = sawDelivery || (r.Stream == delivery && r.From > 0 && r.FromSnapshot)
	}
	if !sawOutbox || !sawDelivery {
		t.Fatalf("the audit's range %+v does not name where it started on %s and %s", rep.Retained, outbox, delivery)
	}
}

// On EventStoreDB (the stand-in), retention truncates before the delivered
// cursor and the audit, which reads $all, passes and says where it began.
func TestRetentionAndAuditOnEventStoreDB(t *testing.T) {
	t.Parallel()
	srv := fakestreams.StartServer(t, fakestreams.Options{Profile: "24.10"})
	engine, store, reg := newESDBEngine(t, srv, "", retainConfig(100*time.Millisecond), nil)
	const n = snapshotEvery + 40
	for i := range n {
		if _, err := engine.Send(t.Context(), peerB, added(uint64(i))); err != nil {
			t.Fatal(err)
		}
	}
	id, _ := reg.Lookup(peerB)
	eventually(t, "the delivered events removed", func() bool {
		tb, err := store.TruncatedBefore(t.Context(), streams.Outbox(id))
		dtb, derr := store.TruncatedBefore(t.Context(), streams.Delivery(id))
		return err == nil && derr == nil && tb == n-1 && dtb > 0
	})
	auditRetained(t, store, streams.Outbox(id), streams.Delivery(id))
}

func dirSize(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err == nil {
			n += info.Size()
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A sender that delivered 100,000 events, with --retain-delivered 1s,
// shrinks its store on disk to under a tenth once they expire, restarts
// cleanly and keeps delivering. Under the race detector, which slows the
// embedded store about tenfold, it delivers 10,000.
func TestRetentionShrinksAStoreThatDelivered100000Events(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 100,000 events")
	}
	t.Parallel()
	cfg := retainConfig(time.Second)
	cfg.PushBatchEvents, cfg.PushBatchBytes = 10_000, 4<<20
	w := newWorld(t, cfg)
	w.peers.set(func(f *fakePeers) { f.batchBytes = 4 << 20 })
	w.deliverOneByOne(1)
	// The history is written straight into the store, engine stopped.
	stream := w.outboxStream()
	w.close()
	total := uint64(100_000)
	if raceDetector {
		total = 10_000
	}
	start := time.Now()
	store, err := embedded.Open(t.Context(), w.dir, embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	codec := streams.NewCodec(rand.Reader)
	for from := uint64(1); from < total; from += 1000 {
		batch := make([]eventstore.EventData, 0, 1000)
		for i := from; i < min(from+1000, total); i++ {
			d, err := codec.EncodeEnqueued(added(i))
			if err != nil {
				t.Fatal(err)
			}
			batch = append(batch, d)
		}
		if _, err := store.Append(t.Context(), stream, eventstore.Exact(from-1), batch...); err != nil {
			t.Fatal(err)
		}
	}
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%v: history written", time.Since(start))
	w.open()
	eventually(t, "every event delivered", func() bool { return w.state().Delivered == total })
	t.Logf("%v: delivered", time.Since(start))
	full := dirSize(t, w.dir)
	// Retention removes what was delivered a second ago: on a slow machine
	// a first pass may stop short of the end, and the next one reaches it.
	eventually(t, "every delivered event removed but the last", func() bool { return w.truncatedBefore(w.outboxStream()) == total-1 })
	eventually(t, "the store shrunk to under a tenth", func() bool { return dirSize(t, w.dir)*10 < full })
	t.Logf("%v: removed", time.Since(start))
	w.restart()
	shrunk := dirSize(t, w.dir)
	t.Logf("store on disk: %d bytes with %d events delivered, %d after retention and a restart", full, total, shrunk)
	if shrunk*10 >= full {
		t.Fatalf("the store holds %d bytes after retention, %d before: not under a tenth", shrunk, full)
	}
	w.send(5)
	eventually(t, "delivery going on after the restart", func() bool { return w.state().Delivered == total+5 })
}

// The audit compares every snapshot the engine wrote with the fold of the
// delivery records it covers: on a full history, all of them.
func TestTheAuditFindsTheEnginesSnapshotsEqualToTheirRecords(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	w.deliverOneByOne(3*snapshotEvery + 10)
	// Snapshots are written after the records they cover, a moment after
	// the last delivery; pushes that carried several events make fewer
	// records, so at least two are asked for.
	var rep projections.Report
	eventually(t, "two snapshots written", func() bool {
		var err error
		if rep, err = projector.Audit(t.Context(), w.store, projector.AuditOptions{}, nil); err != nil {
			t.Fatal(err)
		}
		return rep.SnapshotsChecked >= 2
	})
	if !rep.Clean() || rep.SnapshotsUnchecked != 0 {
		t.Fatalf("audit: %d snapshots checked, %d not, violations %v; want 2 or more checked, clean",
			rep.SnapshotsChecked, rep.SnapshotsUnchecked, rep.Violations)
	}
}
