package replicas

import (
	"bytes"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
)

func TestDefaultNameIsTheHostNameAndARandomInstanceID(t *testing.T) {
	t.Parallel()
	fixed := func() *bytes.Reader { return bytes.NewReader([]byte{0x1a, 0x2b, 0x3c, 0x4d}) }
	host := func(h string, err error) func() (string, error) { return func() (string, error) { return h, err } }
	long := strings.Repeat("h", 80)
	cases := []struct {
		name     string
		hostname func() (string, error)
		want     string
	}{
		{"a plain host name", host("web-3", nil), "web-3-1a2b3c4d"},
		{"a dotted host name keeps its first label", host("pod-7.postbox.svc.cluster.local", nil), "pod-7-1a2b3c4d"},
		{"characters a name may not hold are replaced", host("my host+1", nil), "my-host-1-1a2b3c4d"},
		{"no host name", host("", errors.New("uname failed")), "replica-1a2b3c4d"},
		{"an empty host name", host("", nil), "replica-1a2b3c4d"},
		{"a long host name is cut", host(long, nil), long[:64-9] + "-1a2b3c4d"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DefaultName(tc.hostname, fixed())
			if err != nil || got != tc.want {
				t.Fatalf("DefaultName = %q, %v; want %q", got, err, tc.want)
			}
			if err := CheckName(got); err != nil {
				t.Fatalf("the default is not a valid name: %v", err)
			}
		})
	}
	// Two processes on one host (or two containers whose host names
	// repeat) get different names.
	a, _ := DefaultName(host("web", nil), rand.Reader)
	b, _ := DefaultName(host("web", nil), rand.Reader)
	if a == b {
		t.Fatalf("two default names are both %q", a)
	}
	if _, err := DefaultName(host("web", nil), bytes.NewReader(nil)); err == nil {
		t.Fatal("a failed random source gave a name")
	}
}

func TestCheckName(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"a", "pod-1", "web_2.eu", "A9", strings.Repeat("x", 64)} {
		if err := CheckName(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", strings.Repeat("x", 65), "a b", "a/b", "ä", "a\x00b", "a:b"} {
		if err := CheckName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
