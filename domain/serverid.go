package domain

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// ServerID names a Harmony server: `domain:port`, the port not optional.
// A ServerID value is always well formed and canonical (host lowercased),
// because the only way to make one from outside bytes is ParseServerID.
type ServerID struct {
	host string // lowercased DNS name, IPv4 literal, or bracketed IPv6 literal
	port uint16
}

// ErrInvalidServerID is wrapped by every ParseServerID failure.
var ErrInvalidServerID = errors.New("invalid server ID")

const maxDNSNameLength = 253

// ParseServerID validates s as `host:port` per the sync.v1 spec: a DNS name,
// an IPv4 literal or a bracketed IPv6 literal, and a port from 1 to 65535.
// It refuses schemes, paths, spaces and everything else a URL could smuggle in.
func ParseServerID(s string) (ServerID, error) {
	fail := func(why string) (ServerID, error) {
		return ServerID{}, fmt.Errorf("%w %q: %s", ErrInvalidServerID, s, why)
	}
	if s == "" {
		return fail("empty")
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return fail("missing :port")
	}
	hostPart, portPart := s[:i], s[i+1:]
	if portPart == "" {
		return fail("missing port")
	}
	for _, c := range portPart {
		if c < '0' || c > '9' {
			return fail("port is not a number")
		}
	}
	port, err := strconv.ParseUint(portPart, 10, 16)
	if err != nil || port == 0 || len(portPart) > 5 {
		return fail("port out of range 1-65535")
	}
	if hostPart == "" {
		return fail("missing host")
	}
	if strings.HasPrefix(hostPart, "[") {
		if !strings.HasSuffix(hostPart, "]") {
			return fail("unterminated IPv6 literal")
		}
		addr, err := netip.ParseAddr(hostPart[1 : len(hostPart)-1])
		if err != nil || !addr.Is6() || addr.Zone() != "" {
			return fail("bad IPv6 literal")
		}
		return ServerID{host: "[" + addr.String() + "]", port: uint16(port)}, nil
	}
	host := strings.ToLower(hostPart)
	if addr, err := netip.ParseAddr(host); err == nil {
		if !addr.Is4() {
			return fail("IPv6 literals must be bracketed")
		}
		return ServerID{host: addr.String(), port: uint16(port)}, nil
	}
	if why := checkDNSName(host); why != "" {
		return fail(why)
	}
	return ServerID{host: host, port: uint16(port)}, nil
}

// checkDNSName returns why name is not a DNS host name, or "".
func checkDNSName(name string) string {
	if len(name) > maxDNSNameLength {
		return "host name too long"
	}
	labels := strings.Split(name, ".")
	for i, label := range labels {
		if label == "" {
			if i == len(labels)-1 && i > 0 {
				return "trailing dot"
			}
			return "empty label in host name"
		}
		if len(label) > 63 {
			return "host name label too long"
		}
		for j := 0; j < len(label); j++ {
			c := label[j]
			switch {
			case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
			case c == '-' && j != 0 && j != len(label)-1:
			default:
				return fmt.Sprintf("character %q not allowed in host name", c)
			}
		}
	}
	// A name made only of digits and dots would be read as an IPv4 address
	// by resolvers; ParseAddr already refused it as one.
	if strings.Trim(name, "0123456789.") == "" {
		return "numeric host that is not an IPv4 address"
	}
	return ""
}

// MustParseServerID is ParseServerID for constants in tests and defaults.
func MustParseServerID(s string) ServerID {
	id, err := ParseServerID(s)
	if err != nil {
		panic(err)
	}
	return id
}

// String returns the canonical `host:port` form.
func (id ServerID) String() string {
	if id.host == "" {
		return ""
	}
	return id.host + ":" + strconv.Itoa(int(id.port))
}

// IsZero reports whether id is the zero value (no server).
func (id ServerID) IsZero() bool { return id.host == "" }

// Host returns the host part; IPv6 literals keep their brackets.
func (id ServerID) Host() string { return id.host }

// Port returns the port.
func (id ServerID) Port() uint16 { return id.port }

// URL is the base URL for reaching the server: `https://` + ID, or
// `http://` for local work with insecure peers.
func (id ServerID) URL(secure bool) string {
	if secure {
		return "https://" + id.String()
	}
	return "http://" + id.String()
}

// IPAddr returns the host as an address when it is an IP literal.
func (id ServerID) IPAddr() (netip.Addr, bool) {
	h := strings.TrimSuffix(strings.TrimPrefix(id.host, "["), "]")
	addr, err := netip.ParseAddr(h)
	return addr, err == nil
}
