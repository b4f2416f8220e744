package delivery

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

func (w *world) snapshotWritten() uint64 {
	p := w.engine.peer(mustLookup(w.t, w, peerB))
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.snapshotWritten
}

// A delivery snapshot is written once snapshotEvery records are, at
// exactly that many; a start from it knows it is written (retention cuts
// behind it), and a start without one warns of nothing.
func TestADeliverySnapshotIsWrittenAtExactlyItsCount(t *testing.T) {
	t.Parallel()
	w, _ := faultWorld(t, testConfig())
	w.deliverOneByOne(snapshotEvery - 1)
	if s := w.snapshotWritten(); s != 0 {
		t.Fatalf("a snapshot at %d before %d records", s, snapshotEvery)
	}
	w.restart()
	if strings.Contains(w.logs.String(), "delivery snapshot ignored") {
		t.Fatalf("a start without a snapshot warned:\n%s", w.logs.String())
	}
	w.deliverOneByOne(snapshotEvery)
	eventually(t, "the snapshot", func() bool { return w.snapshotWritten() == snapshotEvery })
	w.restart()
	if s := w.snapshotWritten(); s != snapshotEvery {
		t.Fatalf("after a restart the snapshot is known at %d, want %d", s, snapshotEvery)
	}
}

// A delivery snapshot whose write fails is logged, and not taken as
// written; so is one whose database identity cannot be read.
func TestAFailedDeliverySnapshotIsLoggedAndNotTakenAsWritten(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ name, op, prefix string }{
		{"append", "append", streams.DeliverySnapshotPrefix},
		{"database identity", "read", streams.Database},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			w, f := faultWorld(t, testConfig())
			f.fail(c.op, c.prefix, 1)
			w.deliverOneByOne(snapshotEvery + 5)
			eventually(t, "the failure logged", func() bool {
				return strings.Contains(w.logs.String(), "writing a delivery snapshot failed")
			})
			if s := w.snapshotWritten(); s != 0 {
				t.Fatalf("a failed snapshot taken as written at %d", s)
			}
		})
	}
}

// Given a delivery snapshot that covers more records than the stream
// holds, or one of another database, a start ignores it with a warning
// and folds the records.
func TestAnUntrustedDeliverySnapshotIsIgnoredWithAWarning(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		rev  uint64
		db   string
	}{{"past the end", 1000, ""}, {"another database", 2, "another"}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			w, _ := faultWorld(t, testConfig())
			w.deliverOneByOne(3)
			db := c.db
			if db == "" {
				var err error
				if db, err = streams.DatabaseID(t.Context(), w.store, rand.Reader); err != nil {
					t.Fatal(err)
				}
			}
			id := mustLookup(t, w, peerB)
			data, err := streams.NewCodec(rand.Reader).EncodeSnapshot(streams.NewOutboxSnapshot(db, streams.Delivery(id), c.rev, domain.Outbox{Head: 9, Delivered: 9}))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.store.Append(t.Context(), streams.DeliverySnapshot(id), eventstore.Any(), data); err != nil {
				t.Fatal(err)
			}
			w.restart()
			if !strings.Contains(w.logs.String(), "delivery snapshot ignored") {
				t.Fatalf("no warning:\n%s", w.logs.String())
			}
			if s := w.state(); s.Delivered != 3 || s.Head != 3 {
				t.Fatalf("state from an ignored snapshot: %+v", s)
			}
		})
	}
}

// Given a peer whose delivery stream, behind a snapshot, cannot be read,
// or holds a damaged record, Run fails instead of serving the peer from a
// state it could not read.
func TestRunFailsWhenADeliveryStreamCannotBeFolded(t *testing.T) {
	t.Parallel()
	for _, damaged := range []bool{false, true} {
		t.Run(map[bool]string{false: "read fails", true: "damaged record"}[damaged], func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, testConfig())
			w.deliverOneByOne(snapshotEvery + 2)
			eventually(t, "the snapshot", func() bool { return w.snapshotWritten() > 0 })
			id := mustLookup(t, w, peerB)
			if damaged {
				bad := eventstore.EventData{Type: "NotADeliveryEvent", Data: []byte("{")}
				if _, err := w.store.Append(t.Context(), streams.Delivery(id), eventstore.Any(), bad); err != nil {
					t.Fatal(err)
				}
			}
			w.close()
			ctx := context.Background()
			store, err := embedded.Open(ctx, w.dir, embedded.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			f := &faults{Store: store}
			if !damaged {
				f.fail("read", streams.Delivery(id), -1)
			}
			codec := streams.NewCodec(rand.Reader)
			reg, err := registry.Load(ctx, store, codec, rand.Reader, nil)
			if err != nil {
				t.Fatal(err)
			}
			e := New(testConfig(), f, codec, reg, w.peers, systemClock{}, slog.New(slog.NewTextHandler(io.Discard, nil)), rand.Reader)
			runCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			err = e.Run(runCtx)
			if err == nil || (!damaged && !errors.Is(err, errInjected)) {
				t.Fatalf("Run = %v", err)
			}
		})
	}
}
