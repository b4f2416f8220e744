package netguard

import (
	"errors"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/domain"
)

func TestPublic(t *testing.T) {
	t.Parallel()
	for addr, want := range map[string]bool{
		"8.8.8.8": true, "2001:4860:4860::8888": true, "64:ff9b::808:808": true,
		"127.0.0.1": false, "::1": false, "10.1.2.3": false, "172.16.0.1": false, "192.168.1.1": false,
		"169.254.169.254": false, "fe80::1": false, "fc00::1": false, "0.0.0.0": false, "::": false,
		"100.64.0.1": false, "::ffff:127.0.0.1": false, "224.0.0.1": false, "255.255.255.255": false,
		"0.1.2.3": false, "198.18.0.1": false, "240.0.0.1": false, "fec0::1": false,
		"::7f00:1": false, "64:ff9b::7f00:1": false, "64:ff9b::a00:1": false, "fe80::1%eth0": false,
	} {
		if got := Public(netip.MustParseAddr(addr)); got != want {
			t.Errorf("Public(%s) = %v, want %v", addr, got, want)
		}
	}
}

func TestParseNetworks(t *testing.T) {
	t.Parallel()
	got, err := ParseNetworks([]string{"127.0.0.0/8", " 10.1.2.3 ", "", "fd00::1/8", "::1"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"127.0.0.0/8", "10.1.2.3/32", "fd00::/8", "::1/128"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i].String() != want[i] {
			t.Errorf("network %d: %s, want %s", i, got[i], want[i])
		}
	}
	if _, err := ParseNetworks([]string{"example.org"}); err == nil {
		t.Error("a name is not a network")
	}
}

func mustAccess(t *testing.T, allow ...string) domain.AccessList {
	t.Helper()
	l, err := domain.NewAccessList(allow, nil)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestCheckPeerRefusesInternalLiteralsUnlessAllowed(t *testing.T) {
	t.Parallel()
	loop, _ := ParseNetworks([]string{"127.0.0.0/8"})
	for _, tc := range []struct {
		name  string
		guard *Guard
		id    string
		ok    bool
	}{
		{"a public literal", New(nil, domain.AccessList{}), "8.8.8.8:2289", true},
		{"a name, judged when dialled", New(nil, domain.AccessList{}), "chat.example.org:2289", true},
		{"loopback", New(nil, domain.AccessList{}), "127.0.0.1:2289", false},
		{"localhost", New(nil, domain.AccessList{}), "localhost:2289", false},
		{"a private IPv6 literal", New(nil, domain.AccessList{}), "[fd00::1]:2289", false},
		{"link-local metadata", nil, "169.254.169.254:80", false},
		{"loopback, its network allowed", New(loop, domain.AccessList{}), "127.0.0.2:2289", true},
		{"localhost, loopback allowed", New(loop, domain.AccessList{}), "localhost:2289", true},
		{"private, only loopback allowed", New(loop, domain.AccessList{}), "10.0.0.1:2289", false},
		{"named exactly on the allow list", New(nil, mustAccess(t, "10.0.0.1:2289")), "10.0.0.1:2289", true},
		{"everything allowed", New(Everything, domain.AccessList{}), "[::1]:2289", true},
	} {
		err := tc.guard.CheckPeer(domain.MustParseServerID(tc.id))
		if tc.ok != (err == nil) || err != nil && !errors.Is(err, ErrAddressRefused) {
			t.Errorf("%s: CheckPeer(%s) = %v, want ok=%v", tc.name, tc.id, err, tc.ok)
		}
	}
}

// countingListener counts the connections a loopback listener accepts.
func countingListener(t *testing.T) (net.Listener, *atomic.Int64) {
	t.Helper()
	var lc net.ListenConfig
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return ln, &n
}

func TestDialChecksTheAddressDialled(t *testing.T) {
	t.Parallel()
	ln, accepted := countingListener(t)
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	loop, _ := ParseNetworks([]string{"127.0.0.0/8"})
	dial := func(g *Guard, address string) error {
		c, err := g.DialContext(2*time.Second)(t.Context(), "tcp", address)
		if err == nil {
			c.Close()
		}
		return err
	}
	for _, address := range []string{"127.0.0.1:" + port, "localhost:" + port} {
		if err := dial(New(nil, mustAccess(t, "*.localhost")), address); !errors.Is(err, ErrAddressRefused) {
			t.Errorf("dial %s with no network allowed: %v, want ErrAddressRefused", address, err)
		}
	}
	if err := dial(nil, "127.0.0.1:"+port); !errors.Is(err, ErrAddressRefused) {
		t.Errorf("a nil guard: %v, want ErrAddressRefused", err)
	}
	// The refusal comes before connecting: the listener saw nothing.
	time.Sleep(50 * time.Millisecond)
	if n := accepted.Load(); n != 0 {
		t.Fatalf("the listener accepted %d connections from refused dials", n)
	}
	if err := dial(New(loop, domain.AccessList{}), "127.0.0.1:"+port); err != nil {
		t.Errorf("loopback allowed: %v", err)
	}
	if err := dial(New(nil, mustAccess(t, "localhost:"+port)), "localhost:"+port); err != nil {
		t.Errorf("named exactly on the allow list: %v", err)
	}
}
