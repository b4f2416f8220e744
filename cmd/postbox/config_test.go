package main

import (
	"errors"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/httpserver"
	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/domain"
)

func envOf(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

func TestParseServeConfigDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := parseServeConfig(nil, io.Discard, envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ServerIDGiven {
		t.Error("ServerIDGiven with no flag and no variable")
	}
	if cfg.ServerID != domain.MustParseServerID("localhost:2289") {
		t.Errorf("ServerID = %s", cfg.ServerID)
	}
	if cfg.Listen != ":2289" || cfg.AdminListen != "127.0.0.1:2290" || cfg.DataDir != "./postbox-data" {
		t.Errorf("listeners/data dir = %q %q %q", cfg.Listen, cfg.AdminListen, cfg.DataDir)
	}
	if cfg.KeyFile != filepath.Join("./postbox-data", "key.ed25519") {
		t.Errorf("KeyFile = %q", cfg.KeyFile)
	}
	if cfg.Delivery.RetainDelivered != 0 {
		t.Errorf("RetainDelivered = %v by default, want 0 (keep everything)", cfg.Delivery.RetainDelivered)
	}
	if c, err := parseServeConfig([]string{"--retain-delivered", "1s"}, io.Discard, envOf(nil)); err != nil || c.Delivery.RetainDelivered != time.Second {
		t.Errorf("--retain-delivered 1s: %v, %v", c.Delivery.RetainDelivered, err)
	}
	if cfg.InsecurePeers || cfg.RequireExt || cfg.AuthWindow != 60*time.Second || cfg.PeerProtocol != peerclient.HRPC || cfg.MaxRequest != 4<<20 {
		t.Errorf("defaults = %+v", cfg)
	}
}

func TestParseServeConfigAdmission(t *testing.T) {
	t.Parallel()
	// Given no admission flags, the server gets the defaults: all callers'
	// budget and a peer's share derived from the request limit, 8 KiB a 10 s.
	cfg, err := parseServeConfig(nil, io.Discard, envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := httpserver.Admission{MinBodyBytes: 8 << 10, BodyWindow: 10 * time.Second}
	if got := provideAdmission(cfg); got != want {
		t.Errorf("default admission = %+v, want %+v", got, want)
	}
	// When each is given, by flag or variable, the server gets it.
	cfg, err = parseServeConfig([]string{"--max-inflight-bytes", "67108864", "--max-peer-inflight-bytes", "8388608", "--min-body-bytes", "1024"}, io.Discard,
		envOf(map[string]string{"POSTBOX_BODY_WINDOW": "5s"}))
	if err != nil {
		t.Fatal(err)
	}
	want = httpserver.Admission{InflightBytes: 64 << 20, PeerBytes: 8 << 20, MinBodyBytes: 1024, BodyWindow: 5 * time.Second}
	if got := provideAdmission(cfg); got != want {
		t.Errorf("admission = %+v, want %+v", got, want)
	}
	// A peer's budget may be as small as the request limit or as large as
	// all callers' budget.
	for _, peer := range []string{"2048", "8192"} {
		if _, err := parseServeConfig([]string{"--max-request-bytes", "2048", "--max-inflight-bytes", "8192", "--max-peer-inflight-bytes", peer}, io.Discard, envOf(nil)); err != nil {
			t.Errorf("--max-peer-inflight-bytes %s: %v", peer, err)
		}
	}
}

func TestParseServeConfigEnvironment(t *testing.T) {
	t.Parallel()
	env := envOf(map[string]string{
		"POSTBOX_SERVER_ID":               "Chat.Example.org:443",
		"POSTBOX_LISTEN":                  "127.0.0.1:9000",
		"POSTBOX_ADMIN_LISTEN":            "127.0.0.1:9001",
		"POSTBOX_DATA_DIR":                "/var/lib/postbox",
		"POSTBOX_INSECURE_PEERS":          "true",
		"POSTBOX_AUTH_WINDOW":             "30s",
		"POSTBOX_ALLOW_PEERS":             "a.example, *.b.example",
		"POSTBOX_BLOCK_PEERS":             "bad.example:1",
		"POSTBOX_REQUIRE_TOKEN_EXTENSION": "1",
		"POSTBOX_ADMIN_TOKEN":             "s3cret",
		"POSTBOX_PEER_PROTOCOL":           "grpc",
		"POSTBOX_MAX_REQUEST_BYTES":       "1024",
	})
	cfg, err := parseServeConfig(nil, io.Discard, env)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.ServerIDGiven || cfg.ServerID.String() != "chat.example.org:443" {
		t.Errorf("ServerID = %s given=%v", cfg.ServerID, cfg.ServerIDGiven)
	}
	if cfg.Listen != "127.0.0.1:9000" || cfg.AdminListen != "127.0.0.1:9001" || cfg.DataDir != "/var/lib/postbox" {
		t.Errorf("listeners/data dir = %q %q %q", cfg.Listen, cfg.AdminListen, cfg.DataDir)
	}
	if cfg.KeyFile != "/var/lib/postbox/key.ed25519" {
		t.Errorf("KeyFile = %q, want it inside POSTBOX_DATA_DIR", cfg.KeyFile)
	}
	if !cfg.InsecurePeers || !cfg.RequireExt || cfg.AuthWindow != 30*time.Second || cfg.AdminToken != "s3cret" ||
		cfg.PeerProtocol != peerclient.GRPC || cfg.MaxRequest != 1024 {
		t.Errorf("cfg = %+v", cfg)
	}
	if !slices.Equal(cfg.AllowPeers, []string{"a.example", "*.b.example"}) || !slices.Equal(cfg.BlockPeers, []string{"bad.example:1"}) {
		t.Errorf("allow %q block %q", cfg.AllowPeers, cfg.BlockPeers)
	}
}

func TestParseServeConfigFlagOverridesEnvironment(t *testing.T) {
	t.Parallel()
	env := envOf(map[string]string{
		"POSTBOX_SERVER_ID":      "env.example:1",
		"POSTBOX_LISTEN":         "127.0.0.1:1",
		"POSTBOX_INSECURE_PEERS": "true",
		"POSTBOX_ALLOW_PEERS":    "env.example",
		"POSTBOX_KEY_FILE":       "/env/key",
	})
	cfg, err := parseServeConfig([]string{
		"--server-id", "flag.example:2", "--listen=127.0.0.1:2", "--insecure-peers=false",
		"--allow-peers", "flag.example", "--allow-peers", "other.example", "--key-file", "/flag/key",
	}, io.Discard, env)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ServerID.String() != "flag.example:2" || !cfg.ServerIDGiven {
		t.Errorf("ServerID = %s given=%v", cfg.ServerID, cfg.ServerIDGiven)
	}
	if cfg.Listen != "127.0.0.1:2" || cfg.InsecurePeers || cfg.KeyFile != "/flag/key" {
		t.Errorf("cfg = %+v", cfg)
	}
	// A list given on the command line replaces the variable's, as every
	// other flag does; it does not add to it.
	if !slices.Equal(cfg.AllowPeers, []string{"flag.example", "other.example"}) {
		t.Errorf("AllowPeers = %q, want the flag's list only", cfg.AllowPeers)
	}
}

func TestParseServeConfigPeerSecurity(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		args      []string
		env       map[string]string
		plaintext bool
		networks  []string
	}{
		{"default: TLS, public addresses only", nil, nil, false, nil},
		{"plaintext alone allows no network", []string{"--plaintext-peers"}, nil, true, nil},
		{"networks alone keep TLS", []string{"--allow-peer-networks", "127.0.0.0/8, 10.1.2.3"}, nil, false, []string{"127.0.0.0/8", "10.1.2.3/32"}},
		{"networks from the environment", nil, map[string]string{"POSTBOX_ALLOW_PEER_NETWORKS": "fd00::/8"}, false, []string{"fd00::/8"}},
		{"--insecure-peers is both, every network", []string{"--insecure-peers"}, nil, true, []string{"0.0.0.0/0", "::/0"}},
	} {
		cfg, err := parseServeConfig(tc.args, io.Discard, envOf(tc.env))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var networks []string
		for _, p := range cfg.PeerNetworks {
			networks = append(networks, p.String())
		}
		if cfg.PlaintextPeers != tc.plaintext || !slices.Equal(networks, tc.networks) {
			t.Errorf("%s: plaintext %v, networks %q; want %v, %q", tc.name, cfg.PlaintextPeers, networks, tc.plaintext, tc.networks)
		}
	}
}

func TestParseServeConfigServerIDGivenByFlag(t *testing.T) {
	t.Parallel()
	cfg, err := parseServeConfig([]string{"--server-id", "localhost:2289"}, io.Discard, envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	// Given explicitly, even though it equals the default.
	if !cfg.ServerIDGiven {
		t.Error("ServerIDGiven false for an explicit --server-id")
	}
}

func TestParseServeConfigEventLimitFollowsARequestLimit(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want int
	}{
		{nil, 512 << 10},
		{[]string{"--max-request-bytes", "262144"}, 262144 - 1024},
		{[]string{"--max-request-bytes", "262144", "--max-event-bytes", "1000"}, 1000},
	} {
		cfg, err := parseServeConfig(tc.args, io.Discard, envOf(nil))
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Delivery.MaxEventBytes != tc.want {
			t.Errorf("%q: MaxEventBytes = %d, want %d", tc.args, cfg.Delivery.MaxEventBytes, tc.want)
		}
	}
}

func TestParseServeConfigRefuses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"server ID without port", []string{"--server-id", "example.org"}, nil, "--server-id"},
		{"server ID with scheme", []string{"--server-id", "https://example.org:2289"}, nil, "--server-id"},
		{"server ID with path", []string{"--server-id", "example.org:2289/x"}, nil, "--server-id"},
		{"server ID port out of range", []string{"--server-id", "example.org:65536"}, nil, "--server-id"},
		{"bad server ID from the environment", nil, map[string]string{"POSTBOX_SERVER_ID": "not an id"}, "--server-id"},
		{"bad bool in the environment", nil, map[string]string{"POSTBOX_INSECURE_PEERS": "maybe"}, "POSTBOX_INSECURE_PEERS"},
		{"bad duration in the environment", nil, map[string]string{"POSTBOX_AUTH_WINDOW": "soon"}, "POSTBOX_AUTH_WINDOW"},
		{"unknown flag", []string{"--no-such-flag"}, nil, "no-such-flag"},
		{"stray argument", []string{"extra"}, nil, "unexpected arguments"},
		{"bad protocol", []string{"--peer-protocol", "smtp"}, nil, "--peer-protocol"},
		{"zero window", []string{"--auth-window", "0s"}, nil, "--auth-window"},
		{"negative request limit", []string{"--max-request-bytes", "-1"}, nil, "--max-request-bytes"},
		{"event limit over the request limit", []string{"--max-request-bytes", "1048576", "--max-event-bytes", "1048576"}, nil, "--max-event-bytes 1048576"},
		{"event limit over a Pull reply", []string{"--max-request-bytes", "16777216", "--max-event-bytes", "4194304"}, nil, "a Pull reply"},
		{"zero event limit", []string{"--max-event-bytes", "0"}, nil, "--max-event-bytes 0"},
		{"bodies in flight below the request limit", []string{"--max-request-bytes", "2048", "--max-inflight-bytes", "2047"}, nil, "--max-inflight-bytes 2047 is below --max-request-bytes 2048"},
		{"a peer's bodies in flight below the request limit", []string{"--max-request-bytes", "2048", "--max-peer-inflight-bytes", "2047"}, nil, "--max-peer-inflight-bytes 2047 is below --max-request-bytes 2048"},
		{"a peer's bodies in flight above all callers'", []string{"--max-inflight-bytes", "8192", "--max-request-bytes", "2048", "--max-peer-inflight-bytes", "8193"}, nil, "--max-peer-inflight-bytes 8193 is above --max-inflight-bytes 8192"},
		{"a peer's bodies in flight above the default for all callers", []string{"--max-peer-inflight-bytes", "67108865"}, nil, "--max-peer-inflight-bytes 67108865 is above --max-inflight-bytes 67108864"},
		{"zero body bytes", []string{"--min-body-bytes", "0"}, nil, "--min-body-bytes 0: must be positive; e.g. --min-body-bytes 8192"},
		{"zero body window", []string{"--body-window", "0s"}, nil, "--body-window 0s: must be positive; e.g. --body-window 10s"},
		{"negative push retries", []string{"--push-retries", "-1"}, nil, "--push-retries"},
		{"negative retention", []string{"--retain-delivered", "-1s"}, nil, "--retain-delivered -1s: must be 0 (keep everything) or positive; e.g. --retain-delivered 720h"},
		{"negative received retention", []string{"--retain-received", "-1s"}, nil, "--retain-received -1s: must be 0 (keep everything) or positive; e.g. --retain-received 720h"},
		{"zero pull interval from the environment", nil, map[string]string{"POSTBOX_PULL_INTERVAL": "0s"}, "--pull-interval"},
		{"replica mode on the embedded store", []string{"--replica", "pod-1"}, nil, "--replica pod-1: replicas of one server share one EventStoreDB"},
		{"a replica name with a space", []string{"--store", "esdb://127.0.0.1:2113?tls=false", "--replica", "pod 1"}, nil, "--replica"},
		{"a replica lease without --replica", []string{"--store", "esdb://127.0.0.1:2113?tls=false", "--replica-lease", "5s"}, nil, "--replica-lease 5s is for replicas"},
		{"a replica lease under a second", []string{"--store", "esdb://127.0.0.1:2113?tls=false", "--replica", "pod-1", "--replica-lease", "900ms"}, nil, "--replica-lease 900ms: must be at least 1s"},
		{"a name as a peer network", []string{"--allow-peer-networks", "10.0.0.0/8,intranet"}, nil, "--allow-peer-networks"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := parseServeConfig(tc.args, io.Discard, envOf(tc.env))
			if err == nil {
				t.Fatal("accepted")
			}
			var exit exitError
			if !errors.As(err, &exit) || exit.code != 2 || exitCode(err) != 2 {
				t.Errorf("err = %#v, want a usage error (exit status 2)", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %q, want it to name %q", err, tc.want)
			}
		})
	}
}

func TestParseServeConfigReplica(t *testing.T) {
	t.Parallel()
	store := "esdb://127.0.0.1:2113?tls=false"
	if cfg, err := parseServeConfig([]string{"--store", store}, io.Discard, envOf(nil)); err != nil || cfg.Replica != "" {
		t.Fatalf("without --replica: replica %q, %v; want a single process", cfg.Replica, err)
	}
	cfg, err := parseServeConfig([]string{"--store", store, "--replica", "pod-1"}, io.Discard, envOf(nil))
	if err != nil || cfg.Replica != "pod-1" || cfg.ReplicaLease != 10*time.Second {
		t.Fatalf("--replica pod-1: replica %q, lease %v, %v; want the 10 s lease by default", cfg.Replica, cfg.ReplicaLease, err)
	}
	cfg, err = parseServeConfig([]string{"--store", store, "--replica", "pod-1"}, io.Discard, envOf(map[string]string{"POSTBOX_REPLICA_LEASE": "3s"}))
	if err != nil || cfg.ReplicaLease != 3*time.Second {
		t.Fatalf("POSTBOX_REPLICA_LEASE=3s: lease %v, %v", cfg.ReplicaLease, err)
	}
	// auto: the host name and a random instance ID, new each time.
	a, errA := parseServeConfig([]string{"--store", store, "--replica", "auto"}, io.Discard, envOf(nil))
	b, errB := parseServeConfig(nil, io.Discard, envOf(map[string]string{"POSTBOX_STORE": store, "POSTBOX_REPLICA": "auto"}))
	if errA != nil || errB != nil || a.Replica == "" || a.Replica == "auto" || a.Replica == b.Replica {
		t.Fatalf("--replica auto twice: %q (%v), %q (%v); want two generated names", a.Replica, errA, b.Replica, errB)
	}
}

func TestParseServeConfigHelp(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	_, err := parseServeConfig([]string{"-h"}, &out, envOf(nil))
	if exitCode(err) != 0 {
		t.Errorf("-h: exit status %d, want 0", exitCode(err))
	}
	if !strings.Contains(out.String(), "-server-id") {
		t.Errorf("-h printed %q", out.String())
	}
}
