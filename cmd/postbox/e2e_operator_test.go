package main

// Multi-process tests of the operator surface (ARCHITECTURE.md "Operator
// surface", "Projections and audit"): real postbox processes on loopback,
// each on its own embedded store, looked at the way an operator does:
// `postbox audit`, `postbox peers`, `postbox watch` and /metrics on the admin
// listener. The first part of this file holds the helpers that
// e2e_rename_test.go shares.

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/harmony-postbox/postbox/adapters/delivery"
	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/hrpc"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	"github.com/harmony-postbox/postbox/gen/postbox/admin/v1/adminv1connect"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
	authv1 "github.com/harmony-postbox/postbox/gen/protocol/auth/v1"
	"github.com/harmony-postbox/postbox/gen/protocol/auth/v1/authv1connect"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
	"github.com/harmony-postbox/postbox/projections"
)

// ----- Helpers shared with e2e_rename_test.go -----

// opQuickQueue: queue mode after one attempt plus one retry (a few hundred
// milliseconds), and no resume probe, so a peer's queue is emptied by its
// Pull and by nothing else.
var opQuickQueue = []string{"--push-retries", "1", "--resume-probe=false"}

func opSetup(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs several postbox processes")
	}
	postboxBinary(t)
	t.Parallel()
}

var (
	opPortsMu sync.Mutex
	opPorts   = map[int]bool{}
)

// opPortRange is where opPort picks ports: just below the kernel's
// ephemeral range, which binds to port 0 and outbound connections draw
// from, so no other test's free port or connection takes a port between
// opPort's check and the server's bind.
func opPortRange() (low, high int) {
	high = 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil {
				high = v
			}
		}
	}
	return max(high-12000, 1024), high
}

// opPort returns a loopback port nothing listens on now, never the same
// twice in this test binary.
func opPort(t *testing.T) int {
	t.Helper()
	low, high := opPortRange()
	opPortsMu.Lock()
	defer opPortsMu.Unlock()
	for range 200 {
		var p int
		if high > low {
			p = low + mathrand.IntN(high-low)
		} else {
			p = freePort(t) // no room below the ephemeral range
		}
		if opPorts[p] {
			continue
		}
		var lc net.ListenConfig
		ln, err := lc.Listen(t.Context(), "tcp", loopback(p))
		if err != nil {
			continue
		}
		ln.Close()
		opPorts[p] = true
		return p
	}
	t.Fatal("no free loopback port after 200 tries")
	return 0
}

// opWait polls cond until it holds or within has passed; the failure names
// what was awaited and cond's last word on it.
func opWait(t *testing.T, within time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: still not after %s (%s)", what, within, state)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("waiting for %s: %v", what, t.Context().Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// opNode is one postbox server: a data directory (and so a key) that
// outlives its processes, which can be stopped and started again, on the
// same address or another.
type opNode struct {
	t       *testing.T
	name    string
	id      string // the --server-id it is started with
	listen  string
	admin   string
	dataDir string
	logPath string
	flags   []string
	renamed bool // moved since it last served: the next start passes --rename
	http    *http.Client
	api     adminv1connect.AdminServiceClient

	cmd     *exec.Cmd
	done    chan struct{} // closed once cmd has exited
	waitErr error         // cmd's exit, once done is closed
	runs    int
}

// newOpNode prepares a server whose ID is its federation listener's
// loopback address; its process is killed in t.Cleanup.
func newOpNode(t *testing.T, name string, flags ...string) *opNode {
	t.Helper()
	dir := t.TempDir()
	n := &opNode{
		t: t, name: name, admin: loopback(opPort(t)),
		dataDir: filepath.Join(dir, "data"), logPath: filepath.Join(dir, "postbox.log"),
		flags: flags, http: &http.Client{Timeout: 15 * time.Second},
	}
	n.moveTo(opPort(t))
	n.api = adminv1connect.NewAdminServiceClient(n.http, "http://"+n.admin)
	t.Cleanup(func() {
		n.kill()
		n.http.CloseIdleConnections()
		if t.Failed() {
			t.Logf("%s log, last part:\n%s", n.name, n.logTail(10000))
		}
	})
	return n
}

// moveTo makes the next start listen on port under the server ID of that
// address: a rename, if the data directory has served before.
func (n *opNode) moveTo(port int) {
	n.listen = loopback(port)
	n.id = n.listen
	n.renamed = n.runs > 0
}

func (n *opNode) running() bool {
	if n.done == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// start runs `postbox serve` and waits until both listeners answer as this
// server.
func (n *opNode) start() {
	t := n.t
	t.Helper()
	if n.running() {
		t.Fatalf("%s started twice", n.name)
	}
	n.runs++
	logFile, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(logFile, "----- %s run %d as %s -----\n", n.name, n.runs, n.id)
	args := append([]string{"serve", "--insecure-peers", "--server-id", n.id, "--listen", n.listen,
		"--admin-listen", n.admin, "--data-dir", n.dataDir}, n.flags...)
	if n.renamed {
		args = append(args, "--rename")
		n.renamed = false
	}
	cmd := exec.Command(postboxBinary(t), args...)
	cmd.Env = cleanEnv()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	err = cmd.Start()
	logFile.Close() // the child has its own descriptor
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		n.waitErr = cmd.Wait()
		close(done)
	}()
	n.cmd, n.done = cmd, done
	opWait(t, 20*time.Second, n.name+" serving as "+n.id, func() (bool, string) {
		if !n.running() {
			t.Fatalf("%s exited before serving: %v\n%s", n.name, n.waitErr, n.logTail(4000))
		}
		if err := n.checkIdentity(); err != nil {
			return false, err.Error()
		}
		return true, ""
	})
}

// checkIdentity asks both listeners who they are: the admin API must name
// n.id, the federation listener serve the same key.
func (n *opNode) checkIdentity() error {
	ctx, cancel := context.WithTimeout(n.t.Context(), 2*time.Second)
	defer cancel()
	info, err := n.api.GetServerInfo(ctx, connect.NewRequest(&adminv1.GetServerInfoRequest{}))
	if err != nil {
		return err
	}
	if info.Msg.GetServerId() != n.id {
		return fmt.Errorf("the admin listener %s is server %s, not %s", n.admin, info.Msg.GetServerId(), n.id)
	}
	var key authv1.KeyResponse
	if err := hrpc.Call(ctx, n.http, "http://"+n.listen, authv1connect.AuthServiceKeyProcedure, nil, &authv1.KeyRequest{}, &key, 0); err != nil {
		return err
	}
	if !slices.Equal(key.GetKey(), info.Msg.GetPublicKey()) {
		return fmt.Errorf("the federation listener %s serves another server's key", n.listen)
	}
	return nil
}

// stop shuts the server down with SIGTERM, as an operator would; it must
// exit 0 within 15 s.
func (n *opNode) stop() {
	n.t.Helper()
	if !n.running() {
		return
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
		if n.waitErr != nil {
			n.t.Errorf("%s after SIGTERM: %v", n.name, n.waitErr)
		}
	case <-time.After(15 * time.Second):
		n.t.Errorf("%s ignored SIGTERM for 15 s; killing it", n.name)
		n.kill()
	}
	n.http.CloseIdleConnections()
}

// kill ends the process with SIGKILL, if it runs.
func (n *opNode) kill() {
	if !n.running() {
		return
	}
	_ = n.cmd.Process.Kill()
	select {
	case <-n.done:
	case <-time.After(10 * time.Second):
		n.t.Errorf("%s still running 10 s after SIGKILL", n.name)
	}
}

func (n *opNode) logText() string {
	b, _ := os.ReadFile(n.logPath)
	return string(b)
}

func (n *opNode) logTail(limit int) string {
	s := n.logText()
	if len(s) > limit {
		s = s[len(s)-limit:]
	}
	return s
}

// opEvent is the event the tests send: userAddedToGuild, the user ID
// telling the events apart.
func opEvent(user uint64) *syncv1.Event {
	return &syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{
		UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: user, GuildId: 7},
	}}
}

// send hands opEvent(user) to n for the server to, through the admin API,
// and checks the sequence number it gets.
func (n *opNode) send(to string, user, wantSeq uint64) {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(n.t.Context(), 15*time.Second)
	defer cancel()
	res, err := n.api.Send(ctx, connect.NewRequest(&adminv1.SendRequest{To: to, Event: opEvent(user)}))
	if err != nil {
		n.t.Fatalf("send user %d from %s to %s: %v", user, n.name, to, err)
	}
	if res.Msg.GetSeq() != wantSeq {
		n.t.Fatalf("send user %d from %s to %s: sequence number %d, want %d", user, n.name, to, res.Msg.GetSeq(), wantSeq)
	}
}

// peer asks the admin API for one peer (by a current or former ID).
func (n *opNode) peer(serverID string) (*adminv1.Peer, error) {
	ctx, cancel := context.WithTimeout(n.t.Context(), 5*time.Second)
	defer cancel()
	res, err := n.api.GetPeer(ctx, connect.NewRequest(&adminv1.GetPeerRequest{ServerId: serverID}))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetPeer(), nil
}

// peerLabel is the label of n's metrics for a peer: its stable peer ID.
func (n *opNode) peerLabel(serverID string) string {
	n.t.Helper()
	p, err := n.peer(serverID)
	if err != nil {
		n.t.Fatalf("%s's peer %s: %v", n.name, serverID, err)
	}
	return `peer="` + p.GetPeerId() + `"`
}

// waitPeer waits until n's view of a peer satisfies cond.
func (n *opNode) waitPeer(serverID, what string, within time.Duration, cond func(*adminv1.Peer) bool) *adminv1.Peer {
	n.t.Helper()
	var last *adminv1.Peer
	opWait(n.t, within, fmt.Sprintf("%s's peer %s: %s", n.name, serverID, what), func() (bool, string) {
		p, err := n.peer(serverID)
		if err != nil {
			return false, err.Error()
		}
		last = p
		return cond(p), opPeerString(p)
	})
	return last
}

func opPeerString(p *adminv1.Peer) string {
	b, _ := protojson.Marshal(p)
	return string(b)
}

// peersCLI runs `postbox peers --json` against n and returns its lines
// and the peers they describe.
func (n *opNode) peersCLI() ([]string, []*adminv1.Peer) {
	n.t.Helper()
	out, errOut, code := runCLI(n.t, "peers", "--json", "--admin", n.admin)
	if code != 0 {
		n.t.Fatalf("postbox peers --json on %s: exit %d\n%s", n.name, code, errOut)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if out == "" {
		lines = nil
	}
	peers := make([]*adminv1.Peer, 0, len(lines))
	for _, line := range lines {
		p := &adminv1.Peer{}
		if err := protojson.Unmarshal([]byte(line), p); err != nil {
			n.t.Fatalf("postbox peers --json on %s printed %q: %v", n.name, line, err)
		}
		peers = append(peers, p)
	}
	return lines, peers
}

// opAudit runs `postbox audit --json --data-dir dir` and decodes its report
// when it wrote one (exit 0 or 1).
func opAudit(t *testing.T, dir string) (projections.Report, int, string) {
	t.Helper()
	out, errOut, code := runCLI(t, "audit", "--json", "--data-dir", dir)
	var rep projections.Report
	if code == 0 || code == 1 {
		var err error
		if rep, err = decodeAudit(out); err != nil {
			t.Fatalf("postbox audit --json on %s: exit %d, report %q: %v\n%s", dir, code, out, err, errOut)
		}
	}
	return rep, code, errOut
}

// auditClean runs the audit on n's data directory and requires exit 0, no
// violation, and a report of every peer; it returns the report.
func (n *opNode) auditClean(when string) projections.Report {
	n.t.Helper()
	rep, code, errOut := opAudit(n.t, n.dataDir)
	if code != 0 || !rep.Clean() {
		n.t.Errorf("postbox audit of %s's data %s: exit %d, violations %+v\n%s", n.name, when, code, rep.Violations, errOut)
	}
	return rep
}

// inboxFrom reads n's inbox stream of the events from the server from (a
// current or former ID) out of its data directory, read-only.
func (n *opNode) inboxFrom(from string) []streams.Received {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(n.t.Context(), 10*time.Second)
	defer cancel()
	s, err := embedded.OpenReadOnly(ctx, n.dataDir, embedded.Options{})
	if err != nil {
		n.t.Fatal(err)
	}
	defer s.Close()
	peer := opLookup(ctx, n.t, s, from)
	if peer == "" {
		return nil
	}
	var out []streams.Received
	for next := uint64(0); ; {
		recs, err := s.ReadStream(ctx, streams.Inbox(peer), next, 1000)
		if errors.Is(err, eventstore.ErrStreamNotFound) {
			return out
		}
		if err != nil {
			n.t.Fatal(err)
		}
		for _, r := range recs {
			run, err := streams.DecodeReceivedRecord(r)
			if err != nil {
				n.t.Fatalf("%s's inbox from %s, record %d: %v", n.name, from, r.Revision, err)
			}
			out = append(out, run...)
			next = r.Revision + 1
		}
		if len(recs) < 1000 {
			return out
		}
	}
}

// opLookup finds the stable peer ID a store keeps a server's streams
// under, by its current or a former server ID; "" for a stranger.
func opLookup(ctx context.Context, t *testing.T, s delivery.Store, serverID string) streams.PeerID {
	t.Helper()
	reg, err := registry.Load(ctx, s, streams.NewCodec(rand.Reader), rand.Reader, nil)
	if err != nil {
		t.Fatal(err)
	}
	peer, _ := reg.Lookup(domain.MustParseServerID(serverID))
	return peer
}

// opCheckInbox asserts that an inbox holds exactly the events of users, in
// order, with sender sequence numbers 0..n-1 and the given ways of arrival.
func opCheckInbox(t *testing.T, what string, got []streams.Received, users []uint64, vias []eventsv1.EventReceived_Via) {
	t.Helper()
	if len(got) != len(users) {
		t.Errorf("%s: %d records, want %d", what, len(got), len(users))
	}
	for i, r := range got {
		user := r.Event.GetUserAddedToGuild().GetUserId()
		switch {
		case r.SenderSeq == nil:
			t.Errorf("%s: record %d (user %d) has no sender sequence number", what, i, user)
		case *r.SenderSeq != uint64(i):
			t.Errorf("%s: record %d (user %d) has sender sequence %d: a gap, a duplicate or out of order", what, i, user, *r.SenderSeq)
		}
		if i < len(users) && user != users[i] {
			t.Errorf("%s: record %d holds user %d, want %d", what, i, user, users[i])
		}
		if i < len(vias) && r.Via != vias[i] {
			t.Errorf("%s: record %d (user %d) came by %s, want %s", what, i, user, r.Via, vias[i])
		}
	}
}

// opVias is count records that came by via.
func opVias(via eventsv1.EventReceived_Via, count int) []eventsv1.EventReceived_Via {
	return slices.Repeat([]eventsv1.EventReceived_Via{via}, count)
}

const (
	viaPush = eventsv1.EventReceived_VIA_PUSH
	viaPull = eventsv1.EventReceived_VIA_PULL
)

// opUsers is first, first+1, ..., first+count-1.
func opUsers(first, count uint64) []uint64 {
	out := make([]uint64, count)
	for i := range out {
		out[i] = first + uint64(i)
	}
	return out
}

// opCompareAudit asserts that the audit's replay of the store reports the
// same cursors for every peer as `postbox peers --json` shows from the
// running server's projections.
func opCompareAudit(t *testing.T, name string, rep projections.Report, peers []*adminv1.Peer) {
	t.Helper()
	if len(rep.Peers) != len(peers) {
		t.Errorf("%s: the audit reports %d peers, postbox peers %d:\naudit %+v\npeers %v", name, len(rep.Peers), len(peers), rep.Peers, peers)
	}
	for _, p := range peers {
		i := slices.IndexFunc(rep.Peers, func(s projections.PeerSummary) bool { return s.PeerID == p.GetPeerId() })
		if i < 0 {
			t.Errorf("%s: peer %s (%s) is missing from the audit", name, p.GetPeerId(), p.GetServerId())
			continue
		}
		a := rep.Peers[i]
		mode := "MODE_" + strings.ToUpper(a.Mode)
		for _, f := range []struct {
			field      string
			audit, cli any
		}{
			{"server ID", a.ServerID, p.GetServerId()},
			{"head", a.Head, p.GetHead()},
			{"delivered", a.Delivered, p.GetDelivered()},
			{"pending", a.Pending, p.GetPending()},
			{"mode", mode, p.GetMode().String()},
			{"received", a.Received, p.GetEventsReceived()},
		} {
			if f.audit != f.cli {
				t.Errorf("%s: peer %s: the audit says %s %v, postbox peers says %v", name, p.GetServerId(), f.field, f.audit, f.cli)
			}
		}
	}
}

// opScrape GETs /metrics from an admin listener with the given Host header
// ("" for the address itself) and returns the status and, for a 200, every
// sample by its series (`name{label="v",...}`).
func opScrape(t *testing.T, admin, host string) (int, map[string]float64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK {
		return res.StatusCode, nil
	}
	samples := map[string]float64{}
	for line := range strings.Lines(string(body)) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if i < 0 || err != nil {
			t.Fatalf("/metrics line %q", line)
		}
		samples[line[:i]] = v
	}
	return res.StatusCode, samples
}

// ----- The operator surface -----

// TestOperatorSurface runs a short delivery with a queue-mode episode (B
// down while A sends, then B back, pulling the queue), then looks at both
// servers through every operator tool: audit against peers, the peers
// table, /metrics, watch, and the audit's exit codes.
func TestOperatorSurface(t *testing.T) {
	opSetup(t)
	start := time.Now()
	a, b := newOpNode(t, "A", opQuickQueue...), newOpNode(t, "B", opQuickQueue...)
	a.start()
	b.start()

	// Users 100.. from A to B; user 500 from B to A.
	b.send(a.id, 500, 0)
	for i := range uint64(3) {
		a.send(b.id, 100+i, i)
	}
	a.waitPeer(b.id, "3 delivered by push", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetDelivered() == 3 })
	b.waitPeer(a.id, "1 delivered", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetDelivered() == 1 })

	b.stop()
	queuedFrom := time.Now().Add(-time.Second) // the store's timestamps may be a little coarser
	for i := uint64(3); i < 7; i++ {
		a.send(b.id, 100+i, i)
	}
	a.waitPeer(b.id, "queue mode with 4 pending", 20*time.Second, func(p *adminv1.Peer) bool {
		return p.GetMode() == adminv1.Mode_MODE_QUEUE && p.GetPending() == 4
	})
	// peers says since when the oldest pending event waits, and why, whole.
	if _, peers := a.peersCLI(); len(peers) != 1 || peers[0].GetOldestPending() == nil ||
		peers[0].GetOldestPending().AsTime().Before(queuedFrom) || peers[0].GetOldestPending().AsTime().After(time.Now()) {
		t.Errorf("A's peers while B is down: %v, want the oldest pending event stored after %v", peers, queuedFrom)
	} else if out, _, _ := runCLI(t, "peers", "--admin", a.admin); !strings.Contains(out, "OLDEST PENDING") ||
		peers[0].GetLastError() == "" || !strings.Contains(out, strings.ReplaceAll(peers[0].GetLastError(), "\n", " ")) {
		t.Errorf("postbox peers does not show the age of the oldest pending event or the whole last error %q:\n%s", peers[0].GetLastError(), out)
	}
	// The metrics show the queue while B is down.
	if status, m := opScrape(t, a.admin, ""); status != http.StatusOK {
		t.Errorf("GET /metrics on A: %d", status)
	} else {
		peer := a.peerLabel(b.id)
		opCheckSamples(t, "A's /metrics during the queue", m, map[string]float64{
			`postbox_peer_pending{` + peer + `}`:        4,
			`postbox_peer_outbox_head{` + peer + `}`:    7,
			`postbox_peer_delivered{` + peer + `}`:      3,
			`postbox_peers_in_queue_mode`:               1,
			`postbox_push_failures_total{` + peer + `}`: 2, // one attempt plus one retry
		})
	}

	b.start() // its startup pull empties the queue
	a.waitPeer(b.id, "the queue pulled and acknowledged, back to push mode", 20*time.Second, func(p *adminv1.Peer) bool {
		return p.GetDelivered() == 7 && p.GetMode() == adminv1.Mode_MODE_PUSH
	})
	for i := uint64(7); i < 9; i++ {
		a.send(b.id, 100+i, i)
	}
	const n = 9
	a.waitPeer(b.id, "all 9 delivered", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetDelivered() == n })
	b.waitPeer(a.id, "all 9 received", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetEventsReceived() == n })
	opCheckInbox(t, "B's inbox from A", b.inboxFrom(a.id), opUsers(100, n), slices.Concat(opVias(viaPush, 3), opVias(viaPull, 4), opVias(viaPush, 2)))
	scenario := time.Since(start)

	t.Run("audit agrees with peers", func(t *testing.T) {
		for _, node := range []*opNode{a, b} {
			rep := node.auditClean("while it runs")
			_, peers := node.peersCLI()
			opCompareAudit(t, node.name, rep, peers)
			if len(peers) != 1 {
				t.Errorf("%s has %d peers, want 1: %v", node.name, len(peers), peers)
			}
			for _, p := range peers {
				if p.GetOldestPending() != nil {
					t.Errorf("%s: nothing is pending for %s, yet peers shows an oldest pending event of %v", node.name, p.GetServerId(), p.GetOldestPending().AsTime())
				}
			}
		}
		_, aPeers := a.peersCLI()
		if p := aPeers[0]; p.GetServerId() != b.id || p.GetHead() != n || p.GetDelivered() != n || p.GetPending() != 0 || p.GetEventsReceived() != 1 {
			t.Errorf("A's peer: %s; want B with head = delivered = %d, 1 received", opPeerString(p), n)
		}
	})

	t.Run("peers table", func(t *testing.T) {
		out, errOut, code := runCLI(t, "peers", "--admin", a.admin)
		if code != 0 {
			t.Fatalf("postbox peers: exit %d\n%s", code, errOut)
		}
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		if len(lines) != 2 {
			t.Fatalf("postbox peers printed %d lines, want a header and one peer:\n%s", len(lines), out)
		}
		header := strings.Fields(lines[0])
		if !slices.Equal(header[:4], []string{"SERVER", "ID", "PEER", "ID"}) || !slices.Contains(header, "PENDING") {
			t.Errorf("postbox peers header %q", lines[0])
		}
		_, peers := a.peersCLI()
		row := strings.Fields(lines[1])
		if len(row) < 9 || row[0] != b.id || row[1] != peers[0].GetPeerId() || row[2] != "push" ||
			row[3] != strconv.Itoa(n) || row[4] != strconv.Itoa(n) || row[5] != "0" || row[6] != "0" || row[7] != "-" || row[8] != "1" {
			t.Errorf("postbox peers row %q; want B %s, its peer ID, push, head and delivered %d, 0 skipped, 0 pending, none waiting, 1 received", lines[1], b.id, n)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		status, m := opScrape(t, a.admin, "")
		if status != http.StatusOK {
			t.Fatalf("GET /metrics on A: %d", status)
		}
		peer := a.peerLabel(b.id)
		// The version label is what the binary reports: "(devel)", or the
		// version the toolchain stamped from the checkout.
		version := strings.TrimPrefix(strings.TrimSpace(func() string { out, _, _ := runCLI(t, "version"); return out }()), "postbox ")
		opCheckSamples(t, "A's /metrics", m, map[string]float64{
			`postbox_peer_info{` + peer + `,server_id="` + b.id + `"}`:                1,
			`postbox_server_info{server_id="` + a.id + `",version="` + version + `"}`: 1,
			`postbox_peer_pending{` + peer + `}`:                                      0,
			`postbox_peer_outbox_head{` + peer + `}`:                                  n,
			`postbox_peer_delivered{` + peer + `}`:                                    n,
			`postbox_peers_in_queue_mode`:                                             0,
			`postbox_delivered_events_total{` + peer + `,via="push"}`:                 5,
			`postbox_delivered_events_total{` + peer + `,via="pull"}`:                 4,
			`postbox_pulls_served_total{` + peer + `}`:                                1,
			`postbox_push_failures_total{` + peer + `}`:                               2,
			`postbox_inbound_events_total{` + peer + `,via="push"}`:                   1,
		})
		// B counts from its restart: the queue by pull, then two pushes.
		status, m = opScrape(t, b.admin, "localhost")
		if status != http.StatusOK {
			t.Fatalf("GET /metrics on B with Host localhost: %d", status)
		}
		peerA := b.peerLabel(a.id)
		opCheckSamples(t, "B's /metrics", m, map[string]float64{
			`postbox_inbound_events_total{` + peerA + `,via="pull"}`: 4,
			`postbox_inbound_events_total{` + peerA + `,via="push"}`: 2,
			`postbox_pulls_made_total{outcome="ok",` + peerA + `}`:   1,
			`postbox_peer_outbox_head{` + peerA + `}`:                1,
		})
		for _, host := range []string{"evil.example", "evil.example:80", "10.1.2.3"} {
			if status, _ := opScrape(t, a.admin, host); status != http.StatusForbidden {
				t.Errorf("GET /metrics with Host %s: %d, want 403", host, status)
			}
		}
	})

	t.Run("watch", func(t *testing.T) {
		all := opWatch(t, b, "--json")
		if len(all) != n {
			t.Fatalf("postbox watch --json printed %d events, want %d", len(all), n)
		}
		wantVia := []string{"push", "push", "push", "pull", "pull", "pull", "pull", "push", "push"}
		for i, ev := range all {
			if ev.GetFrom() != a.id || ev.GetSenderSeq() != uint64(i) || ev.SenderSeq == nil ||
				ev.GetEvent().GetUserAddedToGuild().GetUserId() != 100+uint64(i) || ev.GetVia() != wantVia[i] {
				t.Errorf("watch event %d: %s; want from %s, seq %d, user %d, via %s", i, opJSON(ev), a.id, i, 100+i, wantVia[i])
			}
			// Positions never go back; events of a run (pushes of several
			// may make them too) share the position before it.
			if i > 0 && ev.GetPosition() < all[i-1].GetPosition() {
				t.Errorf("watch event %d at position %d after %d", i, ev.GetPosition(), all[i-1].GetPosition())
			}
		}
		// The 4 pulled events (3 to 6) are one run in the store: the first
		// three carry the position before it, the last its own.
		if all[3].GetPosition() != all[2].GetPosition() || all[4].GetPosition() != all[3].GetPosition() ||
			all[5].GetPosition() != all[3].GetPosition() || all[6].GetPosition() <= all[5].GetPosition() {
			t.Errorf("the pulled run's positions: %d %d %d %d after %d; want the one before the run for all but the last",
				all[3].GetPosition(), all[4].GetPosition(), all[5].GetPosition(), all[6].GetPosition(), all[2].GetPosition())
		}
		// --after N starts with the event after position N: resuming after
		// an event inside the run gets the whole run again (at least once);
		// after its last, what follows the run.
		for _, c := range []struct{ after, from int }{{3, 3}, {5, 3}, {6, 7}} {
			after := all[c.after].GetPosition()
			tail := opWatch(t, b, "--json", "--after", strconv.FormatUint(after, 10))
			if len(tail) != n-c.from || tail[0].GetSenderSeq() != uint64(c.from) {
				t.Errorf("watch --after %d (event %d's): %d events from %v; want the last %d, from sequence %d", after, c.after, len(tail), opFirst(tail), n-c.from, c.from)
			}
		}
		// The text form: one line per event, position first (the two
		// pushed after the pulled run).
		out, _, code := runCLI(t, "watch", "--admin", b.admin, "--after", strconv.FormatUint(all[6].GetPosition(), 10))
		if want := fmt.Sprintf("%d\t%s\tpush\tseq %d\t", all[7].GetPosition(), a.id, 7); code != 0 || !strings.HasPrefix(out, want) || strings.Count(out, "\n") != 2 {
			t.Errorf("postbox watch (text) --after the pulled run: exit %d, %q; want two lines, the first starting %q", code, out, want)
		}

		// --follow prints an event sent later and keeps running.
		lines, stop := opFollow(t, b, strconv.FormatUint(all[n-1].GetPosition(), 10))
		a.send(b.id, 100+n, n)
		select {
		case line := <-lines:
			var ev adminv1.ReceivedEvent
			if err := protojson.Unmarshal([]byte(line), &ev); err != nil {
				t.Fatalf("watch --follow printed %q: %v", line, err)
			}
			if ev.GetSenderSeq() != n || ev.GetFrom() != a.id || ev.GetEvent().GetUserAddedToGuild().GetUserId() != 100+n {
				t.Errorf("watch --follow printed %s; want A's event %d", line, n)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("watch --follow printed nothing 20 s after a send")
		}
		stop()
	})

	t.Run("audit exit codes", func(t *testing.T) {
		if _, code, errOut := opAudit(t, filepath.Join(t.TempDir(), "nothing-here")); code != 2 {
			t.Errorf("audit of a missing data directory: exit %d, want 2\n%s", code, errOut)
		}
		a.stop()
		b.stop()
		rep := a.auditClean("after it stopped")
		if !rep.CheckpointChecked {
			t.Errorf("the audit of A's data after a graceful stop compared no checkpoint")
		}
		b.auditClean("after it stopped")

		// A delivery record pushing an event past the outbox head: the
		// audit reports it and exits 1.
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		s, err := embedded.Open(ctx, a.dataDir, embedded.Options{})
		if err != nil {
			t.Fatal(err)
		}
		peer := opLookup(ctx, t, s, b.id)
		bad, err := streams.NewCodec(rand.Reader).EncodeDelivery(domain.EventPushed{Seq: n + 5, Attempts: 1})
		if err == nil {
			_, err = s.Append(ctx, streams.Delivery(peer), eventstore.Any(), bad...)
		}
		if cerr := s.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			t.Fatal(err)
		}
		rep, code, errOut := opAudit(t, a.dataDir)
		if code != 1 {
			t.Fatalf("audit of a store with a push past the head: exit %d, want 1\n%s", code, errOut)
		}
		found := slices.ContainsFunc(rep.Violations, func(v projections.Violation) bool {
			return v.Stream == streams.Delivery(peer) && v.Rule == projections.RuleCursorWithinHead
		})
		if !found {
			t.Errorf("audit violations %+v; want %s on %s", rep.Violations, projections.RuleCursorWithinHead, streams.Delivery(peer))
		}
		out, _, code := runCLI(t, "audit", "--data-dir", a.dataDir)
		if code != 1 || !strings.Contains(out, "violation(s):") || !strings.Contains(out, projections.RuleCursorWithinHead) {
			t.Errorf("audit report: exit %d\n%s", code, out)
		}
	})
	t.Logf("scenario %s, total %s", scenario.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// opCheckSamples asserts the given samples of a /metrics scrape.
func opCheckSamples(t *testing.T, what string, got, want map[string]float64) {
	t.Helper()
	for series, v := range want {
		g, ok := got[series]
		switch {
		case !ok:
			var near []string
			name, _, _ := strings.Cut(series, "{")
			for s := range got {
				if strings.HasPrefix(s, name) {
					near = append(near, s)
				}
			}
			t.Errorf("%s: no %s (series of that name: %v)", what, series, near)
		case g != v:
			t.Errorf("%s: %s = %v, want %v", what, series, g, v)
		}
	}
}

func opJSON(ev *adminv1.ReceivedEvent) string {
	b, _ := protojson.Marshal(ev)
	return string(b)
}

func opFirst(evs []*adminv1.ReceivedEvent) string {
	if len(evs) == 0 {
		return "nothing"
	}
	return opJSON(evs[0])
}

// opWatch runs `postbox watch` (without --follow: it exits once caught
// up) against n and decodes its JSON lines.
func opWatch(t *testing.T, n *opNode, args ...string) []*adminv1.ReceivedEvent {
	t.Helper()
	out, errOut, code := runCLI(t, append([]string{"watch", "--admin", n.admin}, args...)...)
	if code != 0 {
		t.Fatalf("postbox watch %q: exit %d\n%s", args, code, errOut)
	}
	var evs []*adminv1.ReceivedEvent
	for line := range strings.Lines(out) {
		ev := &adminv1.ReceivedEvent{}
		if err := protojson.Unmarshal([]byte(line), ev); err != nil {
			t.Fatalf("postbox watch printed %q: %v", line, err)
		}
		evs = append(evs, ev)
	}
	return evs
}

// opFollow starts `postbox watch --follow --json --after after` against n and
// returns its output lines as they come; stop ends it with SIGTERM and
// requires a clean exit. It is killed in t.Cleanup if still running.
func opFollow(t *testing.T, n *opNode, after string) (lines <-chan string, stop func()) {
	t.Helper()
	cmd := exec.Command(postboxBinary(t), "watch", "--follow", "--json", "--admin", n.admin, "--after", after)
	cmd.Env = cleanEnv()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ch := make(chan string, 16)
	done := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			ch <- sc.Text()
		}
		done <- cmd.Wait()
	}()
	var once sync.Once
	// wait waits for the exit, killing the process after 10 s.
	wait := func() (inTime bool, err error) {
		select {
		case err := <-done:
			return true, err
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			return false, <-done
		}
	}
	t.Cleanup(func() {
		once.Do(func() {
			_ = cmd.Process.Kill()
			_, _ = wait()
		})
	})
	return ch, func() {
		t.Helper()
		once.Do(func() {
			select {
			case err := <-done:
				t.Errorf("watch --follow exited by itself: %v\n%s", err, stderr.String())
				return
			default:
			}
			_ = cmd.Process.Signal(syscall.SIGTERM)
			if ok, err := wait(); !ok || err != nil {
				t.Errorf("watch --follow after SIGTERM: %v (exited in time: %v)\n%s", err, ok, stderr.String())
			}
		})
	}
}
