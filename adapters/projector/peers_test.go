package projector

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb/fakestreams"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	"github.com/harmony-postbox/postbox/projections"
)

// compactedStore is a store whose peers stream retention compacts.
type compactedStore interface {
	registry.Store
	registry.Truncater
	LiveStore
	TruncatedBefore(ctx context.Context, stream string) (uint64, error)
	ReadStreamBackward(ctx context.Context, stream string, limit int) ([]eventstore.RecordedEvent, error)
}

// registerMany registers n peers named prefix0.example... at once (so in
// few appends).
func registerMany(t *testing.T, reg *registry.Registry, prefix string, n int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			if _, err := reg.Register(t.Context(), domain.MustParseServerID(fmt.Sprintf("%s%d.example:2289", prefix, i))); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// compactedHistory writes, through a registry, a peers stream compacted
// behind the older of two snapshots, with a rename before the compaction
// and one after, of peers registered in the records removed. It returns
// where the peers stream was truncated.
func compactedHistory(t *testing.T, store compactedStore) uint64 {
	t.Helper()
	ctx := t.Context()
	reg, err := registry.Load(ctx, store, streams.NewCodec(rand.Reader), rand.Reader, nil)
	if err != nil {
		t.Fatal(err)
	}
	registerMany(t, reg, "a", registry.SnapshotEvery+4)
	rename := func(from, to string) {
		t.Helper()
		old, renamed := domain.MustParseServerID(from), domain.MustParseServerID(to)
		peer, _ := reg.Lookup(old)
		if err := reg.RecordRename(ctx, domain.PeerRename{Peer: string(peer), Old: old, New: renamed}); err != nil {
			t.Fatal(err)
		}
	}
	rename("a1.example:2289", "a1-renamed.example:2289")
	for range 2 {
		if err := reg.Compact(ctx, store); err != nil {
			t.Fatal(err)
		}
		registerMany(t, reg, "b", registry.SnapshotEvery+4)
	}
	rename("a2.example:2289", "a2-renamed.example:2289")
	tb, err := store.TruncatedBefore(ctx, streams.Peers)
	if err != nil || tb == 0 {
		t.Fatalf("the peers stream truncated before %d (%v), want compacted", tb, err)
	}
	return tb
}

// wantRegistry checks that peers lists every peer of compactedHistory, the
// renamed ones under their new IDs, and more registered before it.
func wantRegistry(t *testing.T, peers []projections.PeerView, more int) {
	t.Helper()
	ids := map[string]bool{}
	for _, p := range peers {
		ids[p.ServerID] = true
	}
	if n := 2*(registry.SnapshotEvery+4) + more; len(peers) != n {
		t.Fatalf("%d peers, want %d", len(peers), n)
	}
	for _, id := range []string{"a0.example:2289", "a1-renamed.example:2289", "a2-renamed.example:2289", "b3.example:2289"} {
		if !ids[id] {
			t.Fatalf("no peer %s", id)
		}
	}
}

// testAuditOfACompactedPeersStream: on a store whose peers stream
// retention compacted, the audit starts from the older snapshot, checks
// the later one against the records, finds nothing wrong, says where it
// started, and lists every peer; a snapshot that lies is found.
func testAuditOfACompactedPeersStream(t *testing.T, store compactedStore) {
	ctx := t.Context()
	tb := compactedHistory(t, store)
	rep := audit(t, store, AuditOptions{})
	if !rep.Clean() {
		t.Fatalf("violations %v", rep.Violations)
	}
	if len(rep.Retained) != 1 || rep.Retained[0] != (projections.Retained{Stream: streams.Peers, From: tb + 1, FromSnapshot: true}) {
		t.Fatalf("retained %+v, want the peers stream checked from %d, from a snapshot", rep.Retained, tb+1)
	}
	if rep.SnapshotsChecked != 1 {
		t.Fatalf("%d snapshots checked, want the latest peers snapshot", rep.SnapshotsChecked)
	}
	views := make([]projections.PeerView, 0, len(rep.Peers))
	for _, p := range rep.Peers {
		views = append(views, projections.PeerView{ServerID: p.ServerID, PeerID: p.PeerID})
	}
	wantRegistry(t, views, 0)

	// A snapshot whose fold is not the records'.
	db, err := streams.DatabaseID(ctx, store, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	last, err := store.ReadStreamBackward(ctx, streams.Peers, 1)
	if err != nil {
		t.Fatal(err)
	}
	lie := domain.NewPeers()
	_ = lie.Apply(domain.PeerRegistered{Peer: "pfake", ServerID: domain.MustParseServerID("fake.example:1")}, last[0].Created)
	data, err := streams.NewCodec(rand.Reader).EncodeSnapshot(streams.NewPeersSnapshot(db, last[0].Revision+1, lie.Image()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append(ctx, streams.PeersSnapshot, eventstore.Any(), data); err != nil {
		t.Fatal(err)
	}
	rep = audit(t, store, AuditOptions{})
	if len(rep.Violations) != 1 || rep.Violations[0].Rule != projections.RuleSnapshotMatchesFold || rep.Violations[0].Stream != streams.PeersSnapshot {
		t.Fatalf("violations %v, want the lying snapshot found", rep.Violations)
	}
}

func TestAuditOfACompactedPeersStream(t *testing.T) {
	t.Parallel()
	testAuditOfACompactedPeersStream(t, openStore(t, t.TempDir()))
}

func TestAuditOfACompactedPeersStreamOnEventStoreDB(t *testing.T) {
	t.Parallel()
	srv := fakestreams.StartServer(t, fakestreams.Options{Profile: "24.10"})
	store, err := esdb.Open(t.Context(), srv.ConnString()+"&maxDiscoverAttempts=2&discoveryInterval=20", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	testAuditOfACompactedPeersStream(t, store)
}

// A peers stream truncated with no snapshot to start from is a finding.
func TestAPeersStreamTruncatedWithoutASnapshotIsAFinding(t *testing.T) {
	t.Parallel()
	store := newHistory(t).seen("pa", "a.example:2289").seen("pb", "b.example:2289").
		renamed("pb", "b.example:2289", "b2.example:2289").store()
	if err := store.Truncate(t.Context(), streams.Peers, 2); err != nil {
		t.Fatal(err)
	}
	rep := audit(t, store, AuditOptions{})
	if len(rep.Violations) == 0 || rep.Violations[0].Rule != projections.RuleTruncatedBehindSnapshot || rep.Violations[0].Stream != streams.Peers {
		t.Fatalf("violations %v, want the truncation first", rep.Violations)
	}
}

// Given a store whose peers stream was compacted, when the projections
// follow it from the start (no checkpoint), then they start their registry
// from the snapshot and know every peer, renames after the compaction
// included, with no record refused.
func TestLiveProjectionsStartFromTheRegistrySnapshot(t *testing.T) {
	t.Parallel()
	store := openStore(t, t.TempDir())
	compactedHistory(t, store)
	var logs syncBuffer
	l := NewLive(store, "", bufferLogger(&logs))
	startLive(t, l)
	s, err := l.Current(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	wantRegistry(t, s.Peers(), 0)
	if strings.Contains(logs.String(), "unreadable") || !strings.Contains(logs.String(), "registry started from") {
		t.Fatalf("log: %s", logs.String())
	}
}

// Given projections checkpointed when three peers were registered, when
// the peers stream is then compacted past the checkpoint and the
// projections resume from it, they start their registry from the snapshot:
// the peers registered in the removed records are known.
func TestLiveProjectionsResumingFromAnOlderCheckpointStartFromTheRegistrySnapshot(t *testing.T) {
	t.Parallel()
	store := openStore(t, t.TempDir())
	path := filepath.Join(t.TempDir(), "projections.checkpoint")
	reg, err := registry.Load(t.Context(), store, streams.NewCodec(rand.Reader), rand.Reader, nil)
	if err != nil {
		t.Fatal(err)
	}
	registerMany(t, reg, "early", 3)
	l := NewLive(store, path, testLogger(t))
	stop := startLive(t, l)
	if _, err := l.Current(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil { // writes the checkpoint
		t.Fatal(err)
	}
	compactedHistory(t, store)
	resumed := NewLive(store, path, testLogger(t))
	startLive(t, resumed)
	s, err := resumed.Current(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	wantRegistry(t, s.Peers(), 3)
}
