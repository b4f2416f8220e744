package embedded_test

import (
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
