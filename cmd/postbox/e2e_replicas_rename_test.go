package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"

	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	"github.com/harmony-postbox/postbox/gen/protocol/sync/v1/syncv1connect"
)

// TestRenameAcrossReplicas: two replicas of one server on the stand-in
// (24.10) federate with four Postbox peers, each peer's outbound work on
// its owner. `postbox rename` at one replica renames the server at both:
// each peer gets NotifyNewId once, from its owner (that replica logs the
// acceptance); events sent through either replica afterwards arrive under
// the new ID; and events the peers send to the new ID, which routes to the
// replica the rename was not issued at, are taken there (the new ID is an
// audience of its tokens). `postbox audit --store` passes.
func TestRenameAcrossReplicas(t *testing.T) {
	e2eSetup(t)
	store := startStandin(t, "24.10")
	keyPath := filepath.Join(t.TempDir(), "key.ed25519")
	r1 := newE2ENode(t, "R1", "", "--store", store, "--replica", "r1", "--key-file", keyPath)
	r1.start()
	r2 := newE2ENode(t, "R2", r1.id, "--store", store, "--replica", "r2", "--key-file", keyPath)
	r2.start()
	reps := map[string]*e2eNode{"r1": r1, "r2": r2}
	oldID := r1.id
	// Both see both (r1 reads heartbeats every quarter lease), so that
	// they agree on each peer's owner from the first event on.
	for _, r := range reps {
		e2eWait(t, 10*time.Second, r.name+" to see both replicas live", func() (bool, string) {
			return strings.Contains(string(rnrMust(os.ReadFile(r.logPath))), `live="[r1 r2]"`), "not yet"
		})
	}

	const nPeers = 4
	var peers []*e2eNode
	notices := map[string]*rnrNoticeCounter{}
	for i := range nPeers {
		ln := e2eListen(t)
		p := newE2ENode(t, fmt.Sprintf("P%d", i+1), ln.Addr().String())
		notices[p.id] = rnrServeNoticeCounter(t, ln, p.listen)
		p.start()
		peers = append(peers, p)
	}
	for i, p := range peers {
		rnrSend(t, []*e2eNode{r1, r2}[i%2], p.id, 1)
	}
	for _, p := range peers {
		e2eWait(t, 30*time.Second, p.name+" to receive its first event", func() (bool, string) {
			got := watchUsers(t, p)
			return len(got) == 1, fmt.Sprint(got)
		})
	}

	// Rename at a replica that does not own every peer, so that the other
	// rnrMust tell some of them; the new ID routes to the other replica.
	owners := rnrOwners(t, r1, nPeers)
	at, other := r1, r2
	if !slices.ContainsFunc(peers, func(p *e2eNode) bool { return owners[p.id] == "r2" }) {
		at, other = r2, r1
	}
	newID := newE2EProxy(t, other.listen).addr
	t.Logf("owners %v; rename at %s to %s, which routes to %s", owners, at.name, newID, other.name)
	if out, errOut, code := runCLI(t, "rename", "--admin", at.admin, newID); code != 0 {
		t.Fatalf("postbox rename %s at %s: exit %d, %q\n%s", newID, at.name, code, out, errOut)
	}
	for _, p := range peers {
		e2eWait(t, 30*time.Second, p.name+" to accept the rename", func() (bool, string) {
			peer := rnrPeer(t, p, newID)
			return peer != nil && slices.Equal(peer.GetFormerServerIds(), []string{oldID}), fmt.Sprint(peer)
		})
	}
	for _, r := range []*e2eNode{r1, r2} {
		e2eWait(t, 10*time.Second, r.name+" to record every acceptance", func() (bool, string) {
			out, _, _ := runCLI(t, "peers", "--json", "--admin", r.admin)
			return strings.Count(out, `"knowsOurServerId":true`) == nPeers, out
		})
	}
	time.Sleep(time.Second) // a repeated notice would come now
	accepted := regexp.MustCompile(`msg="peer accepted our new ID" peer=(\S+)`)
	for _, p := range peers {
		if n := notices[p.id].count(); n != 1 {
			t.Errorf("%s got NotifyNewId %d times, want once", p.name, n)
		}
		owner := owners[p.id]
		for name, r := range reps {
			log, _ := os.ReadFile(r.logPath)
			var told int
			for _, m := range accepted.FindAllStringSubmatch(string(log), -1) {
				if m[1] == p.id {
					told++
				}
			}
			if want := map[bool]int{true: 1, false: 0}[name == owner]; told != want {
				t.Errorf("%s logged %d acceptances of %s (owned by %s), want %d", r.name, told, p.name, owner, want)
			}
		}
	}

	// Sent through either replica, events arrive under the new ID.
	for i, p := range peers {
		rnrSend(t, r1, p.id, uint64(100+i))
		rnrSend(t, r2, p.id, uint64(200+i))
	}
	for i, p := range peers {
		want := []uint64{1, uint64(100 + i), uint64(200 + i)}
		e2eWait(t, 30*time.Second, p.name+" to receive the events sent after the rename", func() (bool, string) {
			got := watchUsers(t, p)
			return len(got) >= len(want), fmt.Sprint(got)
		})
		if got := watchUsers(t, p); !slices.Equal(got, want) {
			t.Errorf("%s holds %v, want %v", p.name, got, want)
		}
		if from := rnrWatchFrom(t, p); !slices.Equal(from, []string{newID, newID, newID}) {
			t.Errorf("%s's events come from %v, want the new ID %s for all (a rename shows the current ID)", p.name, from, newID)
		}
	}
	// Sent to the new ID, events reach the other replica and are taken.
	for i, p := range peers {
		rnrSend(t, p, newID, uint64(300+i))
	}
	for _, p := range peers {
		e2eWait(t, 30*time.Second, p.name+"'s event to the new ID delivered", func() (bool, string) {
			peer := rnrPeer(t, p, newID)
			return peer != nil && peer.GetDelivered() == 1, fmt.Sprint(peer)
		})
	}
	for _, r := range []*e2eNode{r1, r2} {
		for _, line := range strings.Split(string(rnrMust(os.ReadFile(r.logPath))), "\n") {
			if strings.Contains(line, "peer-renamed") {
				t.Errorf("%s sent under the old ID after the rename: %s", r.name, line)
			}
		}
	}
	if out, errOut, code := runCLI(t, "audit", "--store", store); code != 0 {
		t.Fatalf("audit --store: exit %d\n%s\n%s", code, out, errOut)
	}
}

func rnrMust[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// rnrSend sends one event for user to peer through n's admin API.
func rnrSend(t *testing.T, n *e2eNode, to string, user uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	if _, err := n.admins.Send(ctx, connect.NewRequest(&adminv1.SendRequest{To: to, Event: e2eEvent(user)})); err != nil {
		t.Fatalf("send %d to %s through %s: %v", user, to, n.name, err)
	}
}

// rnrOwners is each peer's owner replica, once r's peers --json names an
// owner for all n.
func rnrOwners(t *testing.T, r *e2eNode, n int) map[string]string {
	t.Helper()
	owners := map[string]string{}
	e2eWait(t, 10*time.Second, "an owner for every peer", func() (bool, string) {
		clear(owners)
		for _, p := range rnrPeersJSON(t, r) {
			if p.GetOwner() != "" {
				owners[p.GetServerId()] = p.GetOwner()
			}
		}
		return len(owners) == n, fmt.Sprint(owners)
	})
	return owners
}

func rnrPeersJSON(t *testing.T, n *e2eNode) []*adminv1.Peer {
	t.Helper()
	out, errOut, code := runCLI(t, "peers", "--json", "--admin", n.admin)
	if code != 0 {
		t.Fatalf("peers --json at %s: exit %d\n%s", n.name, code, errOut)
	}
	var peers []*adminv1.Peer
	for line := range strings.Lines(out) {
		p := &adminv1.Peer{}
		if err := protojson.Unmarshal([]byte(line), p); err != nil {
			t.Fatal(err)
		}
		peers = append(peers, p)
	}
	return peers
}

// rnrPeer is n's entry for server id, or nil.
func rnrPeer(t *testing.T, n *e2eNode, id string) *adminv1.Peer {
	t.Helper()
	for _, p := range rnrPeersJSON(t, n) {
		if p.GetServerId() == id {
			return p
		}
	}
	return nil
}

// rnrWatchFrom is the sender of each event n received, in order.
func rnrWatchFrom(t *testing.T, n *e2eNode) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	stream, err := n.admins.Watch(ctx, connect.NewRequest(&adminv1.WatchRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	var from []string
	for stream.Receive() {
		if ev := stream.Msg().GetEvent(); ev != nil {
			from = append(from, ev.GetFrom())
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	return from
}

// rnrNoticeCounter forwards everything to a server and counts the
// NotifyNewId requests it answered OK.
type rnrNoticeCounter struct {
	mu sync.Mutex
	n  int
}

func (c *rnrNoticeCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// rnrOKRecorder notes whether the response status is 200.
type rnrOKRecorder struct {
	http.ResponseWriter
	status int
}

func (w *rnrOKRecorder) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// rnrServeNoticeCounter serves a rnrNoticeCounter on ln, forwarding to target
// (host:port); it stops in t.Cleanup.
func rnrServeNoticeCounter(t *testing.T, ln net.Listener, target string) *rnrNoticeCounter {
	t.Helper()
	c := &rnrNoticeCounter{}
	u := &url.URL{Scheme: "http", Host: target}
	transport := &http.Transport{}
	fwd := &httputil.ReverseProxy{
		Rewrite:      func(r *httputil.ProxyRequest) { r.SetURL(u); r.Out.Host = r.In.Host },
		Transport:    transport,
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, _ error) { w.WriteHeader(http.StatusBadGateway) },
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != syncv1connect.PostboxServiceNotifyNewIdProcedure {
			fwd.ServeHTTP(w, r)
			return
		}
		rec := &rnrOKRecorder{ResponseWriter: w, status: http.StatusOK}
		fwd.ServeHTTP(rec, r)
		if rec.status == http.StatusOK {
			c.mu.Lock()
			c.n++
			c.mu.Unlock()
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = srv.Close()
		transport.CloseIdleConnections()
	})
	return c
}
