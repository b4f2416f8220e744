package streams

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"reflect"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/domain"
)

func peersKey(seed byte) ed25519.PublicKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, 32)).Public().(ed25519.PublicKey)
}

// A registry snapshot gives back the fold's image, every field of every
// peer and own ID; a field added to domain.PeerEntry or domain.OwnID fails
// this until the snapshot carries it.
func TestAPeersSnapshotKeepsEveryFieldOfTheFold(t *testing.T) {
	t.Parallel()
	if n, m := reflect.TypeFor[domain.PeerEntry]().NumField(), reflect.TypeFor[domain.OwnID]().NumField(); n != 6 || m != 2 {
		t.Fatalf("domain.PeerEntry has %d fields, domain.OwnID %d: carry the new ones in PeersSnapshotRecord, then count them here", n, m)
	}
	a, b, b2, us := domain.MustParseServerID("a.example:1"), domain.MustParseServerID("b.example:1"),
		domain.MustParseServerID("b2.example:1"), domain.MustParseServerID("us.example:1")
	img := domain.PeersImage{
		Peers: []domain.PeerEntry{
			{ID: "pa", ServerID: a},
			{ID: "pb", ServerID: b2, Former: []domain.ServerID{b}, Key: peersKey(1),
				FormerKeys: map[domain.ServerID]ed25519.PublicKey{b: peersKey(2)}, KnowsUsAs: us},
		},
		Servers: map[domain.ServerID]domain.PeerID{a: "pa", b: "pb", b2: "pb"},
		OwnIDs:  []domain.OwnID{{ID: us, Since: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)}},
	}
	d, err := NewCodec(rand.Reader).EncodeSnapshot(NewPeersSnapshot("db1", 7, img))
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodePeersSnapshot(recorded(d))
	if err != nil {
		t.Fatal(err)
	}
	got, err := back.Image()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, img) {
		t.Fatalf("the snapshot gave back\n%+v\nof the fold\n%+v", got, img)
	}
	if err := back.Check("db1", Peers, 7, true); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if _, err := DecodePeersSnapshot(recorded(eventstore.EventData{Type: "Other", Data: d.Data})); err == nil {
		t.Fatal("a record of another type read as a peers snapshot")
	}
}

// A snapshot record may have been written by anything sharing the store:
// reading one never panics, and it gives either an error or a fold.
func FuzzPeersSnapshot(f *testing.F) {
	img := domain.PeersImage{
		Peers:   []domain.PeerEntry{{ID: "pb", ServerID: domain.MustParseServerID("b.example:1"), Key: peersKey(1)}},
		Servers: map[domain.ServerID]domain.PeerID{domain.MustParseServerID("b.example:1"): "pb"},
	}
	d, err := NewCodec(rand.Reader).EncodeSnapshot(NewPeersSnapshot("db1", 3, img))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(d.Data)
	f.Add([]byte(`{"peers":[{"peer_id":"p","server_id":"x:1","former_keys":{"no port":"AA=="}}],"servers":[{"server_id":"x:1","peer_id":"q"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		snap, err := DecodePeersSnapshot(eventstore.RecordedEvent{Stream: PeersSnapshot, Type: TypeSnapshot, Data: data})
		if err != nil {
			return
		}
		img, err := snap.Image()
		if err != nil {
			return
		}
		if p, err := domain.PeersFromImage(img); err == nil {
			_ = p.List()
			_ = p.Keys()
		}
	})
}
