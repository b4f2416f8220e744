package delivery

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/harmony-postbox/postbox/adapters/authtoken"
	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/federation"
	"github.com/harmony-postbox/postbox/adapters/federation/federationtest"
	"github.com/harmony-postbox/postbox/adapters/hrpc"
	"github.com/harmony-postbox/postbox/adapters/httpserver"
	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/adapters/peerkeys"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

type fixedSelf domain.ServerID

func (s fixedSelf) IDFor(domain.ServerID) domain.ServerID { return domain.ServerID(s) }

// busyReceiver is a real federation listener whose budget for request
// bodies in flight is one body, which another peer can hold.
type busyReceiver struct {
	id     domain.ServerID
	box    *federationtest.Recorder
	busy   atomic.Int64 // 429 answers
	holder domain.ServerID
	hold   *authtoken.Signer
}

func startBusyReceiver(t *testing.T, sender domain.ServerID, senderKey ed25519.PublicKey) *busyReceiver {
	t.Helper()
	const limit = 64 << 10
	logger := slog.New(slog.DiscardHandler)
	r := &busyReceiver{box: federationtest.NewRecorder(), holder: domain.MustParseServerID("holder.example:2289")}
	holderPub, holderKey, _ := ed25519.GenerateKey(rand.Reader)
	r.hold = authtoken.NewSigner(holderKey, systemClock{}, rand.Reader)
	var handler atomic.Pointer[http.Handler]
	srv, err := httpserver.Listen(t.Context(), "receiver", "127.0.0.1:0", http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		(*handler.Load()).ServeHTTP(&statusCounter{ResponseWriter: w, busy: &r.busy}, req)
	}), httpserver.TLSFiles{}, logger)
	if err != nil {
		t.Fatal(err)
	}
	r.id = domain.MustParseServerID(srv.Addr().String())
	keys := peerkeys.New(peerkeys.Config{Insecure: true}, systemClock{}, logger, nil)
	keys.Remember(sender, senderKey)
	keys.Remember(r.holder, holderPub)
	verifier := domain.NewVerifier(domain.AuthPolicy{}, systemClock{}, keys, domain.NewIdentity(r.id, domain.DefaultAudienceGrace))
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	var h http.Handler = httpserver.NewFederationHandler(federation.NewPostboxService(verifier, r.box).AcceptBatches(limit),
		federation.NewKeyService(pub), limit, logger).WithAdmission(httpserver.Admission{InflightBytes: limit})
	handler.Store(&h)
	go func() { _ = srv.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return r
}

type statusCounter struct {
	http.ResponseWriter
	busy *atomic.Int64
}

func (s *statusCounter) WriteHeader(status int) {
	if status == http.StatusTooManyRequests {
		s.busy.Add(1)
	}
	s.ResponseWriter.WriteHeader(status)
}

func (s *statusCounter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// holdBudget starts a push from the holder whose body stays open, which
// takes the receiver's whole budget, until release.
func (r *busyReceiver) holdBudget(t *testing.T) (release func()) {
	t.Helper()
	auth := func() string {
		h, err := r.hold.Extended(r.holder, r.id, "")
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	post := func(body io.Reader) (*http.Response, error) {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://"+r.id.String()+"/protocol.sync.v1.PostboxService/Push", body)
		req.Header.Set("Content-Type", "application/hrpc")
		req.Header.Set("Authorization", auth())
		return http.DefaultClient.Do(req)
	}
	var (
		pw   *io.PipeWriter
		done chan struct{}
	)
	hold := func() {
		var pr *io.PipeReader
		pr, pw = io.Pipe()
		finished := make(chan struct{})
		done = finished
		go func() {
			defer close(finished)
			if resp, err := post(pr); err == nil {
				resp.Body.Close()
			}
		}()
	}
	hold()
	var once sync.Once
	release = func() { once.Do(func() { pw.CloseWithError(errors.New("released")); <-done }) }
	t.Cleanup(release)
	// Probes take budget for a moment too, so they are spaced out: one that
	// holds it when the hold arrives gets the hold refused (then it is sent
	// again, and given time to be admitted before the next probe).
	deadline := time.Now().Add(20 * time.Second)
	time.Sleep(20 * time.Millisecond)
	for {
		if time.Now().After(deadline) {
			t.Fatal("timed out waiting for the receiver's budget to be held")
		}
		select {
		case <-done:
			hold()
			time.Sleep(50 * time.Millisecond)
			continue
		default:
		}
		resp, err := post(bytes.NewReader([]byte{0x0a, 0x00})) // a body needs budget; an empty one does not
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusTooManyRequests {
				return release
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A receiver at its budget answers 429 with RetryInfo: the sender waits as
// asked and tries again, and does not count those answers toward queue mode.
func TestABusyReceiverIsWaitedForNotQueued(t *testing.T) {
	t.Parallel()
	senderPub, senderKey, _ := ed25519.GenerateKey(rand.Reader)
	self := domain.MustParseServerID("sender.example:2289")
	recv := startBusyReceiver(t, self, senderPub)
	release := recv.holdBudget(t)
	recv.busy.Store(0)

	cfg := testConfig()
	cfg.PushRetries = 1 // queue mode after two failed attempts
	clock := newFastClock(20)
	w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: cfg, clock: clock,
		client: peerclient.New(peerclient.Config{Insecure: true}, authtoken.NewSigner(senderKey, systemClock{}, rand.Reader), fixedSelf(self))}
	w.open()
	if _, err := w.engine.Send(context.Background(), recv.id, added(1)); err != nil {
		t.Fatal(err)
	}
	// Three busy answers: one second apart on the engine's clock, as the
	// receiver asked.
	start := clock.Now()
	eventually(t, "three busy answers", func() bool { return recv.busy.Load() >= 3 })
	if took := clock.Now().Sub(start); took < 1500*time.Millisecond {
		t.Errorf("three busy answers within %s: the sender did not wait as asked", took)
	}
	id, _ := w.engine.registry.Lookup(recv.id)
	records := func() []domain.DeliveryEvent {
		var out []domain.DeliveryEvent
		_, err := readAll(context.Background(), w.store, streams.Delivery(id), func(r eventstore.RecordedEvent) error {
			ev, err := streams.DecodeDelivery(r)
			out = append(out, ev)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	for _, r := range records() {
		if _, ok := r.(domain.QueueModeEntered); ok {
			t.Fatal("a busy receiver put the peer in queue mode")
		}
	}

	release()
	eventually(t, "the push once the budget is free", func() bool { return len(recv.box.Received()) == 1 })
	eventually(t, "the push recorded", func() bool {
		for _, r := range records() {
			if _, ok := r.(domain.EventPushed); ok {
				return true
			}
		}
		return false
	})
}

func TestBusyWaitsAreCapped(t *testing.T) {
	t.Parallel()
	for asked, want := range map[time.Duration]time.Duration{
		0: time.Second, 2 * time.Second: 2 * time.Second, time.Hour: maxBusyWait,
	} {
		if got := busyWait(asked); got != want {
			t.Errorf("busyWait(%s) = %s, want %s", asked, got, want)
		}
	}
}

// alwaysBusy answers every push as a receiver at its budget would.
type alwaysBusy struct{ pushes atomic.Int64 }

func (a *alwaysBusy) Push(context.Context, domain.ServerID, uint64, []*syncv1.Event) (peerclient.PushResult, error) {
	a.pushes.Add(1)
	return peerclient.PushResult{}, fromPeer(&hrpc.RemoteError{Procedure: "/Push", HTTPStatus: http.StatusTooManyRequests,
		Identifier: "hrpc.resource-exhausted", RetryAfter: time.Millisecond, HasRetryInfo: true})
}

func (a *alwaysBusy) Pull(context.Context, domain.ServerID, *uint64) (peerclient.PullResult, error) {
	return peerclient.PullResult{}, nil
}

// A peer that is busy forever cannot hold the push loop forever: after ten
// busy answers in a row, the next ones count as failed attempts.
func TestAPeerBusyForeverReachesQueueMode(t *testing.T) {
	t.Parallel()
	synctest.Test(t, testAPeerBusyForeverReachesQueueMode)
}

// testAPeerBusyForeverReachesQueueMode runs in a synctest bubble: the waits the peer asks for pass on the bubble's clock.
func testAPeerBusyForeverReachesQueueMode(t *testing.T) {
	cfg := testConfig()
	cfg.PushRetries = 1
	peer := &alwaysBusy{}
	w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: cfg, client: peer}
	w.open()
	w.send(1)
	eventually(t, "queue mode", func() bool { return w.state().Mode == domain.ModeQueue })
	// Ten waited for, then one attempt and one retry.
	if n := peer.pushes.Load(); n != maxBusyInRow+2 {
		t.Errorf("%d pushes before queue mode, want %d", n, maxBusyInRow+2)
	}
}

// fastClock is the engine's clock run faster than real time: its waits of
// seconds take tens of milliseconds, against a real receiver over a socket,
// where a synctest bubble cannot go.
type fastClock struct {
	start  time.Time
	factor time.Duration
}

func newFastClock(factor int) fastClock {
	return fastClock{start: time.Now(), factor: time.Duration(factor)}
}

func (c fastClock) Now() time.Time { return c.start.Add(time.Since(c.start) * c.factor) }

func (c fastClock) AfterFunc(d time.Duration, f func()) domain.Timer {
	return fastTimer{time.AfterFunc(d/c.factor, f), c.factor}
}

type fastTimer struct {
	*time.Timer
	factor time.Duration
}

func (t fastTimer) Reset(d time.Duration) bool { return t.Timer.Reset(d / t.factor) }
