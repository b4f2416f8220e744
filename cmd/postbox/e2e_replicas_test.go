package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	mathrand "math/rand"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/authtoken"
	"github.com/harmony-postbox/postbox/adapters/clock"
	"github.com/harmony-postbox/postbox/adapters/keyfile"
	"github.com/harmony-postbox/postbox/domain"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
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

// TestReplicasDeliverThroughKills: three replicas of one server on one
// EventStoreDB stand-in (24.10) take Sends for four Postbox peers and two
// upstream-style peers (in this process) at whichever replica is up, while
// replicas are killed with kill -9 and restarted on a seeded schedule.
// Every Postbox peer holds every event once and in order; every
// upstream-style peer got every event in order of first arrival, with at
// most one repeat per owner term (counted and printed); `postbox audit
// --store` passes, owner-terms included; and `postbox peers --json` names
// each peer's owner.
func TestReplicasDeliverThroughKills(t *testing.T) {
	e2eSetup(t)
	store := startStandin(t, "24.10")
	keyPath := filepath.Join(t.TempDir(), "key.ed25519")
	var reps []*e2eNode
	for i := range 3 {
		id := ""
		if i > 0 {
			id = reps[0].id
		}
		r := newE2ENode(t, fmt.Sprintf("R%d", i+1), id, "--store", store, "--replica", "auto", "--key-file", keyPath)
		r.start()
		reps = append(reps, r)
	}
	// POSTBOX_E2E_REPLICA_LARGE=1: the larger run, 10,000 events to 20
	// Postbox peers and 5 upstream-style peers (minutes; not in CI).
	large := os.Getenv("POSTBOX_E2E_REPLICA_LARGE") == "1"
	nPostbox, nUpstream := 4, 2
	if large {
		nPostbox, nUpstream = 20, 5
	}
	var postboxes []*e2eNode
	for i := range nPostbox {
		n := newE2ENode(t, fmt.Sprintf("P%d", i+1), "")
		n.start()
		postboxes = append(postboxes, n)
	}
	var ups []*upstreamPeer
	for range nUpstream {
		ups = append(ups, newUpstreamPeer(t))
	}
	var targets []string
	for _, n := range postboxes {
		targets = append(targets, n.id)
	}
	for _, u := range ups {
		targets = append(targets, u.id)
	}
	ledgers := map[string]*e2eLedger{}
	for _, to := range targets {
		ledgers[to] = newE2ELedger()
	}

	seed := int64(12)
	rng := mathrand.New(mathrand.NewSource(seed))
	// The 2,000 events (about 25 s under -race on 2 cores);
	// POSTBOX_E2E_REPLICA_EVENTS sets another number.
	const rounds = 5
	perRound := 400
	if large {
		perRound = 10000 / rounds
	}
	if v := os.Getenv("POSTBOX_E2E_REPLICA_EVENTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < rounds {
			t.Fatalf("POSTBOX_E2E_REPLICA_EVENTS=%q: want a number of at least %d", v, rounds)
		}
		perRound = n / rounds
	}
	user := uint64(1)
	start := time.Now()
	for round := range rounds {
		if round > 0 {
			// Kill one replica and bring it back under a new name: its
			// peers move when its lease runs out.
			r := reps[rng.Intn(len(reps))]
			r.kill()
			t.Logf("round %d: killed %s", round, r.name)
			sendRound(t, reps, r, targets, ledgers, &user, perRound)
			r.start()
			continue
		}
		sendRound(t, reps, nil, targets, ledgers, &user, perRound)
	}
	total := int(user - 1)
	for _, n := range postboxes {
		want := ledgers[n.id].want(t)
		e2eWait(t, 60*time.Second, n.name+" to receive every event", func() (bool, string) {
			got := watchUsers(t, n)
			return len(got) >= len(want), fmt.Sprint(len(got), " of ", len(want))
		})
		if got := watchUsers(t, n); !slices.Equal(got, want) {
			t.Fatalf("%s holds %d events, want %d once and in order:\n got %v\nwant %v", n.name, len(got), len(want), got, want)
		}
	}
	for i, u := range ups {
		want := ledgers[u.id].want(t)
		e2eWait(t, 60*time.Second, fmt.Sprintf("upstream peer %d to receive every event", i), func() (bool, string) {
			first, _ := u.firstArrivals()
			return len(first) >= len(want), fmt.Sprint(len(first), " of ", len(want))
		})
		first, repeats := u.firstArrivals()
		if !slices.Equal(first, want) {
			t.Fatalf("upstream peer %d: events in order of first arrival %v, want %v", i, first, want)
		}
		changes := ownerChanges(t, reps[0], u.id)
		t.Logf("upstream peer %d: %d events, %d repeated, %d owner term(s)", i, len(first), repeats, changes)
		if repeats > changes {
			t.Errorf("upstream peer %d: %d repeats over %d owner terms; want at most one per term", i, repeats, changes)
		}
	}
	t.Logf("%d events to %d peers through %d kills in %v", total, len(targets), rounds-1, time.Since(start).Round(time.Millisecond))
	if out, errOut, code := runCLI(t, "audit", "--store", store); code != 0 {
		t.Fatalf("audit --store: exit %d\n%s\n%s", code, out, errOut)
	}
	// Any replica's peers --json names each peer's owner: a replica's name
	// (generated by --replica auto: host name and instance ID).
	for _, r := range reps {
		e2eWait(t, 10*time.Second, r.name+"'s peers --json to name every owner", func() (bool, string) {
			out, errOut, code := runCLI(t, "peers", "--json", "--admin", r.admin)
			if code != 0 {
				return false, errOut
			}
			return len(ownerField.FindAllString(out, -1)) == len(targets), out
		})
	}
}

// ownerField is how peers --json names a peer's owner replica.
var ownerField = regexp.MustCompile(`"owner":"[A-Za-z0-9._-]+-[0-9a-f]{8}"`)

// sendRound sends n events, spread over targets, through the replicas
// other than down, each event's sequence number recorded in its target's
// ledger.
func sendRound(t *testing.T, reps []*e2eNode, down *e2eNode, targets []string, ledgers map[string]*e2eLedger, user *uint64, n int) {
	t.Helper()
	var up []*e2eNode
	for _, r := range reps {
		if r != down {
			up = append(up, r)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(targets))
	for ti, to := range targets {
		var users []uint64
		for i := ti; i < n; i += len(targets) {
			users = append(users, *user+uint64(i))
		}
		wg.Go(func() {
			for i, u := range users {
				via := up[(ti+i)%len(up)]
				ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
				res, err := via.admins.Send(ctx, connect.NewRequest(&adminv1.SendRequest{To: to, Event: e2eEvent(u)}))
				cancel()
				if err == nil {
					err = ledgers[to].record(res.Msg.GetSeq(), u)
				}
				if err != nil {
					errs <- fmt.Errorf("send %d to %s through %s: %w", u, to, via.name, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	*user += uint64(n)
}

// ownerChanges is the term of the peer's owner, which grows by one at each
// change, as postbox peers --json on r says.
func ownerChanges(t *testing.T, r *e2eNode, peer string) int {
	t.Helper()
	out, errOut, code := runCLI(t, "peers", "--json", "--admin", r.admin)
	if code != 0 {
		t.Fatalf("peers --json: exit %d\n%s", code, errOut)
	}
	for line := range strings.Lines(out) {
		p := &adminv1.Peer{}
		if err := protojson.Unmarshal([]byte(line), p); err != nil {
			t.Fatal(err)
		}
		if p.GetServerId() == peer {
			return int(p.GetOwnerTerm())
		}
	}
	t.Fatalf("peers --json lists no %s:\n%s", peer, out)
	return 0
}

// upstreamPeer is an upstream-style receiver (it takes one event per push,
// announces nothing, checks no continuity): it records the user ID of
// every event pushed, in arrival order, and answers Pull with nothing.
type upstreamPeer struct {
	id  string
	mu  sync.Mutex
	got []uint64
}

func newUpstreamPeer(t *testing.T) *upstreamPeer {
	t.Helper()
	u := &upstreamPeer{}
	ln := e2eListen(t)
	u.id = ln.Addr().String()
	srv := &http.Server{Handler: u, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return u
}

func (u *upstreamPeer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var reply proto.Message
	switch r.URL.Path {
	case e2ePushPath:
		req := &syncv1.PushRequest{}
		if err := proto.Unmarshal(body, req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		u.mu.Lock()
		u.got = append(u.got, req.GetEvent().GetUserAddedToGuild().GetUserId())
		u.mu.Unlock()
		reply = &syncv1.PushResponse{}
	case e2ePullPath:
		reply = &syncv1.PullResponse{}
	default:
		http.NotFound(w, r)
		return
	}
	out, _ := proto.Marshal(reply)
	w.Header().Set("Content-Type", "application/hrpc")
	_, _ = w.Write(out)
}

// firstArrivals returns the events in order of first arrival, and how
// many arrivals repeated an earlier one.
func (u *upstreamPeer) firstArrivals() (first []uint64, repeats int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	seen := map[uint64]bool{}
	for _, v := range u.got {
		if seen[v] {
			repeats++
			continue
		}
		seen[v] = true
		first = append(first, v)
	}
	return first, repeats
}
