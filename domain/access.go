package domain

import (
	"fmt"
	"strings"
)

// AccessList decides which servers may federate with this one. A server is
// refused if it matches the block list, or if an allow list is set and it
// matches none of it.
type AccessList struct {
	allow []hostPattern
	block []hostPattern
}

// hostPattern matches a whole server ID (`host:port`), a host on any port
// (`host`), or every subdomain of a domain (`*.domain`).
type hostPattern struct {
	host     string
	port     uint16 // 0: any port
	wildcard bool   // host is a suffix such as ".example.org"
}

// NewAccessList parses allow and block patterns.
func NewAccessList(allow, block []string) (AccessList, error) {
	var l AccessList
	var err error
	if l.allow, err = parseHostPatterns(allow); err != nil {
		return AccessList{}, fmt.Errorf("allow list: %w", err)
	}
	if l.block, err = parseHostPatterns(block); err != nil {
		return AccessList{}, fmt.Errorf("block list: %w", err)
	}
	return l, nil
}

func parseHostPatterns(in []string) ([]hostPattern, error) {
	var out []hostPattern
	for _, raw := range in {
		s := strings.TrimSpace(raw)
		if s == "" {
			continue
		}
		if rest, ok := strings.CutPrefix(s, "*."); ok {
			// Validate the suffix as a host by giving it a port.
			id, err := ParseServerID(rest + ":1")
			if err != nil {
				return nil, fmt.Errorf("pattern %q: %w", s, err)
			}
			out = append(out, hostPattern{host: "." + id.Host(), wildcard: true})
			continue
		}
		if id, err := ParseServerID(s); err == nil {
			out = append(out, hostPattern{host: id.Host(), port: id.Port()})
			continue
		}
		id, err := ParseServerID(s + ":1")
		if err != nil {
			return nil, fmt.Errorf("pattern %q: want host, host:port or *.domain: %w", s, err)
		}
		out = append(out, hostPattern{host: id.Host()})
	}
	return out, nil
}

func (p hostPattern) matches(id ServerID) bool {
	if p.wildcard {
		return strings.HasSuffix(id.Host(), p.host)
	}
	return p.host == id.Host() && (p.port == 0 || p.port == id.Port())
}

func matchesAny(patterns []hostPattern, id ServerID) bool {
	for _, p := range patterns {
		if p.matches(id) {
			return true
		}
	}
	return false
}

// Allows reports whether id may federate with this server.
func (l AccessList) Allows(id ServerID) bool {
	if matchesAny(l.block, id) {
		return false
	}
	return len(l.allow) == 0 || matchesAny(l.allow, id)
}

// ExplicitlyAllows reports whether id is named on the allow list by an
// exact entry (`host` or `host:port`), which vouches for it being reachable
// at a private or loopback address. A wildcard entry does not: whoever
// controls the DNS of one subdomain of `*.example.org` could otherwise point
// it at this server's internal network.
func (l AccessList) ExplicitlyAllows(id ServerID) bool {
	if matchesAny(l.block, id) {
		return false
	}
	for _, p := range l.allow {
		if !p.wildcard && p.matches(id) {
			return true
		}
	}
	return false
}
