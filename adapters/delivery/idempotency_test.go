package delivery

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

func (w *world) sendKeyed(to domain.ServerID, event *syncv1.Event, key string) uint64 {
	w.t.Helper()
	seq, err := w.engine.SendKeyed(context.Background(), to, event, key)
	if err != nil {
		w.t.Fatalf("send with key %q: %v", key, err)
	}
	return seq
}

// Given a send made with a key, when it is retried (also after a restart),
// then the retry gets the first sequence number and nothing more is stored.
func TestAKeyedSendRetriedGetsTheFirstAnswerAndStoresOnce(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	if seq := w.sendKeyed(peerB, added(7), "k1"); seq != 0 {
		t.Fatalf("first keyed send: seq %d, want 0", seq)
	}
	w.send(1) // a send without a key is stored every time
	if seq := w.sendKeyed(peerB, added(7), "k1"); seq != 0 {
		t.Fatalf("retry: seq %d, want 0", seq)
	}
	if seq := w.sendKeyed(peerB, added(8), "k2"); seq != 2 {
		t.Fatalf("another key: seq %d, want 2", seq)
	}
	w.restart()
	if seq := w.sendKeyed(peerB, added(7), "k1"); seq != 0 {
		t.Fatalf("retry after a restart: seq %d, want 0", seq)
	}
	if seq := w.sendKeyed(peerB, added(8), "k2"); seq != 2 {
		t.Fatalf("retry of k2 after a restart: seq %d, want 2", seq)
	}
	if users, _ := w.outboxUsers(); len(users) != 3 || users[0] != 7 || users[2] != 8 {
		t.Fatalf("outbox users %v, want [7 0 8]", users)
	}
}

// Given a key used for one send, when it comes with another event or for
// another peer, then it is refused, naming the first send, and nothing is
// stored.
func TestAKeyReusedForAnotherEventOrPeerIsRefused(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	w.sendKeyed(peerB, added(7), "k1")
	for name, send := range map[string]func() (uint64, error){
		"another event": func() (uint64, error) { return w.engine.SendKeyed(t.Context(), peerB, added(8), "k1") },
		"another peer":  func() (uint64, error) { return w.engine.SendKeyed(t.Context(), peerC, added(7), "k1") },
	} {
		_, err := send()
		if !errors.Is(err, domain.ErrInvalidArgument) || !strings.Contains(err.Error(), "sequence 0") {
			t.Errorf("%s: %v, want an invalid argument naming sequence 0", name, err)
		}
	}
	if _, err := w.engine.SendKeyed(t.Context(), peerB, added(7), "a key with spaces"); !errors.Is(err, domain.ErrInvalidArgument) {
		t.Errorf("malformed key: %v, want an invalid argument", err)
	}
	if users, _ := w.outboxUsers(); len(users) != 1 {
		t.Fatalf("outbox users %v, want one", users)
	}
}

// Given many concurrent sends with one key, when the first append is held,
// then they make one append and all get its sequence number.
func TestConcurrentSendsWithOneKeyAppendOnce(t *testing.T) {
	t.Parallel()
	w, spy := newSpiedWorld(t)
	w.send(1)
	release := make(chan struct{})
	spy.setHook(func(_ int, stream string, expected eventstore.ExpectedRevision, events []eventstore.EventData) (eventstore.AppendResult, error) {
		hold(t, release)
		return spy.Store.Append(context.Background(), stream, expected, events...)
	})
	const callers = 8
	seqs := make([]uint64, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			seqs[i], errs[i] = w.engine.SendKeyed(context.Background(), peerB, added(9), "same")
		}()
	}
	eventually(t, "the first append", func() bool { return len(spy.appends()) == 1 })
	time.Sleep(20 * time.Millisecond) // the others arrive meanwhile
	close(release)
	wg.Wait()
	for i := range callers {
		if errs[i] != nil || seqs[i] != 1 {
			t.Errorf("caller %d: seq %d, %v; want 1", i, seqs[i], errs[i])
		}
	}
	if n := len(spy.appends()); n != 1 {
		t.Fatalf("%d appends, want 1", n)
	}
	if users, _ := w.outboxUsers(); len(users) != 2 {
		t.Fatalf("outbox users %v, want two", users)
	}
}

// Given a keyed send older than the window, when it is sent again (in the
// same run, or after a restart that reads the outbox back only as far as
// the window), then it is stored again.
func TestAKeyIsForgottenAfterTheWindow(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.IdempotencyWindow = 100 * time.Millisecond
	w := newWorld(t, cfg)
	w.sendKeyed(peerB, added(1), "old")
	time.Sleep(150 * time.Millisecond)
	if seq := w.sendKeyed(peerB, added(1), "old"); seq != 1 {
		t.Fatalf("after the window: seq %d, want 1 (stored again)", seq)
	}
	w.sendKeyed(peerB, added(2), "recent")
	time.Sleep(150 * time.Millisecond)
	w.restart()
	if seq := w.sendKeyed(peerB, added(2), "recent"); seq != 3 {
		t.Fatalf("after the window and a restart: seq %d, want 3 (stored again)", seq)
	}
	if users, _ := w.outboxUsers(); len(users) != 4 {
		t.Fatalf("outbox users %v, want four", users)
	}
}
