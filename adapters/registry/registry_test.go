package registry

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// openRegistry reads the registry of the store in dir; close closes the
// store (once).
func openRegistry(t *testing.T, dir string) (reg *Registry, close func()) {
	t.Helper()
	store, err := embedded.Open(t.Context(), dir, embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	close = func() { once.Do(func() { store.Close() }) }
	t.Cleanup(close)
	if reg, err = Load(t.Context(), store, streams.NewCodec(rand.Reader), rand.Reader, nil); err != nil {
		t.Fatal(err)
	}
	return reg, close
}

// Given a key learned while verifying a server's first call (it is not a
// peer yet), when that call registers it, then the key is recorded with it
// and known after a restart; a stranger that never becomes a peer records
// nothing.
func TestRegistryRecordsTheKeyOfAPeerMetByItsOwnCall(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := context.Background()
	store, err := embedded.Open(ctx, dir, embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := Load(ctx, store, streams.NewCodec(rand.Reader), rand.Reader, nil)
	if err != nil {
		t.Fatal(err)
	}
	stranger := domain.MustParseServerID("x.example:2289")
	for _, k := range []struct {
		id   domain.ServerID
		seed byte
	}{{peerB, 1}, {stranger, 2}} {
		if err := reg.RecordKey(ctx, k.id, pubKey(k.seed)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := reg.Register(ctx, peerB); err != nil {
		t.Fatal(err)
	}
	store.Close()

	reg, _ = openRegistry(t, dir)
	keys := reg.Keys()
	if !keys[peerB].Equal(pubKey(1)) {
		t.Errorf("after a restart, B's key is %x; want the one that verified its first call", keys[peerB])
	}
	if _, ok := keys[stranger]; ok || len(keys) != 1 {
		t.Errorf("keys after a restart: %v; want B's only", keys)
	}
}

// Given a peer with a recorded key, when it is renamed (twice) and this
// server restarts, then its former IDs still have the key they had.
func TestRegistryKeepsTheKeysOfFormerIDs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := context.Background()
	reg, closeStore := openRegistry(t, dir)
	peer, err := reg.Register(ctx, peerB)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.RecordKey(ctx, peerB, pubKey(1)); err != nil {
		t.Fatal(err)
	}
	b3 := domain.MustParseServerID("b3.example:2289")
	for _, step := range []domain.PeerRename{{Peer: string(peer), Old: peerB, New: peerB2}, {Peer: string(peer), Old: peerB2, New: b3}} {
		if err := reg.RecordRename(ctx, step); err != nil {
			t.Fatal(err)
		}
	}
	if err := reg.RecordKey(ctx, b3, pubKey(3)); err != nil { // rotated after the renames
		t.Fatal(err)
	}
	want := map[domain.ServerID]byte{peerB: 1, peerB2: 1, b3: 3}
	running := reg.Keys()
	closeStore()
	reg, _ = openRegistry(t, dir)
	for name, keys := range map[string]map[domain.ServerID]ed25519.PublicKey{"running": running, "after a restart": reg.Keys()} {
		for id, seed := range want {
			if !keys[id].Equal(pubKey(seed)) {
				t.Errorf("%s: the key of %s is %x, want key %d", name, id, keys[id], seed)
			}
		}
	}
}

// Given this server renamed twice, when the registry is read again, then
// it lists every ID with the time it was taken.
func TestRegistryRemembersOwnIDsWithTheirTimes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := context.Background()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	store, err := embedded.Open(ctx, dir, embedded.Options{Clock: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := Load(ctx, store, streams.NewCodec(rand.Reader), rand.Reader, nil)
	if err != nil {
		t.Fatal(err)
	}
	a1, a2, a3 := domain.MustParseServerID("a1.example:1"), domain.MustParseServerID("a2.example:1"), domain.MustParseServerID("a3.example:1")
	for _, id := range []domain.ServerID{a1, a2, a3} {
		if err := reg.RecordOwnID(ctx, id, t0); err != nil {
			t.Fatal(err)
		}
	}
	store.Close()
	want := []domain.OwnID{{ID: a1, Since: t0}, {ID: a2, Since: t0}, {ID: a3, Since: t0}}
	reg, _ = openRegistry(t, dir)
	if got := reg.OwnIDs(); !slices.EqualFunc(got, want, func(x, y domain.OwnID) bool { return x.ID == y.ID && x.Since.Equal(y.Since) }) {
		t.Fatalf("OwnIDs after a restart: %v, want %v", got, want)
	}
}

var (
	peerB  = domain.MustParseServerID("b.example:2289")
	peerB2 = domain.MustParseServerID("b2.example:2289")
)

func pubKey(seed byte) ed25519.PublicKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, 32)).Public().(ed25519.PublicKey)
}

// A peers stream that renames a peer it never registered was not written
// by this server: the registry refuses to start on it rather than guess.
func TestRegistryRefusesARenameOfAPeerNeverRegistered(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, err := embedded.Open(ctx, t.TempDir(), embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	codec := streams.NewCodec(rand.Reader)
	data, err := codec.EncodePeers(domain.PeerRenamed{Peer: "px", Old: peerB, New: peerB2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append(ctx, streams.Peers, eventstore.NoStream(), data...); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(ctx, store, codec, rand.Reader, nil); !errors.Is(err, domain.ErrUnregisteredPeer) {
		t.Fatalf("Load = %v, want ErrUnregisteredPeer", err)
	}
}

// What the fold would refuse is not appended: a rename or a notice about a
// peer that is not registered.
func TestRegistryRecordsNothingAboutAPeerNotRegistered(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	reg, _ := openRegistry(t, t.TempDir())
	if err := reg.RecordRename(ctx, domain.PeerRename{Peer: "px", Old: peerB, New: peerB2}); !errors.Is(err, domain.ErrUnregisteredPeer) {
		t.Fatalf("RecordRename = %v", err)
	}
	if err := reg.RecordNotified(ctx, "px", peerB2); !errors.Is(err, domain.ErrUnregisteredPeer) {
		t.Fatalf("RecordNotified = %v", err)
	}
	if reg.next != 0 {
		t.Fatalf("%d records appended", reg.next)
	}
}

// Given two registries on one store (replicas of one server), when both
// register peers, the one who writes second rereads the peers stream and
// tries again: every registration succeeds, a peer both registered has one
// peer ID, and Refresh shows each what the other registered.
func TestRegistriesSharingAStoreRegisterEveryPeerOnce(t *testing.T) {
	t.Parallel()
	store, err := embedded.Open(t.Context(), t.TempDir(), embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	var regs [2]*Registry
	for i := range regs {
		if regs[i], err = Load(t.Context(), store, streams.NewCodec(rand.Reader), rand.Reader, nil); err != nil {
			t.Fatal(err)
		}
	}
	shared := domain.MustParseServerID("both.example:2289")
	ids := [2]domain.PeerID{}
	for i, reg := range regs {
		for j := range 5 {
			if _, err := reg.Register(t.Context(), domain.MustParseServerID(fmt.Sprintf("p%d-%d.example:2289", i, j))); err != nil {
				t.Fatalf("registry %d: %v", i, err)
			}
		}
		if ids[i], err = reg.Register(t.Context(), shared); err != nil {
			t.Fatalf("registry %d, the shared peer: %v", i, err)
		}
	}
	if ids[0] != ids[1] {
		t.Fatalf("the shared peer has two IDs: %s and %s", ids[0], ids[1])
	}
	regs[0].Refresh(t.Context())
	if n := len(regs[0].Peers()); n != 11 {
		t.Fatalf("after Refresh the first registry knows %d peers, want 11", n)
	}
}

// Given peer B with a recorded key, when a server that is no peer calls
// signing with B's key (B renamed itself, and this server's store went back
// to before it accepted the rename), then its first call is refused as
// from an unknown peer, saying to announce the rename, and nothing is
// registered; a stranger with a key of its own registers, and this
// server's own send to B's new ID (which knows no key) is not refused.
func TestRegistryRefusesAStrangerSigningWithAPeersKey(t *testing.T) {
	t.Parallel()
	reg, _ := openRegistry(t, t.TempDir())
	ctx := context.Background()
	if err := reg.RecordKey(ctx, peerB, pubKey(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Register(ctx, peerB); err != nil {
		t.Fatal(err)
	}
	renamedB := domain.MustParseServerID("b2.example:2289")
	reg.KeyFetched(ctx, renamedB, pubKey(1))
	_, err := reg.RegisterCaller(ctx, domain.Caller{ServerID: renamedB, Extended: true})
	if !errors.Is(err, domain.ErrUnknownPeer) || !strings.Contains(err.Error(), "announce it again, signed as "+peerB.String()) {
		t.Fatalf("B's new ID's first call: %v; want unknown peer, saying to announce the rename signed as %s", err, peerB)
	}
	if err := reg.StrangerCheck(renamedB); !errors.Is(err, domain.ErrUnknownPeer) {
		t.Fatalf("StrangerCheck(B's new ID) = %v", err)
	}
	if reg.Knows(renamedB) {
		t.Fatal("the refused call registered B's new ID")
	}
	other := domain.MustParseServerID("c.example:2289")
	reg.KeyFetched(ctx, other, pubKey(3))
	if err := reg.StrangerCheck(other); err != nil {
		t.Fatalf("StrangerCheck(a stranger with its own key) = %v", err)
	}
	if _, err := reg.RegisterCaller(ctx, domain.Caller{ServerID: other, Extended: true}); err != nil {
		t.Fatalf("a stranger with its own key: %v", err)
	}
	if _, err := reg.Register(ctx, renamedB); err != nil {
		t.Fatalf("this server's own send to B's new ID: %v", err)
	}
}

// Given peer B that accepted this server's current ID, when B shows it lost
// that (SignAs a former ID), then this server signs as that ID toward B,
// counts B as not knowing the current ID and due a notice, until B accepts
// the current ID again.
func TestRegistrySignsAsAFormerIDTowardAPeerThatLostOurRename(t *testing.T) {
	t.Parallel()
	reg, _ := openRegistry(t, t.TempDir())
	ctx := context.Background()
	oldID, newID := domain.MustParseServerID("a.example:2289"), domain.MustParseServerID("a2.example:2289")
	if err := reg.RecordOwnID(ctx, oldID, time.Now()); err != nil {
		t.Fatal(err)
	}
	peer, err := reg.Register(ctx, peerB)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.RenameOwn(ctx, newID, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := reg.RecordNotified(ctx, peer, newID); err != nil {
		t.Fatal(err)
	}
	if got := reg.IDFor(peerB); got != newID || !reg.KnowsOurID(peer) || len(reg.NoticesDue()) != 0 {
		t.Fatalf("after B accepted: signing as %s, knows %v, due %v", got, reg.KnowsOurID(peer), reg.NoticesDue())
	}
	reg.SignAs(peer, oldID)
	if got, due := reg.IDFor(peerB), reg.NoticesDue(); got != oldID || reg.KnowsOurID(peer) || len(due) != 1 || due[0].ID != peer {
		t.Fatalf("after B lost it: signing as %s, knows %v, due %v; want %s, false, B", got, reg.KnowsOurID(peer), due, oldID)
	}
	if err := reg.RecordNotified(ctx, peer, newID); err != nil {
		t.Fatal(err)
	}
	if got := reg.IDFor(peerB); got != newID || !reg.KnowsOurID(peer) || len(reg.NoticesDue()) != 0 {
		t.Fatalf("after B accepted again: signing as %s, knows %v", got, reg.KnowsOurID(peer))
	}
}
