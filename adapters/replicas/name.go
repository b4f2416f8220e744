package replicas

import (
	"encoding/hex"
	"fmt"
	"io"
	"strings"
)

// maxNameLen bounds a replica name: it travels in every heartbeat and
// labels metrics.
const maxNameLen = 64

// DefaultName is the `--replica` default: the host name and a random
// instance ID, "host-1a2b3c4d". Process IDs would repeat in containers (each
// starts at 1), so a restarted replica would take the name of the one it
// replaces while that one's heartbeat is still live; a random ID cannot.
func DefaultName(hostname func() (string, error), random io.Reader) (string, error) {
	var id [4]byte
	if _, err := io.ReadFull(random, id[:]); err != nil {
		return "", fmt.Errorf("replica name: %w", err)
	}
	host, err := hostname()
	if err != nil || host == "" {
		host = "replica"
	}
	// Keep the first label of a dotted host name, and only what a name may
	// hold, so that any host name gives a valid replica name.
	host, _, _ = strings.Cut(host, ".")
	host = strings.Map(func(r rune) rune {
		if nameRune(r) {
			return r
		}
		return '-'
	}, host)
	suffix := "-" + hex.EncodeToString(id[:])
	if len(host) > maxNameLen-len(suffix) {
		host = host[:maxNameLen-len(suffix)]
	}
	return host + suffix, nil
}

// CheckName reports whether name can name a replica: 1 to 64 letters,
// digits, '-', '_' or '.'.
func CheckName(name string) error {
	if name == "" || len(name) > maxNameLen {
		return fmt.Errorf("replica name %q: want 1 to %d characters, e.g. %q", name, maxNameLen, "pod-1")
	}
	for _, r := range name {
		if !nameRune(r) {
			return fmt.Errorf("replica name %q: %q is not allowed; use letters, digits, '-', '_' and '.', e.g. %q", name, r, "pod-1")
		}
	}
	return nil
}

func nameRune(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.'
}
