package registry

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb/fakestreams"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// compactStore is a store the registry can be loaded from and compacted.
type compactStore interface {
	Store
	Truncater
	TruncatedBefore(ctx context.Context, stream string) (uint64, error)
	ReadStreamBackward(ctx context.Context, stream string, limit int) ([]eventstore.RecordedEvent, error)
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func openEmbedded(t *testing.T, dir string) *embedded.Store {
	t.Helper()
	// Records stored at t0: the times of this server's IDs read back are
	// the ones given when they were recorded.
	store, err := embedded.Open(t.Context(), dir, embedded.Options{Clock: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return store
}

func openESDB(t *testing.T, srv *fakestreams.Server) *esdb.Store {
	t.Helper()
	store, err := esdb.Open(t.Context(), srv.ConnString()+"&maxDiscoverAttempts=2&discoveryInterval=20", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	return store
}

// logBuffer collects a registry's log, safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func load(t *testing.T, store Store, logs *logBuffer) *Registry {
	t.Helper()
	var logger *slog.Logger
	if logs != nil {
		logger = slog.New(slog.NewTextHandler(logs, nil))
	}
	reg, err := Load(t.Context(), store, streams.NewCodec(rand.Reader), rand.Reader, logger)
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

// image is a registry's fold, with times in one form (a snapshot's JSON
// does not keep a time's location).
func image(reg *Registry) domain.PeersImage {
	reg.mu.Lock()
	img := reg.peers.Image()
	reg.mu.Unlock()
	for i := range img.OwnIDs {
		img.OwnIDs[i].Since = img.OwnIDs[i].Since.UTC()
	}
	if len(img.OwnIDs) == 0 {
		img.OwnIDs = nil
	}
	for i := range img.Peers {
		if len(img.Peers[i].Former) == 0 {
			img.Peers[i].Former = nil
		}
		if len(img.Peers[i].FormerKeys) == 0 {
			img.Peers[i].FormerKeys = nil
		}
	}
	return img
}

// writeHistory records, through reg, n peers, each with a key, every third
// renamed (one of them back to its first ID), two renames of this server
// and a notice of the last: every kind of record the registry folds.
func writeHistory(t *testing.T, reg *Registry, n int, prefix string) {
	t.Helper()
	ctx := t.Context()
	own := func(i int) domain.ServerID {
		return domain.MustParseServerID(fmt.Sprintf("%sus%d.example:2289", prefix, i))
	}
	if err := reg.RecordOwnID(ctx, own(0), t0); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		id := domain.MustParseServerID(fmt.Sprintf("%s%d.example:2289", prefix, i))
		peer, err := reg.Register(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if err := reg.RecordKey(ctx, id, pubKey(byte(i))); err != nil {
			t.Fatal(err)
		}
		if i%3 == 0 {
			renamed := domain.MustParseServerID(fmt.Sprintf("%s%d-renamed.example:2289", prefix, i))
			if err := reg.RecordRename(ctx, domain.PeerRename{Peer: string(peer), Old: id, New: renamed}); err != nil {
				t.Fatal(err)
			}
			if i == 3 {
				if err := reg.RecordRename(ctx, domain.PeerRename{Peer: string(peer), Old: renamed, New: id}); err != nil {
					t.Fatal(err)
				}
			}
		}
		if i == n/2 {
			if _, err := reg.RenameOwn(ctx, own(i), t0); err != nil {
				t.Fatal(err)
			}
		}
	}
	peer, _ := reg.Lookup(domain.MustParseServerID(fmt.Sprintf("%s%d.example:2289", prefix, n-1)))
	if err := reg.RecordNotified(ctx, peer, own(n/2)); err != nil {
		t.Fatal(err)
	}
}

func truncatedBefore(t *testing.T, store compactStore, stream string) uint64 {
	t.Helper()
	tb, err := store.TruncatedBefore(t.Context(), stream)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

// testCompaction: given a registry with a long history, when it is
// compacted twice (a snapshot each time, the stream truncated behind the
// one before the latest), more is recorded and the server restarts, then
// the registry read again holds every peer, former ID, key, own ID and
// notice, and read only the records after the latest snapshot; a second
// registry on the store (a replica) learns by Refresh what the first
// recorded after the compaction.
//
// The stand-in of EventStoreDB stamps records with its own clock: there,
// the times of own IDs are not compared (sameTimes false).
func testCompaction(t *testing.T, store compactStore, sameTimes bool, reopen func() compactStore) {
	ctx := t.Context()
	image := func(reg *Registry) domain.PeersImage {
		img := image(reg)
		for i := range img.OwnIDs {
			if !sameTimes {
				img.OwnIDs[i].Since = time.Time{}
			}
		}
		return img
	}
	reg := load(t, store, nil)
	replica := load(t, store, nil)
	reg.snapshotEvery = 40
	writeHistory(t, reg, 30, "a")
	if err := reg.Compact(ctx, store); err != nil {
		t.Fatal(err)
	}
	first := reg.next
	if tb := truncatedBefore(t, store, streams.Peers); tb != 0 {
		t.Fatalf("with one snapshot the peers stream is truncated before %d, want kept whole", tb)
	}
	writeHistory(t, reg, 5, "b")
	if err := reg.Compact(ctx, store); err != nil { // under the threshold: nothing
		t.Fatal(err)
	}
	if tb := truncatedBefore(t, store, streams.Peers); tb != 0 {
		t.Fatalf("compacted before %d records were written: truncated before %d", reg.snapshotEvery, tb)
	}
	writeHistory(t, reg, 15, "c")
	if err := reg.Compact(ctx, store); err != nil {
		t.Fatal(err)
	}
	second := reg.next
	if tb := truncatedBefore(t, store, streams.Peers); tb != first-1 {
		t.Fatalf("the peers stream is truncated before %d, want %d: before the last record the first snapshot covers", tb, first-1)
	}
	writeHistory(t, reg, 2, "d")
	want := image(reg)

	replica.Refresh(ctx)
	if got := image(replica); !reflect.DeepEqual(got, want) {
		t.Fatalf("a replica refreshed after the compaction holds\n%+v\nwant\n%+v", got, want)
	}
	if _, err := replica.Register(ctx, domain.MustParseServerID("e.example:2289")); err != nil {
		t.Fatalf("a replica registers after the compaction: %v", err)
	}
	reg.Refresh(ctx)
	want = image(reg)

	store = reopen()
	var logs logBuffer
	again := load(t, store, &logs)
	if got := image(again); !reflect.DeepEqual(got, want) {
		t.Fatalf("after the restart the registry holds\n%+v\nwant\n%+v", got, want)
	}
	if read, after := again.RecordsRead(), again.next-second; read != after {
		t.Fatalf("the restart read %d records of the peers stream, want the %d after the latest snapshot", read, after)
	}
	if strings.Contains(logs.String(), "ignored") {
		t.Fatalf("the snapshot was ignored: %s", logs.String())
	}
	// Compacting again drops the oldest snapshot and the records behind
	// the second.
	again.snapshotEvery = 1
	if err := again.Compact(ctx, store); err != nil {
		t.Fatal(err)
	}
	if tb := truncatedBefore(t, store, streams.Peers); tb != second-1 {
		t.Fatalf("truncated before %d, want %d", tb, second-1)
	}
	snaps, err := store.ReadStream(ctx, streams.PeersSnapshot, 0, 10)
	if err != nil || len(snaps) != 2 || snaps[0].Revision != 1 {
		t.Fatalf("the snapshots stream holds %d records (%v), want the latest two", len(snaps), err)
	}
	if got := image(load(t, store, nil)); !reflect.DeepEqual(got, want) {
		t.Fatalf("after a third compaction the registry holds\n%+v\nwant\n%+v", got, want)
	}
}

func TestRestartAfterCompactionKeepsEveryPeerRenameAndKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	store := openEmbedded(t, dir)
	testCompaction(t, store, true, func() compactStore {
		store.Close()
		return openEmbedded(t, dir)
	})
}

func TestRestartAfterCompactionOnEventStoreDB(t *testing.T) {
	t.Parallel()
	srv := fakestreams.StartServer(t, fakestreams.Options{Profile: "24.10"})
	store := openESDB(t, srv)
	testCompaction(t, store, false, func() compactStore {
		_ = store.Close()
		return openESDB(t, srv)
	})
}

// A snapshot that does not match the store (each way one can fail to) is
// ignored with a warning, and the whole stream is read: the snapshot's
// made-up peer never appears.
func TestABadPeersSnapshotIsIgnored(t *testing.T) {
	t.Parallel()
	fake := domain.MustParseServerID("made-up.example:2289")
	cases := []struct {
		name    string
		records bool // the peers stream has records
		edit    func(s *streams.PeersSnapshotRecord, length uint64)
		data    string // raw data instead of the snapshot
	}{
		{name: "newer format", records: true, edit: func(s *streams.PeersSnapshotRecord, _ uint64) { s.Format = streams.SnapshotFormat + 1 }},
		{name: "later revision", records: true, edit: func(s *streams.PeersSnapshotRecord, n uint64) { s.Revision = n + 1 }},
		{name: "missing stream", edit: func(s *streams.PeersSnapshotRecord, _ uint64) { s.Revision = 3 }},
		{name: "another database", records: true, edit: func(s *streams.PeersSnapshotRecord, _ uint64) { s.DatabaseID = "another" }},
		{name: "another stream", records: true, edit: func(s *streams.PeersSnapshotRecord, _ uint64) { s.Stream = "peers-2" }},
		{name: "unreadable", records: true, data: "{not json"},
		{name: "a server ID that does not parse", records: true, edit: func(s *streams.PeersSnapshotRecord, _ uint64) {
			s.Peers[0].ServerID = "no port"
		}},
		{name: "a server naming no peer", records: true, edit: func(s *streams.PeersSnapshotRecord, _ uint64) {
			s.Servers = append(s.Servers, streams.ServerSnapshot{ServerID: "x.example:1", Peer: "nobody"})
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			store := openEmbedded(t, t.TempDir())
			db, err := streams.DatabaseID(ctx, store, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			reg := load(t, store, nil)
			if c.records {
				writeHistory(t, reg, 4, "a")
			}
			want := image(reg)
			// The snapshot says made-up.example is a peer: trusted, it
			// would show.
			lie := domain.NewPeers()
			_ = lie.Apply(domain.PeerRegistered{Peer: "pfake", ServerID: fake}, t0)
			snap := streams.NewPeersSnapshot(db, reg.next, lie.Image())
			if c.edit != nil {
				c.edit(&snap, reg.next)
			}
			codec := streams.NewCodec(rand.Reader)
			data, err := codec.EncodeSnapshot(snap)
			if err != nil {
				t.Fatal(err)
			}
			if c.data != "" {
				data.Data = []byte(c.data)
			}
			if _, err := store.Append(ctx, streams.PeersSnapshot, eventstore.Any(), data); err != nil {
				t.Fatal(err)
			}
			var logs logBuffer
			again := load(t, store, &logs)
			if again.Knows(fake) {
				t.Fatal("the snapshot was trusted")
			}
			if got := image(again); !reflect.DeepEqual(got, want) {
				t.Fatalf("the registry holds\n%+v\nwant the stream's fold\n%+v", got, want)
			}
			if again.RecordsRead() != again.next {
				t.Fatalf("read %d records of %d", again.RecordsRead(), again.next)
			}
			if !strings.Contains(logs.String(), "level=WARN msg=\"peers snapshot ignored") {
				t.Fatalf("no warning: %q", logs.String())
			}
		})
	}
}

// A sound snapshot is trusted: the registry starts from it (its made-up
// peer shows) and reads only the records after it.
func TestAPeersSnapshotIsReadThenTheRecordsAfterIt(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	store := openEmbedded(t, t.TempDir())
	db, err := streams.DatabaseID(ctx, store, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	reg := load(t, store, nil)
	writeHistory(t, reg, 4, "a")
	covers := reg.next
	lie := domain.NewPeers()
	fake := domain.MustParseServerID("made-up.example:2289")
	_ = lie.Apply(domain.PeerRegistered{Peer: "pfake", ServerID: fake}, t0)
	data, err := reg.codec.EncodeSnapshot(streams.NewPeersSnapshot(db, covers, lie.Image()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append(ctx, streams.PeersSnapshot, eventstore.Any(), data); err != nil {
		t.Fatal(err)
	}
	after := domain.MustParseServerID("after.example:2289")
	if _, err := reg.Register(ctx, after); err != nil {
		t.Fatal(err)
	}
	again := load(t, store, nil)
	if !again.Knows(fake) || !again.Knows(after) || again.Knows(domain.MustParseServerID("a0.example:2289")) {
		t.Fatalf("peers %+v: want the snapshot's and the one after it", again.Peers())
	}
	if again.RecordsRead() != 1 || again.next != covers+1 {
		t.Fatalf("read %d records up to %d, want 1 up to %d", again.RecordsRead(), again.next, covers+1)
	}
}

// A peers stream truncated with no snapshot to start from is refused: a
// fold of what is left would lose peers.
func TestAPeersStreamTruncatedWithoutASnapshotIsRefused(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	store := openEmbedded(t, t.TempDir())
	writeHistory(t, load(t, store, nil), 4, "a")
	if err := store.Truncate(ctx, streams.Peers, 3); err != nil {
		t.Fatal(err)
	}
	_, err := Load(ctx, store, streams.NewCodec(rand.Reader), rand.Reader, nil)
	if err == nil || !strings.Contains(err.Error(), "starts at 3") {
		t.Fatalf("Load = %v, want the truncation named", err)
	}
}
