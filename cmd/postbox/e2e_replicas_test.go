package main

import (
	"crypto/rand"
	"fmt"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/authtoken"
	"github.com/harmony-postbox/postbox/adapters/clock"
	"github.com/harmony-postbox/postbox/adapters/keyfile"
	"github.com/harmony-postbox/postbox/domain"
)

// TestReplicasStartOnOneEventStoreDB: two replicas of one server (one
// server ID, one key file) start on one EventStoreDB stand-in, each
// labelling postbox_server_info with its name; a token one accepted is
// refused by the other (the nonces go through the store); and a process
// with another key, or another server ID, does not join them (exit 2,
// saying why).
func TestReplicasStartOnOneEventStoreDB(t *testing.T) {
	e2eSetup(t)
	store := startStandin(t, "24.10")
	keyPath := filepath.Join(t.TempDir(), "key.ed25519")
	r1 := newE2ENode(t, "R1", "", "--store", store, "--replica", "r1", "--key-file", keyPath)
	r1.start()
	r2 := newE2ENode(t, "R2", r1.id, "--store", store, "--replica", "r2", "--key-file", keyPath)
	r2.start()
	a := newE2ENode(t, "A", "")
	a.start()

	version := strings.TrimPrefix(strings.TrimSpace(func() string { out, _, _ := runCLI(t, "version"); return out }()), "postbox ")
	for _, r := range []struct {
		node *e2eNode
		name string
	}{{r1, "r1"}, {r2, "r2"}} {
		status, m := opScrape(t, r.node.admin, "")
		if status != http.StatusOK {
			t.Fatalf("GET /metrics on %s: %d", r.node.name, status)
		}
		opCheckSamples(t, r.node.name+"'s /metrics", m, map[string]float64{
			`postbox_server_info{replica="` + r.name + `",server_id="` + r1.id + `",version="` + version + `"}`: 1,
		})
	}

	key, err := keyfile.Load(filepath.Join(a.dataDir, "key.ed25519"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := authtoken.NewSigner(key.PrivateKey, clock.System{}, rand.Reader).
		Extended(domain.MustParseServerID(a.id), domain.MustParseServerID(r1.id), "")
	if err != nil {
		t.Fatal(err)
	}
	if code, body := r1.rawPull(tok); code != http.StatusOK {
		t.Fatalf("a Pull from A at R1: HTTP %d %s", code, body)
	}
	if code, body := r2.rawPull(tok); code != http.StatusBadRequest || !strings.Contains(body, "postbox.token-replayed") {
		t.Errorf("the same token at R2: HTTP %d %s, want 400 postbox.token-replayed", code, body)
	}

	// Another server ID is refused before the replicas are asked: the
	// store holds the server's ID, and a new one without --rename is
	// refused as for any restart.
	for _, tc := range []struct {
		name, want string
		flags      []string
	}{
		{"another key", "every replica of a server needs the same --server-id and key file", []string{"--server-id", r1.id}},
		{"another server ID", "this server is " + r1.id, []string{"--server-id", "127.0.0.1:1", "--key-file", keyPath}},
	} {
		args := append([]string{"serve", "--insecure-peers", "--listen", loopback(e2eFreePort(t)),
			"--admin-listen", loopback(e2eFreePort(t)), "--data-dir", t.TempDir(), "--store", store, "--replica", "r3"}, tc.flags...)
		start := time.Now()
		_, errOut, code := runCLI(t, args...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("a replica with %s: exit %d\n%s\nwant exit 2 naming the mismatch", tc.name, code, errOut)
		}
		t.Logf("a replica with %s refused in %v", tc.name, time.Since(start).Round(time.Millisecond))
	}
}

// TestReplicasDeliverThroughKills: two replicas of one server on one
// EventStoreDB stand-in take Sends for Postbox peer B at either, while
// each in turn is killed with kill -9 and restarted: B holds every event
// once and in order (the peer's owner runs its pushes, the other takes it
// over when the owner's lease runs out), `postbox audit --store` passes,
// and `postbox peers --json` on either replica names B's owner.
func TestReplicasDeliverThroughKills(t *testing.T) {
	e2eSetup(t)
	store := startStandin(t, "24.10")
	keyPath := filepath.Join(t.TempDir(), "key.ed25519")
	r1 := newE2ENode(t, "R1", "", "--store", store, "--replica", "auto", "--key-file", keyPath)
	r1.start()
	r2 := newE2ENode(t, "R2", r1.id, "--store", store, "--replica", "auto", "--key-file", keyPath)
	r2.start()
	b := newE2ENode(t, "B", "")
	b.start()

	ledger := newE2ELedger()
	const step = 100
	start := time.Now()
	r1.sendMany(b, ledger, e2eUsers(1, step))
	r2.sendMany(b, ledger, e2eUsers(1+step, step))
	r1.kill()
	r2.sendMany(b, ledger, e2eUsers(1+2*step, step))
	r1.start()
	r2.kill()
	r1.sendMany(b, ledger, e2eUsers(1+3*step, step))
	r2.start()
	r2.sendMany(b, ledger, e2eUsers(1+4*step, step))
	want := ledger.want(t)
	e2eWait(t, 60*time.Second, "B to receive every event", func() (bool, string) {
		got := watchUsers(t, b)
		return len(got) >= len(want), fmt.Sprint(len(got))
	})
	t.Logf("%d events through two kills in %v", len(want), time.Since(start).Round(time.Millisecond))
	got := watchUsers(t, b)
	if len(got) != len(want) {
		t.Fatalf("B received %d events, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("B's event %d is user %d, want %d: not once and in order", i, got[i], want[i])
		}
	}
	if out, errOut, code := runCLI(t, "audit", "--store", store); code != 0 {
		t.Fatalf("audit --store: exit %d\n%s\n%s", code, out, errOut)
	}
	// Either replica's peers --json names B's owner: a replica's name
	// (generated by --replica auto: host name and instance ID).
	for _, r := range []*e2eNode{r1, r2} {
		e2eWait(t, 10*time.Second, r.name+"'s peers --json to name B's owner", func() (bool, string) {
			out, errOut, code := runCLI(t, "peers", "--json", "--admin", r.admin)
			if code != 0 {
				return false, errOut
			}
			return strings.Contains(out, `"serverId":"`+b.id+`"`) && ownerField.MatchString(out), out
		})
	}
}

// ownerField is how peers --json names a peer's owner replica.
var ownerField = regexp.MustCompile(`"owner":"[A-Za-z0-9._-]+-[0-9a-f]{8}"`)
