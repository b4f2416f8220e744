package domain

import (
	"errors"
	"testing"
)

// directory is a registry given by its peers' ID histories, oldest first.
type directory map[string][]ServerID

func (d directory) Resolve(id ServerID) (string, ServerID, bool) {
	for peer, ids := range d {
		for _, known := range ids {
			if known == id {
				return peer, ids[len(ids)-1], true
			}
		}
	}
	return "", ServerID{}, false
}

func TestPeerRenameRules(t *testing.T) {
	t.Parallel()
	b, b2, c := MustParseServerID("b.example:2289"), MustParseServerID("b2.example:2289"), MustParseServerID("c.example:2289")
	cases := []struct {
		name          string
		given         directory
		caller, newID ServerID
		then          error
		alreadyDone   bool
	}{
		{"a known peer renames to a free ID", directory{"p1": {b}}, b, b2, nil, false},
		{"an unknown old ID is refused", directory{"p1": {c}}, b, b2, ErrUnknownPeer, false},
		{"a new ID that is another peer's is refused", directory{"p1": {b}, "p2": {b2}}, b, b2, ErrIDTaken, false},
		{"a new ID that was another peer's is refused", directory{"p1": {b}, "p2": {b2, c}}, b, b2, ErrIDTaken, false},
		{"the same rename announced again answers OK", directory{"p1": {b, b2}}, b, b2, nil, true},
		{"a different rename under the old ID is refused", directory{"p1": {b, b2}}, b, c, ErrPeerRenamed, false},
		{"a rename to the current ID changes nothing", directory{"p1": {b}}, b, b, nil, true},
		{"a peer may take back an ID it had", directory{"p1": {b2, b}}, b, b2, nil, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecidePeerRename(tc.given, tc.caller, tc.newID)
			if tc.then != nil {
				if !errors.Is(err, tc.then) {
					t.Fatalf("err = %v, want %v", err, tc.then)
				}
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if got.AlreadyDone != tc.alreadyDone || got.Old != tc.caller || got.New != tc.newID || got.Peer != "p1" {
				t.Fatalf("decision %+v", got)
			}
		})
	}
}

func TestRequestsUnderARenamedIDAreRefused(t *testing.T) {
	t.Parallel()
	b, b2 := MustParseServerID("b.example:2289"), MustParseServerID("b2.example:2289")
	dir := directory{"p1": {b, b2}}
	if _, _, err := CheckCaller(dir, b); !errors.Is(err, ErrPeerRenamed) {
		t.Fatalf("old ID: %v", err)
	}
	if peer, found, err := CheckCaller(dir, b2); err != nil || !found || peer != "p1" {
		t.Fatalf("new ID: %v %v %v", peer, found, err)
	}
	if _, found, err := CheckCaller(dir, MustParseServerID("x.example:1")); err != nil || found {
		t.Fatalf("stranger: %v %v", found, err)
	}
}
