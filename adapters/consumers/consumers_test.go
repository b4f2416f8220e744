package consumers

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb/fakestreams"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

type fixedClock struct{ t time.Time }

func (c fixedClock) Now() time.Time { return c.t }

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

func openLedger(t *testing.T, store Store) *Ledger {
	t.Helper()
	l, err := Open(t.Context(), store, streams.NewCodec(rand.Reader), fixedClock{t0})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func openEmbedded(t *testing.T, dir string) *embedded.Store {
	t.Helper()
	s, err := embedded.Open(t.Context(), dir, embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func wantPosition(t *testing.T, l *Ledger, name string, want uint64) {
	t.Helper()
	c, ok, err := l.Get(t.Context(), name)
	if err != nil || !ok || c.Position != want {
		t.Fatalf("%s: got %+v, %v, %v; want position %d", name, c, ok, err, want)
	}
}

// An acknowledged position survives a restart: it is in the store, not in
// the process.
func TestAcknowledgementsSurviveARestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	store := openEmbedded(t, dir)
	l := openLedger(t, store)
	ctx := t.Context()
	for _, pos := range []uint64{3, 9, 5} {
		if _, err := l.Ack(ctx, "homeserver", pos); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Ack(ctx, "indexer", 4); err != nil {
		t.Fatal(err)
	}
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}

	store = openEmbedded(t, dir)
	defer store.Close()
	l = openLedger(t, store)
	wantPosition(t, l, "homeserver", 9)
	wantPosition(t, l, "indexer", 4)
	recs, err := store.ReadStream(ctx, streams.Consumers, 0, 100)
	if err != nil || len(recs) != 3 {
		t.Fatalf("the stream holds %d records (%v), want 3: a late acknowledgement records nothing", len(recs), err)
	}
	all, err := l.List(ctx)
	if err != nil || len(all) != 2 || all[0].Name != "homeserver" || !all[0].AcknowledgedAt.Equal(t0) {
		t.Fatalf("List: %+v, %v", all, err)
	}
}

func TestDeletedConsumerStartsAgain(t *testing.T) {
	t.Parallel()
	store := openEmbedded(t, t.TempDir())
	defer store.Close()
	l := openLedger(t, store)
	ctx := t.Context()
	if _, err := l.Ack(ctx, "hs", 7); err != nil {
		t.Fatal(err)
	}
	if err := l.Delete(ctx, "hs"); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := l.Get(ctx, "hs"); ok {
		t.Fatal("deleted consumer still there")
	}
	if err := l.Delete(ctx, "hs"); !errors.Is(err, domain.ErrNotFound) {
		t.Fatalf("deleting it again: %v, want ErrNotFound", err)
	}
	if _, ok, _ := openLedger(t, store).Get(ctx, "hs"); ok {
		t.Fatal("deleted consumer back after reopening")
	}
}

// Two processes on one store (replicas on EventStoreDB): each reads what the
// other recorded, and concurrent acknowledgements never move a consumer back.
func TestTwoWritersOnOneStore(t *testing.T) {
	t.Parallel()
	srv := fakestreams.StartServer(t, fakestreams.Options{Profile: "24.10"})
	ctx := t.Context()
	open := func() *Ledger {
		s, err := esdb.Open(ctx, srv.ConnString()+"&maxDiscoverAttempts=2&discoveryInterval=20", slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return openLedger(t, s)
	}
	a, b := open(), open()
	if _, err := a.Ack(ctx, "hs", 5); err != nil {
		t.Fatal(err)
	}
	wantPosition(t, b, "hs", 5)

	var wg sync.WaitGroup
	for i := range 20 {
		l := a
		if i%2 == 1 {
			l = b
		}
		wg.Go(func() {
			if _, err := l.Ack(context.WithoutCancel(ctx), "hs", uint64(10+i)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	wantPosition(t, a, "hs", 29)
	wantPosition(t, b, "hs", 29)
}

func TestBadNamesAreRefusedBeforeTheStore(t *testing.T) {
	t.Parallel()
	store := openEmbedded(t, t.TempDir())
	defer store.Close()
	l := openLedger(t, store)
	if _, err := l.Ack(t.Context(), "Bad Name", 1); !errors.Is(err, domain.ErrInvalidArgument) {
		t.Fatalf("Ack: %v", err)
	}
	if _, _, err := l.Get(t.Context(), ""); !errors.Is(err, domain.ErrInvalidArgument) {
		t.Fatalf("Get: %v", err)
	}
	if _, err := store.ReadStream(t.Context(), streams.Consumers, 0, 1); err == nil {
		t.Fatal("a refused acknowledgement wrote to the store")
	}
}
