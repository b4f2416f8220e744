package embedded_test

import (
	"fmt"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/eventstore/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, storetest.Harness{
		Open: func(t *testing.T) eventstore.Store {
			return openStore(t, t.TempDir())
		},
		Reopen: func(t *testing.T, closed eventstore.Store) eventstore.Store {
			return openStore(t, closed.(*embedded.Store).Dir())
		},
	})
}

func openStore(t *testing.T, dir string) *embedded.Store {
	t.Helper()
	s, err := embedded.Open(t.Context(), dir, embedded.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("open %s: %v", dir, err)
	}
	return s
}

// Given appends to three streams made with one AppendStreams, when they are
// stored, then one commit holds them all.
func TestAppendStreamsIsOneCommit(t *testing.T) {
	t.Parallel()
	s := openStore(t, t.TempDir())
	defer s.Close()
	before := s.Stats()
	var parts []eventstore.StreamAppend
	for i := range 3 {
		parts = append(parts, eventstore.StreamAppend{Stream: fmt.Sprintf("s%d", i), Expected: eventstore.NoStream(),
			Events: []eventstore.EventData{{ID: eventstore.EventID{byte(i + 1)}, Type: "t", Data: []byte("{}")}}})
	}
	_, errs := s.AppendStreams(t.Context(), parts)
	for i, err := range errs {
		if err != nil {
			t.Fatalf("part %d: %v", i, err)
		}
	}
	after := s.Stats()
	if c, a := after.Commits-before.Commits, after.Appends-before.Appends; c != 1 || a != 3 {
		t.Fatalf("%d commits for %d appends, want 1 for 3", c, a)
	}
}
