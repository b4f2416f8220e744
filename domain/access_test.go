package domain

import "testing"

func TestAccessList(t *testing.T) {
	t.Parallel()
	list, err := NewAccessList([]string{"friend.example:2289", "*.trusted.example", "10.0.0.5"}, []string{"bad.trusted.example"})
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]bool{
		"friend.example:2289":      true,
		"friend.example:443":       false,
		"a.trusted.example:2289":   true,
		"trusted.example:2289":     false,
		"bad.trusted.example:1":    false,
		"10.0.0.5:2289":            true,
		"stranger.example:2289":    false,
		"eviltrusted.example:2289": false,
	} {
		if got := list.Allows(MustParseServerID(id)); got != want {
			t.Errorf("Allows(%s) = %v, want %v", id, got, want)
		}
	}
	open, _ := NewAccessList(nil, []string{"blocked.example"})
	if open.Allows(MustParseServerID("blocked.example:2289")) || !open.Allows(MustParseServerID("other.example:2289")) {
		t.Error("a block list alone must block only what it names")
	}
	if open.ExplicitlyAllows(MustParseServerID("other.example:2289")) {
		t.Error("no allow list: nothing is explicitly allowed")
	}
	if _, err := NewAccessList([]string{"https://x"}, nil); err == nil {
		t.Error("a URL is not a host pattern")
	}
}

func TestOnlyExactAllowEntriesVouchForAServer(t *testing.T) {
	t.Parallel()
	// Given an allow list with an exact host:port, a bare host and a wildcard
	list, err := NewAccessList([]string{"friend.example:2289", "10.0.0.5", "*.trusted.example"}, []string{"10.0.0.5:9"})
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]bool{
		"friend.example:2289":    true,
		"10.0.0.5:2289":          true,
		"10.0.0.5:9":             false, // blocked
		"a.trusted.example:2289": false, // allowed, but a wildcard vouches for no address
		"friend.example:443":     false,
	} {
		// When asked whether the entry vouches for the server
		// Then only exact, unblocked entries do
		if got := list.ExplicitlyAllows(MustParseServerID(id)); got != want {
			t.Errorf("ExplicitlyAllows(%s) = %v, want %v", id, got, want)
		}
	}
	if !list.Allows(MustParseServerID("a.trusted.example:2289")) {
		t.Error("a wildcard entry must still allow federation")
	}
}
