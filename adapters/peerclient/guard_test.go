package peerclient_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/authtoken"
	"github.com/harmony-postbox/postbox/adapters/clock"
	"github.com/harmony-postbox/postbox/adapters/hrpc"
	"github.com/harmony-postbox/postbox/adapters/netguard"
	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// silentListener accepts connections on loopback, reads what comes and never
// answers; it counts the connections.
func silentListener(t *testing.T) (domain.ServerID, *atomic.Int64) {
	t.Helper()
	var lc net.ListenConfig
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() { _, _ = io.Copy(io.Discard, c) }()
			t.Cleanup(func() { c.Close() })
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return domain.MustParseServerID(ln.Addr().String()), &accepted
}

func signingClient(t *testing.T, cfg peerclient.Config) *peerclient.Client {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return peerclient.New(cfg, authtoken.NewSigner(priv, clock.System{}, rand.Reader), fixedSelf(domain.MustParseServerID("self.example:2289")))
}

func loopbackGuard(t *testing.T) *netguard.Guard {
	t.Helper()
	loop, err := netguard.ParseNetworks([]string{"127.0.0.0/8"})
	if err != nil {
		t.Fatal(err)
	}
	return netguard.New(loop, domain.AccessList{})
}

// Every outbound call dials through the guard: without its network
// allowed, a loopback peer sees no connection at all, whatever the call.
func TestEveryCallRefusesInternalAddressesBeforeConnecting(t *testing.T) {
	t.Parallel()
	peer, accepted := silentListener(t)
	wildcard, _ := domain.NewAccessList([]string{"*.localhost", "127.0.0.1"}, []string{"127.0.0.1"})
	localhost := domain.MustParseServerID("localhost:" + strconv.Itoa(int(peer.Port())))
	for _, protocol := range protocols {
		for _, tls := range []bool{false, true} {
			client := signingClient(t, peerclient.Config{Protocol: protocol, Plaintext: !tls, Guard: netguard.New(nil, wildcard)})
			for _, to := range []domain.ServerID{peer, localhost} {
				calls := map[string]error{}
				_, calls["push"] = client.Push(ctxFor(t), to, 0, []*syncv1.Event{event(1, 1)})
				_, calls["pull"] = client.Pull(ctxFor(t), to, nil)
				calls["notify"] = client.NotifyNewID(ctxFor(t), to, domain.MustParseServerID("new.example:2289"))
				for name, err := range calls {
					if !errors.Is(err, netguard.ErrAddressRefused) {
						t.Errorf("%s to %s (%s, tls %v): %v, want ErrAddressRefused", name, to, protocol, tls, err)
					}
				}
			}
		}
	}
	time.Sleep(50 * time.Millisecond)
	if n := accepted.Load(); n != 0 {
		t.Fatalf("the loopback peer accepted %d connections; the guard must refuse before connecting", n)
	}
}

// A proxy from the environment is never used: the address dialled must be
// the peer's, which the guard judges.
func TestEnvironmentProxyIsNotUsed(t *testing.T) {
	proxy, proxied := silentListener(t)
	t.Setenv("HTTP_PROXY", "http://"+proxy.String())
	t.Setenv("HTTPS_PROXY", "http://"+proxy.String())
	t.Setenv("NO_PROXY", "")
	for _, plaintext := range []bool{false, true} {
		client := signingClient(t, peerclient.Config{Plaintext: plaintext, Guard: loopbackGuard(t),
			Timeouts: peerclient.Timeouts{Dial: 500 * time.Millisecond, TLSHandshake: 500 * time.Millisecond, Answer: 500 * time.Millisecond}})
		// A name that never resolves: without a proxy the call fails
		// here, with one it would have gone to the proxy.
		if _, err := client.Pull(ctxFor(t), domain.MustParseServerID("peer.invalid:2289"), nil); err == nil {
			t.Fatal("a pull of peer.invalid succeeded")
		}
	}
	if n := proxied.Load(); n != 0 {
		t.Fatalf("the proxy from the environment got %d connections", n)
	}
}

// A peer that accepts and never answers fails an attempt after the answer
// timeout, not after the caller's deadline; one that accepts and never
// completes the TLS handshake, after the handshake timeout.
func TestSilentPeerFailsWithinTheAnswerTimeout(t *testing.T) {
	t.Parallel()
	peer, accepted := silentListener(t)
	short := peerclient.Timeouts{Dial: time.Second, TLSHandshake: 300 * time.Millisecond, Answer: 300 * time.Millisecond}
	for _, protocol := range protocols {
		for _, plaintext := range []bool{true, false} {
			client := signingClient(t, peerclient.Config{Protocol: protocol, Plaintext: plaintext, Guard: loopbackGuard(t), Timeouts: short})
			start := time.Now()
			_, err := client.Push(ctxFor(t), peer, 0, []*syncv1.Event{event(1, 1)})
			took := time.Since(start)
			if err == nil || took > 3*time.Second {
				t.Errorf("%s (plaintext %v): push to a silent peer: %v after %s, want an error within about 300 ms", protocol, plaintext, err, took)
			}
			if plaintext && !errors.Is(err, peerclient.ErrNoAnswer) {
				t.Errorf("%s: %v, want ErrNoAnswer", protocol, err)
			}
			if !plaintext && !strings.Contains(err.Error(), "handshake") {
				t.Errorf("%s over TLS: %v, want a handshake timeout", protocol, err)
			}
		}
	}
	if accepted.Load() == 0 {
		t.Fatal("the silent peer saw no connection: the test tested nothing")
	}
}

// slowPeer reads the whole request, waits delay, then answers an empty
// hRPC message; with bodyDelay it writes the headers first and the body
// after the delay.
func slowPeer(t *testing.T, delay time.Duration, bodyFirst bool) domain.ServerID {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", hrpc.ContentType)
		if bodyFirst {
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
		}
		time.Sleep(delay)
	}))
	t.Cleanup(srv.Close)
	return domain.MustParseServerID(strings.TrimPrefix(srv.URL, "http://"))
}

// The time a peer has to answer grows with the request's size, so a large
// push on a slow link is not cut where a small one would be; and reading
// the answer's body is not under that clock.
func TestAnswerTimeoutGrowsWithTheRequest(t *testing.T) {
	t.Parallel()
	timeouts := peerclient.Timeouts{Answer: 150 * time.Millisecond, MinRate: 256 << 10, WorkAnswer: time.Nanosecond}
	client := signingClient(t, peerclient.Config{Plaintext: true, Guard: loopbackGuard(t), Timeouts: timeouts})
	peer := slowPeer(t, 600*time.Millisecond, false)

	small := []*syncv1.Event{event(1, 1)}
	if _, err := client.Push(ctxFor(t), peer, 0, small); !errors.Is(err, peerclient.ErrNoAnswer) {
		t.Fatalf("a small push answered after 600 ms: %v, want ErrNoAnswer (%s to answer)", err, timeouts.AnswerWithin(16))
	}
	large := make([]*syncv1.Event, 40000) // about 400 KiB: 1.6 s more at 256 KiB/s
	for i := range large {
		large[i] = event(uint64(i)+1_000_000, 7)
	}
	if _, err := client.Push(ctxFor(t), peer, 0, large); err != nil {
		t.Fatalf("a large push answered after 600 ms: %v, want success", err)
	}
	if got := timeouts.AnswerWithin(256 << 10); got != 1150*time.Millisecond {
		t.Errorf("AnswerWithin(256 KiB) = %s, want 1.15 s", got)
	}

	streaming := slowPeer(t, 600*time.Millisecond, true)
	if _, err := client.Pull(ctxFor(t), streaming, nil); err != nil {
		t.Fatalf("a pull whose answer started at once and ended 600 ms later: %v", err)
	}
}

// With the default settings, a peer that never answers fails an attempt in
// about 2 s, so one attempt and 5 retries reach queue mode in about 15 s.
func TestDefaultTimeoutsBoundAnAttempt(t *testing.T) {
	t.Parallel()
	d := peerclient.DefaultTimeouts()
	if w := d.AnswerWithin(100); w < time.Second || w > 3*time.Second {
		t.Errorf("a small request gets %s to be answered, want 1 to 3 s", w)
	}
	if d.WorkAnswer < 3*time.Second {
		t.Errorf("a Pull or NotifyNewId gets only %s more, want time for the receiver's work", d.WorkAnswer)
	}
	if w := d.AnswerWithin(1 << 20); w < 15*time.Second {
		t.Errorf("a 1 MiB request gets %s, want at least 15 s (64 KiB/s)", w)
	}
	if d.TLSHandshake > 3*time.Second || d.Dial > 3*time.Second {
		t.Errorf("dial %s, TLS %s: want a few seconds", d.Dial, d.TLSHandshake)
	}
}
