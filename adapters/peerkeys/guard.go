package peerkeys

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"
)

// ErrAddressRefused is returned when a peer's ID resolves to an address this
// server must not be made to call (loopback, private, link-local...).
var ErrAddressRefused = errors.New("refusing to connect to a non-public address")

// cgnat is the shared address space of RFC 6598, private in practice.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// publicAddress reports whether addr is a globally routable unicast address.
func publicAddress(addr netip.Addr) bool {
	addr = addr.Unmap()
	return addr.IsGlobalUnicast() && !addr.IsPrivate() && !cgnat.Contains(addr)
}

// guardedDialer dials only public addresses. The check runs on the address
// actually dialed, after DNS resolution, so a name that resolves to
// 127.0.0.1 is refused too (no DNS rebinding around the check).
func guardedDialer(timeout time.Duration) *net.Dialer {
	return &net.Dialer{
		Timeout: timeout,
		ControlContext: func(_ context.Context, _, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("%w: %s", ErrAddressRefused, address)
			}
			if !publicAddress(ap.Addr()) {
				return fmt.Errorf("%w: %s", ErrAddressRefused, ap.Addr())
			}
			return nil
		},
	}
}
