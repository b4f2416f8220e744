package domain

import (
	"errors"
	"strings"
	"testing"
)

func TestParseServerID(t *testing.T) {
	t.Parallel()
	valid := map[string]string{
		"example.org:2289":      "example.org:2289",
		"Chat.Example.ORG:443":  "chat.example.org:443",
		"localhost:1":           "localhost:1",
		"127.0.0.1:2289":        "127.0.0.1:2289",
		"[::1]:2289":            "[::1]:2289",
		"[2001:DB8::1]:65535":   "[2001:db8::1]:65535",
		"a-b.c-d.example:80":    "a-b.c-d.example:80",
		"xn--bcher-kva.ch:2289": "xn--bcher-kva.ch:2289",
	}
	for in, want := range valid {
		t.Run("valid "+in, func(t *testing.T) {
			id, err := ParseServerID(in)
			if err != nil {
				t.Fatalf("ParseServerID(%q) = %v", in, err)
			}
			if id.String() != want {
				t.Fatalf("String() = %q, want %q", id.String(), want)
			}
			if again, err := ParseServerID(id.String()); err != nil || again != id {
				t.Fatalf("canonical form does not parse back to itself: %v, %v", again, err)
			}
		})
	}
	invalid := []string{
		"", "example.org", "example.org:", ":2289", "example.org:0", "example.org:65536", "example.org:99999999",
		"example.org:22a", "example.org:-1", "example.org:+80", "https://example.org:2289", "example.org:2289/path",
		"exa mple.org:2289", " example.org:2289", "example.org:2289 ", "::1:2289", "[::1]", "[::1:2289",
		"[fe80::1%eth0]:2289", "[127.0.0.1]:2289", "example..org:2289", ".example.org:2289", "example.org.:2289",
		"-example.org:2289", "example-.org:2289", "ex_ample.org:2289", "user@example.org:2289", "1.2.3:2289",
		strings.Repeat("a", 64) + ".org:2289", strings.Repeat("a.", 127) + "org:1",
	}
	for _, in := range invalid {
		t.Run("invalid "+in, func(t *testing.T) {
			if id, err := ParseServerID(in); err == nil {
				t.Fatalf("ParseServerID(%q) = %v, want an error", in, id)
			} else if !errors.Is(err, ErrInvalidServerID) {
				t.Fatalf("error %v does not wrap ErrInvalidServerID", err)
			}
		})
	}
}

func TestServerIDURL(t *testing.T) {
	t.Parallel()
	id := MustParseServerID("[::1]:2289")
	if got := id.URL(true); got != "https://[::1]:2289" {
		t.Fatalf("URL(true) = %q", got)
	}
	if got := id.URL(false); got != "http://[::1]:2289" {
		t.Fatalf("URL(false) = %q", got)
	}
	if addr, ok := id.IPAddr(); !ok || !addr.IsLoopback() {
		t.Fatalf("IPAddr() = %v, %v", addr, ok)
	}
}

func FuzzParseServerID(f *testing.F) {
	for _, s := range []string{"example.org:2289", "[::1]:1", "127.0.0.1:80", "a:b:c", "https://x:1/", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseServerID(s)
		if err != nil {
			return
		}
		// Whatever parses is canonical, stable, and free of URL syntax.
		again, err := ParseServerID(id.String())
		if err != nil || again != id {
			t.Fatalf("%q parsed to %q which does not parse back: %v", s, id, err)
		}
		if strings.ContainsAny(id.String(), "/?#@ \t\r\n") || id.Port() == 0 {
			t.Fatalf("%q parsed to unsafe %q", s, id)
		}
	})
}
