package domain

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestIdempotencyKeys(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	ev, other := [32]byte{1}, [32]byte{2}
	given := func(sends ...KeyedSend) *SendKeys {
		k := NewSendKeys(time.Hour)
		for _, s := range sends {
			k.Remember(s)
		}
		return k
	}
	first := KeyedSend{Key: "k1", Peer: "p1", Digest: ev, Seq: 41, At: t0}

	t.Run("an unknown key is not found", func(t *testing.T) {
		if _, found, err := given().Check("k1", "p1", ev, t0); found || err != nil {
			t.Fatalf("found %v, %v", found, err)
		}
	})
	t.Run("a retry gets the first answer", func(t *testing.T) {
		seq, found, err := given(first).Check("k1", "p1", ev, t0.Add(time.Hour))
		if !found || err != nil || seq != 41 {
			t.Fatalf("got %d, %v, %v; want 41", seq, found, err)
		}
	})
	t.Run("the same key with another event or peer is refused", func(t *testing.T) {
		for _, c := range []struct {
			peer   string
			digest [32]byte
		}{{"p1", other}, {"p2", ev}} {
			_, found, err := given(first).Check("k1", c.peer, c.digest, t0)
			if found || !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "sequence 41") {
				t.Fatalf("peer %s: found %v, %v; want not found and ErrInvalidArgument naming the first send", c.peer, found, err)
			}
		}
	})
	t.Run("a key is forgotten after the window, oldest first", func(t *testing.T) {
		k := given(first, KeyedSend{Key: "k2", Peer: "p1", Digest: other, Seq: 42, At: t0.Add(30 * time.Minute)})
		if _, found, _ := k.Check("k1", "p1", ev, t0.Add(time.Hour+time.Second)); found {
			t.Fatal("k1 still remembered past the window")
		}
		if seq, found, _ := k.Check("k2", "p1", other, t0.Add(time.Hour+time.Second)); !found || seq != 42 {
			t.Fatal("k2 forgotten inside its window")
		}
		if k.Len() != 1 {
			t.Fatalf("%d keys remembered, want 1", k.Len())
		}
	})
	t.Run("a key remembered again keeps its first answer", func(t *testing.T) {
		k := given(first, KeyedSend{Key: "k1", Peer: "p1", Digest: ev, Seq: 99, At: t0})
		if seq, _, _ := k.Check("k1", "p1", ev, t0); seq != 41 {
			t.Fatalf("got %d, want 41", seq)
		}
	})
}

func TestIdempotencyKeyForm(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"a", "3f0c8c1e-4a5b-4c1d-9e1f-0a1b2c3d4e5f", strings.Repeat("k", 128), "~!"} {
		if err := CheckIdempotencyKey(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", strings.Repeat("k", 129), "a b", "tab\t", "é", "\x7f"} {
		if err := CheckIdempotencyKey(bad); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%q: %v, want ErrInvalidArgument", bad, err)
		}
	}
}
