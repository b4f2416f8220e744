package noncefile

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/domain"
)

func nonce(i int) []byte {
	n := bytes.Repeat([]byte{byte(i)}, domain.NonceSize)
	n[0], n[1] = byte(i>>8), 0xAA
	return n
}

func key(i int) [domain.NonceSize]byte { return [domain.NonceSize]byte(nonce(i)) }

func TestRecordSurvivesAKill(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "data", "nonces")
	now := time.Unix(1_700_000_000, 0)
	clock := func() time.Time { return now }
	log := slog.New(slog.DiscardHandler)
	a := domain.MustParseServerID("a.example:2289")

	// Given nonces recorded, some expiring sooner than others,
	f, prev, err := Open(path, clock, log)
	if err != nil || len(prev) != 0 {
		t.Fatalf("a new record: %v, %v", prev, err)
	}
	for i := range 10 {
		if err := f.RecordNonce(a, nonce(i), now.Add(time.Duration(i+1)*10*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	// when the process dies without closing the file, and another opens it
	// later,
	now = now.Add(55 * time.Second)
	g, prev, err := Open(path, clock, log)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	// then it finds the nonces that have not expired yet, with their
	// expiries,
	if len(prev) != 5 {
		t.Errorf("%d nonces after a reopen, want the 5 not expired: %v", len(prev), prev)
	}
	for i := 5; i < 10; i++ {
		if exp := prev[key(i)]; !exp.Equal(time.Unix(1_700_000_000, 0).Add(time.Duration(i+1) * 10 * time.Second)) {
			t.Errorf("nonce %d: expiry %v", i, exp)
		}
	}
	// and records more without losing them.
	if err := g.RecordNonce(a, nonce(99), now.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	_, prev, err = Open(path, clock, log)
	if err != nil || len(prev) != 6 {
		t.Errorf("after one more: %d nonces, %v", len(prev), err)
	}
	f.Close()
}

func TestRingGrowsOnlyWhenFull(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "nonces")
	now := time.Unix(1_700_000_000, 0)
	f, _, err := Open(path, func() time.Time { return now }, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	a := domain.MustParseServerID("a.example:2289")
	size := func() int64 {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return st.Size()
	}
	if got := size(); got != initialRecords*recordSize {
		t.Fatalf("a new record takes %d bytes, want %d", got, initialRecords*recordSize)
	}
	// Nonces that expire as fast as they come reuse the slots.
	for i := range 3 * initialRecords {
		now = now.Add(time.Second)
		if err := f.RecordNonce(a, nonce(i), now.Add(time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if got := size(); got != initialRecords*recordSize {
		t.Errorf("the ring grew to %d bytes although its nonces expired", got)
	}
	// More live nonces than slots: it grows, and keeps every one.
	for i := range initialRecords + 1 {
		if err := f.RecordNonce(a, nonce(i), now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	if got := size(); got != 2*initialRecords*recordSize {
		t.Errorf("the ring holds %d bytes, want %d", got, 2*initialRecords*recordSize)
	}
	// (The last of the first nonces has a second left.)
	_, prev, err := Open(path, func() time.Time { return now }, slog.New(slog.DiscardHandler))
	if err != nil || len(prev) != initialRecords+2 {
		t.Errorf("after growing: %d live nonces, %v; want %d", len(prev), err, initialRecords+2)
	}
}

// BenchmarkRecordNonce is the cost a persisted nonce adds to each accepted
// federation request (compare with the signature check, tens of µs).
func BenchmarkRecordNonce(b *testing.B) {
	now := time.Unix(1_700_000_000, 0)
	f, _, err := Open(filepath.Join(b.TempDir(), "nonces"), func() time.Time { return now }, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	a := domain.MustParseServerID("a.example:2289")
	i := 0
	for b.Loop() {
		i++
		if err := f.RecordNonce(a, nonce(i), now.Add(time.Second)); err != nil {
			b.Fatal(err)
		}
		if i%1000 == 0 {
			now = now.Add(2 * time.Second) // let the ring reuse its slots
		}
	}
}
