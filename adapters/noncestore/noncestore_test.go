package noncestore

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb/fakestreams"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// eachStore runs f on the embedded store and on the EventStoreDB adapter
// talking to the stand-in (24.10 profile).
func eachStore(t *testing.T, f func(t *testing.T, store eventstore.Store)) {
	t.Run("embedded", func(t *testing.T) {
		t.Parallel()
		s, err := embedded.Open(t.Context(), t.TempDir(), embedded.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		f(t, s)
	})
	t.Run("esdb-standin", func(t *testing.T) {
		t.Parallel()
		srv := fakestreams.StartServer(t, fakestreams.Options{Profile: "24.10"})
		s, err := esdb.Open(t.Context(), srv.ConnString()+"&maxDiscoverAttempts=2&discoveryInterval=20", slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		f(t, s)
	})
}

// clock is a settable clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newClock() *clock { return &clock{now: time.Date(2026, 11, 29, 12, 0, 30, 0, time.UTC)} }

// counting counts a store's calls.
type counting struct {
	Store
	appends, reads, deletes atomic.Int64
	fail                    atomic.Bool
}

func (c *counting) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	c.appends.Add(1)
	if c.fail.Load() {
		return eventstore.AppendResult{}, eventstore.ErrClosed
	}
	return c.Store.Append(ctx, stream, expected, events...)
}

func (c *counting) ReadStream(ctx context.Context, stream string, from uint64, limit int) ([]eventstore.RecordedEvent, error) {
	c.reads.Add(1)
	return c.Store.ReadStream(ctx, stream, from, limit)
}

func (c *counting) Delete(ctx context.Context, stream string, expected eventstore.ExpectedRevision) error {
	c.deletes.Add(1)
	return c.Store.Delete(ctx, stream, expected)
}

func open(store Store, c *clock) *Ledger {
	l, previous := Open(store, streams.NewCodec(rand.Reader), c.Now, 5*time.Second, slog.New(slog.DiscardHandler))
	if len(previous) != 0 {
		panic("previous nonces from a store ledger")
	}
	return l
}

type peerKeys struct{ key ed25519.PublicKey }

func (k peerKeys) Key(context.Context, domain.ServerID) (ed25519.PublicKey, error) { return k.key, nil }
func (k peerKeys) RefreshKey(context.Context, domain.ServerID) (ed25519.PublicKey, bool, error) {
	return nil, false, nil
}

// Two replicas' verifiers record nonces through ledgers on one store: a
// token one accepted, the other refuses as a replay, whichever came first.
func TestATokenAcceptedByOneReplicaIsRefusedByAnother(t *testing.T) {
	t.Parallel()
	eachStore(t, func(t *testing.T, store eventstore.Store) {
		ctx := t.Context()
		c := newClock()
		pub, priv, _ := ed25519.GenerateKey(rand.Reader)
		self := domain.MustParseServerID("chat.example.org:2289")
		verifier := func() *domain.Verifier {
			v := domain.NewVerifier(domain.AuthPolicy{}, c, peerKeys{pub}, domain.NewIdentity(self, domain.DefaultAudienceGrace))
			l, previous := Open(store, streams.NewCodec(rand.Reader), c.Now, 5*time.Second, slog.New(slog.DiscardHandler))
			v.PersistNonces(previous, l)
			return v
		}
		a, b := verifier(), verifier()
		token := func() domain.SignedToken {
			nonce := make([]byte, domain.NonceSize)
			_, _ = rand.Read(nonce)
			data := append([]byte("signed bytes "), nonce...)
			return domain.SignedToken{Data: data, Sig: ed25519.Sign(priv, data), Claims: domain.Claims{
				ServerID: "peer.example:2289", Time: uint64(c.Now().Unix()), Audience: self.String(), Nonce: nonce,
			}}
		}
		first, second := token(), token()
		if _, err := a.Verify(ctx, first, domain.OpPush, ""); err != nil {
			t.Fatalf("a refused a fresh token: %v", err)
		}
		if _, err := b.Verify(ctx, first, domain.OpPush, ""); !errors.Is(err, domain.ErrTokenReplayed) {
			t.Fatalf("b took a token a accepted: %v", err)
		}
		if _, err := b.Verify(ctx, second, domain.OpPull, ""); err != nil {
			t.Fatalf("b refused a fresh token: %v", err)
		}
		if _, err := a.Verify(ctx, second, domain.OpPull, ""); !errors.Is(err, domain.ErrTokenReplayed) {
			t.Fatalf("a took a token b accepted: %v", err)
		}
		// An upstream token (no nonce) costs the store nothing.
		plain := domain.SignedToken{Data: []byte("plain"), Claims: domain.Claims{ServerID: "peer.example:2289", Time: uint64(c.Now().Unix())}}
		plain.Sig = ed25519.Sign(priv, plain.Data)
		for _, v := range []*domain.Verifier{a, b} {
			if _, err := v.Verify(ctx, plain, domain.OpPush, ""); err != nil {
				t.Fatalf("an upstream token: %v", err)
			}
		}
	})
}

// Three replicas offered the same nonces at once: each is accepted once.
func TestReplicasRacingOnTheSameNoncesAcceptEachOnce(t *testing.T) {
	t.Parallel()
	eachStore(t, func(t *testing.T, store eventstore.Store) {
		c := newClock()
		ledgers := []*Ledger{open(store, c), open(store, c), open(store, c)}
		server := domain.MustParseServerID("peer.example:2289")
		expiry := c.Now().Add(time.Minute)
		nonces := make([][]byte, 100)
		for i := range nonces {
			nonces[i] = make([]byte, domain.NonceSize)
			_, _ = rand.Read(nonces[i])
		}
		accepted := make([]atomic.Int32, len(nonces))
		var wg sync.WaitGroup
		for _, l := range ledgers {
			wg.Go(func() {
				for i, n := range nonces {
					err := l.RecordNonce(server, n, expiry)
					switch {
					case err == nil:
						accepted[i].Add(1)
					case !errors.Is(err, ErrReplayed):
						t.Errorf("nonce %d: %v", i, err)
					}
				}
			})
		}
		wg.Wait()
		for i := range accepted {
			if n := accepted[i].Load(); n != 1 {
				t.Fatalf("nonce %d accepted %d times", i, n)
			}
		}
		// The same nonce from another server is another token.
		if err := ledgers[0].RecordNonce(domain.MustParseServerID("other.example:2289"), nonces[0], expiry); err != nil {
			t.Fatalf("another server's token with the same nonce: %v", err)
		}
	})
}

// The cost per inbound call: one append when no other replica wrote to the
// nonce's stream since, and no read.
func TestAcceptingANonceCostsOneAppend(t *testing.T) {
	t.Parallel()
	eachStore(t, func(t *testing.T, store eventstore.Store) {
		c := newClock()
		cs := &counting{Store: store}
		l := open(cs, c)
		server := domain.MustParseServerID("peer.example:2289")
		for i := range 64 {
			n := make([]byte, domain.NonceSize)
			_, _ = rand.Read(n)
			if err := l.RecordNonce(server, n, c.Now().Add(time.Minute)); err != nil {
				t.Fatalf("nonce %d: %v", i, err)
			}
		}
		if a, r := cs.appends.Load(), cs.reads.Load(); a != 64 || r != 0 {
			t.Fatalf("64 nonces took %d appends and %d reads; want 64 and 0", a, r)
		}
		// Another replica's first nonce in a stream this one wrote to: a
		// conflict, a read, and a second append.
		other := &counting{Store: store}
		n := make([]byte, domain.NonceSize)
		for i := range shards {
			n[0] = byte(i)
			_, _ = rand.Read(n[1:])
			if err := open(other, c).RecordNonce(server, n, c.Now().Add(time.Minute)); err != nil {
				t.Fatal(err)
			}
		}
		if a, r := other.appends.Load(), other.reads.Load(); a > 2*shards || r > shards {
			t.Fatalf("%d first nonces took %d appends and %d reads", shards, a, r)
		}
	})
}

func TestTheStreamsOfExpiredNoncesAreDeleted(t *testing.T) {
	t.Parallel()
	eachStore(t, func(t *testing.T, store eventstore.Store) {
		ctx := t.Context()
		c := newClock()
		l := open(store, c)
		server := domain.MustParseServerID("peer.example:2289")
		n := make([]byte, domain.NonceSize)
		expiry := c.Now().Add(time.Minute)
		if err := l.RecordNonce(server, n, expiry); err != nil {
			t.Fatal(err)
		}
		stream := streams.Nonces(expiry.Unix()/60, 0)
		if recs, err := store.ReadStream(ctx, stream, 0, 10); err != nil || len(recs) != 1 {
			t.Fatalf("%s: %d records, %v", stream, len(recs), err)
		}
		// Two minutes past the slot's end the stream is kept: replicas'
		// clocks may differ.
		c.advance(3 * time.Minute)
		n[0] = 1
		if err := l.RecordNonce(server, n, c.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if recs, err := store.ReadStream(ctx, stream, 0, 10); err != nil || len(recs) != 1 {
			t.Fatalf("%s deleted too soon: %d records, %v", stream, len(recs), err)
		}
		c.advance(time.Minute)
		n[0] = 2
		if err := l.RecordNonce(server, n, c.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if _, err := store.ReadStream(ctx, stream, 0, 10); !errors.Is(err, eventstore.ErrStreamDeleted) && !errors.Is(err, eventstore.ErrStreamNotFound) {
			t.Fatalf("%s after its tokens expired: %v", stream, err)
		}
		// A replica whose clock is behind, still taking a token of that
		// minute, is refused: it fails safe.
		late := open(store, &clock{now: expiry.Add(-time.Second)})
		fresh := make([]byte, domain.NonceSize) // shard 0, as the deleted stream
		fresh[1] = 9
		if err := late.RecordNonce(server, fresh, expiry); err == nil {
			t.Fatal("a nonce went into a deleted stream")
		}
	})
}

func TestANonceThatCannotBeRecordedIsRefused(t *testing.T) {
	t.Parallel()
	eachStore(t, func(t *testing.T, store eventstore.Store) {
		cs := &counting{Store: store}
		cs.fail.Store(true)
		l := open(cs, newClock())
		err := l.RecordNonce(domain.MustParseServerID("peer.example:2289"), make([]byte, domain.NonceSize), newClock().Now().Add(time.Minute))
		if err == nil || errors.Is(err, ErrReplayed) || !errors.Is(err, eventstore.ErrClosed) {
			t.Fatalf("RecordNonce on a failing store: %v", err)
		}
	})
}

// A benchmark-style figure for the report: the time one accepted nonce
// takes on each store (go test -run XXX -bench . ./adapters/noncestore).
func BenchmarkRecordNonce(b *testing.B) {
	for _, name := range []string{"embedded", "esdb-standin"} {
		b.Run(name, func(b *testing.B) {
			var store eventstore.Store
			var err error
			if name == "embedded" {
				store, err = embedded.Open(b.Context(), b.TempDir(), embedded.Options{})
			} else {
				srv := fakestreams.StartServer(b, fakestreams.Options{Profile: "24.10"})
				store, err = esdb.Open(b.Context(), srv.ConnString()+"&maxDiscoverAttempts=2&discoveryInterval=20", slog.New(slog.DiscardHandler))
			}
			if err != nil {
				b.Fatal(err)
			}
			defer store.Close()
			c := newClock()
			l := open(store, c)
			server := domain.MustParseServerID("peer.example:2289")
			n := make([]byte, domain.NonceSize)
			b.ResetTimer()
			for i := range b.N {
				copy(n, fmt.Sprintf("%016d", i))
				if err := l.RecordNonce(server, n, c.Now().Add(time.Minute)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
