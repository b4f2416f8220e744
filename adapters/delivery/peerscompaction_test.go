package delivery

import (
	"fmt"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// Given retention on and more than two snapshots' worth of registrations,
// the engine's retention compacts the peers stream behind a snapshot of
// the registry; after a restart every peer is known under its current ID,
// and the start's log line counts the peers records read (those after the
// latest snapshot) among its records.
func TestRetentionCompactsThePeersStream(t *testing.T) {
	t.Parallel()
	w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: retainConfig(20 * time.Millisecond), logs: &logBuffer{}}
	w.open()
	reg := w.engine.registry
	const round = registry.SnapshotEvery + 4
	register := func(prefix string) {
		var wg sync.WaitGroup
		for i := range round {
			wg.Go(func() {
				if _, err := reg.Register(t.Context(), domain.MustParseServerID(fmt.Sprintf("%s%d.example:2289", prefix, i))); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
	}
	register("a")
	eventually(t, "a snapshot of the registry", func() bool {
		recs, err := w.store.ReadStream(t.Context(), streams.PeersSnapshot, 0, 1)
		return err == nil && len(recs) == 1
	})
	register("b")
	eventually(t, "the peers stream compacted", func() bool { return w.truncatedBefore(streams.Peers) > 0 })
	old, renamed := domain.MustParseServerID("a1.example:2289"), domain.MustParseServerID("a1-renamed.example:2289")
	peer, _ := reg.Lookup(old)
	if err := reg.RecordRename(t.Context(), domain.PeerRename{Peer: string(peer), Old: old, New: renamed}); err != nil {
		t.Fatal(err)
	}

	w.restart()
	reg = w.engine.registry
	if n := len(reg.Peers()); n != 2*round {
		t.Fatalf("%d peers after the restart, want %d", n, 2*round)
	}
	if id, ok := reg.ServerID(peer); !ok || id != renamed {
		t.Fatalf("the renamed peer is %s after the restart, want %s", id, renamed)
	}
	if _, ok := reg.Lookup(domain.MustParseServerID("a0.example:2289")); !ok {
		t.Fatal("a peer registered in the removed records is unknown after the restart")
	}
	m := regexp.MustCompile(`msg="delivery state rebuilt" peers=(\d+) records=(\d+) registry_records=(\d+)`).FindAllStringSubmatch(w.logs.String(), -1)
	if len(m) != 2 {
		t.Fatalf("%d start log lines, want 2", len(m))
	}
	records, _ := strconv.Atoi(m[1][2])
	registryRecords, _ := strconv.Atoi(m[1][3])
	if want := int(reg.RecordsRead()); registryRecords != want || records < want || want == 0 || want > 2*registry.SnapshotEvery {
		t.Fatalf("the restart logged records=%d registry_records=%d; the registry read %d (want some, at most %d)",
			records, registryRecords, want, 2*registry.SnapshotEvery)
	}
}
