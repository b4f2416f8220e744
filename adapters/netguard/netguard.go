// Package netguard decides which addresses this server may connect to when
// it calls a peer. Peer IDs come from outside (a caller's token, an
// operator's typo, a homeserver's request), so an outbound call is a request
// a stranger can aim: without a guard it could reach loopback services, the
// private network or a cloud metadata endpoint. Every outbound connection
// (pushes, pulls, NotifyNewId, probes, key fetches) dials through one Guard,
// which checks the address actually dialled, after DNS resolution, so a name
// that resolves inward (or starts to, after an earlier check) is refused too.
package netguard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"time"

	"github.com/harmony-postbox/postbox/domain"
)

// ErrAddressRefused is returned when a peer's ID resolves to an address this
// server must not be made to call (loopback, private, link-local...).
var ErrAddressRefused = errors.New("refusing to connect to a non-public address")

// NetworksFlag names the flag that allows internal networks, for messages.
const NetworksFlag = "--allow-peer-networks"

// special are ranges that are not public though netip does not say so:
// "this network", shared address space (RFC 6598, private in practice),
// IETF protocol assignments, benchmarking, reserved (and broadcast),
// deprecated site-local IPv6 and IPv4-compatible IPv6.
var special = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("240.0.0.0/4"),
	netip.MustParsePrefix("fec0::/10"),
	netip.MustParsePrefix("::/96"),
}

// nat64 embeds an IPv4 address that a NAT64 gateway would connect to.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// canonical unmaps IPv4-mapped and NAT64 addresses to the IPv4 address they
// reach, so 64:ff9b::7f00:1 is judged as 127.0.0.1.
func canonical(addr netip.Addr) netip.Addr {
	addr = addr.Unmap().WithZone("")
	if nat64.Contains(addr) {
		b := addr.As16()
		return netip.AddrFrom4([4]byte(b[12:]))
	}
	return addr
}

// Public reports whether addr is a globally routable unicast address.
func Public(addr netip.Addr) bool {
	addr = canonical(addr)
	if !addr.IsGlobalUnicast() || addr.IsPrivate() {
		return false
	}
	for _, p := range special {
		if p.Contains(addr) {
			return false
		}
	}
	return true
}

// Everything is the networks --insecure-peers allows: all of them.
var Everything = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}

// ParseNetworks reads CIDR prefixes; a bare address is its own /32 or /128.
func ParseNetworks(in []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, raw := range in {
		s := strings.TrimSpace(raw)
		if s == "" {
			continue
		}
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("network %q: want a CIDR prefix such as 10.0.0.0/8, or an address", s)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// Guard allows public addresses, addresses in the allowed internal
// networks, and any address of a peer named exactly on the allow list (the
// operator vouched for that one server; a wildcard entry vouches for
// nobody's address, or `*.example.org` would let anyone who controls a
// subdomain's DNS steer calls inward). The zero Guard allows public
// addresses only. A Guard is immutable and safe for concurrent use.
type Guard struct {
	networks []netip.Prefix
	access   domain.AccessList
}

// New returns a guard allowing networks besides public addresses, and the
// peers access names exactly.
func New(networks []netip.Prefix, access domain.AccessList) *Guard {
	return &Guard{networks: networks, access: access}
}

// Permits reports whether addr may be connected to (for any peer).
func (g *Guard) Permits(addr netip.Addr) bool {
	if Public(addr) {
		return true
	}
	addr = canonical(addr)
	if g == nil {
		return false
	}
	for _, p := range g.networks {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// vouched reports whether hostport (the URL's host, a peer ID) is named
// exactly on the allow list, so any of its addresses may be dialled.
func (g *Guard) vouched(hostport string) bool {
	if g == nil {
		return false
	}
	id, err := domain.ParseServerID(hostport)
	return err == nil && g.access.ExplicitlyAllows(id)
}

// loopbackNames are names that resolve to loopback by definition (RFC 6761).
func loopbackName(host string) bool {
	return host == "localhost" || strings.HasSuffix(host, ".localhost")
}

// CheckPeer refuses at once a peer whose ID is itself an internal address
// (an IP literal, or localhost) that no call could reach, so an event for
// it is not accepted into an outbox it could never leave. Names are judged
// only when dialled, since they may resolve anywhere.
func (g *Guard) CheckPeer(id domain.ServerID) error {
	if g.vouched(id.String()) {
		return nil
	}
	host := strings.TrimSuffix(strings.TrimPrefix(id.Host(), "["), "]")
	var candidates []netip.Addr
	if addr, err := netip.ParseAddr(host); err == nil {
		candidates = []netip.Addr{addr}
	} else if loopbackName(host) {
		candidates = []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()}
	}
	for _, a := range candidates {
		if g.Permits(a) {
			return nil
		}
	}
	if len(candidates) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s is not a public address; allow its network with %s (or name the peer in --allow-peers)",
		ErrAddressRefused, id, NetworksFlag)
}

// control checks the address a socket is about to connect to.
func (g *Guard) control(_ context.Context, _, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %s", ErrAddressRefused, address)
	}
	if !g.Permits(ap.Addr()) {
		return fmt.Errorf("%w: %s (allow its network with %s)", ErrAddressRefused, ap.Addr(), NetworksFlag)
	}
	return nil
}

// DialContext returns a dial function for an http.Transport: it connects
// within timeout, and only to permitted addresses, except for a peer named
// exactly on the allow list. The check runs in the dialer's Control hook,
// on each resolved address right before connecting.
func (g *Guard) DialContext(timeout time.Duration) func(ctx context.Context, network, address string) (net.Conn, error) {
	guarded := &net.Dialer{Timeout: timeout, ControlContext: g.control}
	open := &net.Dialer{Timeout: timeout}
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		if g.vouched(address) {
			return open.DialContext(ctx, network, address)
		}
		return guarded.DialContext(ctx, network, address)
	}
}
