package esdb_test

import (
	"log/slog"
	"net/url"
	"os"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb/fakestreams"
	"github.com/harmony-postbox/postbox/adapters/eventstore/storetest"
)

// realServerEnv names the variable that points the conformance suite at a
// real EventStoreDB, e.g. esdb://localhost:2113?tls=false.
const realServerEnv = "POSTBOX_TEST_ESDB_URL"

// harness opens one adapter per test on the server at conn; every test uses
// streams of its own, so they can share the server. Reopen opens a new
// adapter on the same server, as a restarted Postbox would.
func harness(conn string) storetest.Harness {
	open := func(t *testing.T) eventstore.Store {
		t.Helper()
		s, err := esdb.Open(t.Context(), conn, leveledTestLogger(t, slog.LevelWarn))
		if err != nil {
			t.Fatalf("open the adapter: %v", err)
		}
		return s
	}
	return storetest.Harness{
		Open:   open,
		Reopen: func(t *testing.T, _ eventstore.Store) eventstore.Store { return open(t) },
	}
}

// supportedProfiles are the stand-in's server versions the adapter works
// with; every other profile must be refused at Open.
var supportedProfiles = []string{"22.10", "23.10", "24.10", "24.10.4", "25.1"}

// TestConformanceWithTestDouble runs the store conformance suite through the
// real client against fakestreams, the in-process test double of the gRPC
// streams API, once per modelled server version the adapter supports. It is
// not a real server; see TestConformanceWithRealServer.
func TestConformanceWithTestDouble(t *testing.T) {
	for _, profile := range supportedProfiles {
		t.Run(profile, func(t *testing.T) {
			t.Parallel()
			t.Logf("conformance suite: adapter and real client against the in-process test double (fakestreams) modelling server version %s, not a real server", profile)
			srv := fakestreams.StartServer(t, fakestreams.Options{Profile: profile})
			storetest.Run(t, harness(srv.ConnString()))
		})
	}
}

// TestConformanceWithRealServer runs the suite against the EventStoreDB
// server named by POSTBOX_TEST_ESDB_URL, and is skipped without it.
func TestConformanceWithRealServer(t *testing.T) {
	conn := os.Getenv(realServerEnv)
	if conn == "" {
		t.Skipf("conformance suite against a real EventStoreDB server skipped: set %s to run it, e.g. %s='esdb://localhost:2113?tls=false'", realServerEnv, realServerEnv)
	}
	t.Logf("conformance suite: adapter and real client against the real EventStoreDB server at %s", redact(conn))
	storetest.Run(t, harness(conn))
}

// redact hides a password in a connection string for the log.
func redact(conn string) string {
	u, err := url.Parse(conn)
	if err != nil {
		return "(unparsable connection string)"
	}
	return u.Redacted()
}
