package delivery

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/hrpc"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// registryFaultWorld is a world whose registry, as well as its engine,
// stands on a store that fails what the returned faults is told to.
func registryFaultWorld(t *testing.T, cfg Config) (*world, *faults) {
	t.Helper()
	w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: cfg, logs: &logBuffer{}}
	ctx := context.Background()
	store, err := embedded.Open(ctx, w.dir, embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	w.store = store
	f := &faults{Store: store}
	codec := streams.NewCodec(rand.Reader)
	reg, err := registry.Load(ctx, f, codec, rand.Reader, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.engine = New(w.cfg, f, codec, reg, w.peers, systemClock{}, slog.New(slog.NewTextHandler(w.logs, nil)), rand.Reader)
	w.stop = runEngine(t, w.engine)
	t.Cleanup(w.close)
	return w, f
}

// splitKeys knows keys (Key) apart from what servers serve (Fetch), as
// the key resolver's cache does.
type splitKeys struct {
	mu            sync.Mutex
	known, served map[domain.ServerID]ed25519.PublicKey
}

func (k *splitKeys) Key(_ context.Context, id domain.ServerID) (ed25519.PublicKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if key, ok := k.known[id]; ok {
		return key, nil
	}
	return nil, errors.New("not known")
}

func (k *splitKeys) Fetch(_ context.Context, id domain.ServerID) (ed25519.PublicKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if key, ok := k.served[id]; ok {
		return key, nil
	}
	return nil, errors.New("connection refused")
}

func (k *splitKeys) Remember(id domain.ServerID, key ed25519.PublicKey) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.known[id] = key
}

func loggedRenames(w *world, keys RenameKeys, notifier Notifier, self domain.ServerID) *Renames {
	return NewRenames(w.engine, w.engine.registry, keys, notifier, domain.NewIdentity(self, domain.DefaultAudienceGrace),
		systemClock{}, slog.New(slog.NewTextHandler(w.logs, nil)))
}

// Given a peer's rename accepted, the key resolver knows the new ID's key,
// and the rename is logged; a rename whose record fails is refused, and
// one whose key record fails is accepted with a warning.
func TestAPeerRenameTeachesTheNewIDsKeyAndIsLogged(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name    string
		fail    int // the append to the peers stream that fails (1: the rename's)
		refused bool
		warning string
	}{
		{"recorded", 0, false, ""},
		{"rename not recorded", 1, true, ""},
		{"key not recorded", 2, false, "recording a renamed peer's key failed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			w, f := registryFaultWorld(t, testConfig())
			w.send(1)
			keys := &splitKeys{known: map[domain.ServerID]ed25519.PublicKey{peerB: pubKey(1)}, served: map[domain.ServerID]ed25519.PublicKey{peerB2: pubKey(1)}}
			loggedRenames(w, keys, &fakeNotifier{}, domain.MustParseServerID("a.example:2289"))
			if c.fail > 0 {
				f.failAfter("append", streams.Peers, c.fail-1, 1)
			}
			err := w.engine.AcceptRename(t.Context(), domain.Caller{ServerID: peerB, Extended: true}, peerB2)
			if c.refused {
				if !errors.Is(err, errInjected) {
					t.Fatalf("a rename whose record fails: %v", err)
				}
				if _, _, ok := w.engine.registry.Resolve(peerB2); ok {
					t.Fatal("a refused rename is known")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if key, err := keys.Key(t.Context(), peerB2); err != nil || !key.Equal(pubKey(1)) {
				t.Fatalf("the new ID's key is not known: %v", err)
			}
			log := w.logs.String()
			if !strings.Contains(log, "peer renamed") || (c.warning != "") != strings.Contains(log, "recording a renamed peer's key failed") {
				t.Fatalf("log:\n%s", log)
			}
		})
	}
}

// Given a stopped engine, a peer's rename is refused.
func TestARenameAfterTheEngineStoppedIsRefused(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	attachRenames(w, &fakeKeys{served: map[domain.ServerID]ed25519.PublicKey{}}, &fakeNotifier{}, domain.MustParseServerID("a.example:2289"))
	w.stop()
	if err := w.engine.AcceptRename(context.Background(), domain.Caller{ServerID: peerB, Extended: true}, peerB2); !errors.Is(err, domain.ErrUnavailable) {
		t.Fatalf("rename after the stop: %v", err)
	}
}

// Given this server renamed, its identity signs with the new ID, and it is
// logged once; a rename that cannot be recorded fails and changes nothing.
func TestOurRenameChangesTheIdentityOnceRecorded(t *testing.T) {
	t.Parallel()
	w, f := registryFaultWorld(t, testConfig())
	oldID, newID := domain.MustParseServerID("a.example:2289"), domain.MustParseServerID("a2.example:2289")
	if err := w.engine.registry.RecordOwnID(t.Context(), oldID, time.Now()); err != nil {
		t.Fatal(err)
	}
	identity := domain.NewIdentity(oldID, domain.DefaultAudienceGrace)
	r := NewRenames(w.engine, w.engine.registry, &fakeKeys{}, &fakeNotifier{}, identity, systemClock{}, slog.New(slog.NewTextHandler(w.logs, nil)))
	f.fail("append", streams.Peers, 1)
	if err := r.Rename(t.Context(), newID); !errors.Is(err, errInjected) {
		t.Fatalf("rename whose record fails: %v", err)
	}
	if got := identity.Current(); got != oldID {
		t.Fatalf("identity %s after a failed rename", got)
	}
	for range 2 {
		if err := r.Rename(t.Context(), newID); err != nil {
			t.Fatal(err)
		}
	}
	if got := identity.Current(); got != newID {
		t.Fatalf("identity %s after the rename, want %s", got, newID)
	}
	if n := strings.Count(w.logs.String(), "this server renamed"); n != 1 {
		t.Fatalf("%d renames logged, want 1:\n%s", n, w.logs.String())
	}
}

// Given this server's rename told to a peer that first fails, then does
// not know the old ID, then (asked again once no push signed with the old
// ID can reach it, twice the auth window later) accepts, each answer is
// logged as such; and a second rename after it is told too.
func TestOurRenameNoticesAreLoggedAndEachRenameIsTold(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		cfg := testConfig()
		cfg.AuthWindow = 2 * time.Second
		w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: cfg, logs: &logBuffer{}}
		w.open()
		ctx := t.Context()
		a1, a2, a3 := domain.MustParseServerID("a.example:2289"), domain.MustParseServerID("a2.example:2289"), domain.MustParseServerID("a3.example:2289")
		if err := w.engine.registry.RecordOwnID(ctx, a1, time.Now()); err != nil {
			t.Fatal(err)
		}
		w.send(1)
		notifier := &scriptedNotifier{answers: []error{
			errors.New("connection refused"),
			fromPeer(&hrpc.RemoteError{HTTPStatus: 400, Identifier: "postbox.unknown-peer"}),
		}}
		r := loggedRenames(w, &fakeKeys{}, notifier, a1)
		if err := r.Rename(ctx, a2); err != nil {
			t.Fatal(err)
		}
		eventually(t, "B to accept a2", func() bool { return w.engine.registry.IDFor(peerB) == a2 })
		log := w.logs.String()
		for _, want := range []string{"telling a peer our new ID failed", "a peer does not know our old ID", "peer accepted our new ID"} {
			if !strings.Contains(log, want) {
				t.Fatalf("no %q in the log:\n%s", want, log)
			}
		}
		synctest.Wait()
		if err := r.Rename(ctx, a3); err != nil {
			t.Fatal(err)
		}
		eventually(t, "B to accept a3", func() bool { return w.engine.registry.IDFor(peerB) == a3 })
	})
}

// Given a peer's acceptance of this server's new ID that cannot be
// recorded, it is logged as an error and the notice is made again until
// recorded.
func TestAnAcceptanceThatCannotBeRecordedIsLoggedAndToldAgain(t *testing.T) {
	t.Parallel()
	w, f := registryFaultWorld(t, testConfig())
	ctx := t.Context()
	a1, a2 := domain.MustParseServerID("a.example:2289"), domain.MustParseServerID("a2.example:2289")
	if err := w.engine.registry.RecordOwnID(ctx, a1, time.Now()); err != nil {
		t.Fatal(err)
	}
	w.send(1)
	notifier := &fakeNotifier{}
	r := loggedRenames(w, &fakeKeys{}, notifier, a1)
	r.backoff = domain.Backoff{First: time.Millisecond, Max: time.Millisecond}
	f.failAfter("append", streams.Peers, 1, 1) // the rename's record passes, the acceptance's fails
	if err := r.Rename(ctx, a2); err != nil {
		t.Fatal(err)
	}
	eventually(t, "B to accept", func() bool { return w.engine.registry.IDFor(peerB) == a2 })
	if n := notifier.count(); n != 2 {
		t.Fatalf("%d notices, want 2", n)
	}
	if !strings.Contains(w.logs.String(), "recording a peer's acceptance of our new ID failed") {
		t.Fatalf("log:\n%s", w.logs.String())
	}
}
