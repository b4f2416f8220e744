package main

// Helpers for the multi-process delivery tests (e2e_delivery_test.go): a
// postbox server whose data directory and ports outlive its processes (so it
// can be killed and started again), readers of its streams through
// embedded.OpenReadOnly, senders through its admin API, a test proxy that
// delays or cuts Pull calls, and a peer client that signs with a server's
// own key file.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/harmony-postbox/postbox/adapters/authtoken"
	"github.com/harmony-postbox/postbox/adapters/clock"
	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/keyfile"
	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	"github.com/harmony-postbox/postbox/gen/postbox/admin/v1/adminv1connect"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
	authv1 "github.com/harmony-postbox/postbox/gen/protocol/auth/v1"
	"github.com/harmony-postbox/postbox/gen/protocol/auth/v1/authv1connect"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// The procedures every protocol (hRPC, Connect, gRPC) posts a Pull and a
// Push to.
const (
	e2ePullPath = "/protocol.sync.v1.PostboxService/Pull"
	e2ePushPath = "/protocol.sync.v1.PostboxService/Push"
)

// e2eNode is one postbox server: a data directory and ports that stay the same
// across the processes that serve them.
type e2eNode struct {
	t       *testing.T
	name    string
	id      string // server ID: the listener's address, or a e2eProxy's
	listen  string
	admin   string
	dataDir string
	logPath string
	flags   []string
	// peerFlags replace --insecure-peers (see newE2ESecureNode); fedURL
	// is the federation listener's base URL, fed the client for it.
	peerFlags []string
	fedURL    string
	fed       *http.Client

	admins adminv1connect.AdminServiceClient
	http   *http.Client

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	runs int
}

// newE2ENode prepares a server; id, if not empty, is its server ID (the
// address of a proxy in front of it), else its listener's address. The
// process is killed in t.Cleanup.
func newE2ENode(t *testing.T, name, id string, flags ...string) *e2eNode {
	t.Helper()
	dir := t.TempDir()
	n := &e2eNode{
		t: t, name: name, id: id,
		listen: loopback(e2eFreePort(t)), admin: loopback(e2eFreePort(t)),
		dataDir: filepath.Join(dir, "data"), logPath: filepath.Join(dir, "postbox.log"),
		flags: flags,
		http:  &http.Client{Timeout: 20 * time.Second},
	}
	if n.id == "" {
		n.id = n.listen
	}
	n.peerFlags, n.fedURL, n.fed = []string{"--insecure-peers"}, "http://"+n.listen, n.http
	n.admins = adminv1connect.NewAdminServiceClient(n.http, "http://"+n.admin)
	t.Cleanup(func() {
		n.kill()
		n.http.CloseIdleConnections()
		n.fed.CloseIdleConnections()
		if t.Failed() {
			t.Logf("%s (%s) log, last part:\n%s", n.name, n.id, n.logTail(12000))
		}
	})
	return n
}

// start runs `postbox serve` for n and waits until both listeners accept.
func (n *e2eNode) start() {
	n.t.Helper()
	n.spawn()
	n.waitUp()
}

// spawn starts the process without waiting for it.
func (n *e2eNode) spawn() {
	t := n.t
	t.Helper()
	n.mu.Lock()
	if n.done != nil {
		select {
		case <-n.done:
		default:
			n.mu.Unlock()
			t.Fatalf("%s started twice", n.name)
		}
	}
	n.runs++
	logFile, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		n.mu.Unlock()
		t.Fatal(err)
	}
	fmt.Fprintf(logFile, "----- %s run %d -----\n", n.name, n.runs)
	args := append(append([]string{"serve"}, n.peerFlags...),
		"--server-id", n.id, "--listen", n.listen, "--admin-listen", n.admin, "--data-dir", n.dataDir)
	args = append(args, n.flags...)
	cmd := exec.Command(postboxBinary(t), args...)
	cmd.Env = cleanEnv()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		n.mu.Unlock()
		t.Fatal(err)
	}
	logFile.Close() // the child holds its own descriptor
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	n.cmd, n.done = cmd, done
	n.mu.Unlock()
}

// waitUp waits for the process spawn started to serve.
func (n *e2eNode) waitUp() {
	t := n.t
	t.Helper()
	n.mu.Lock()
	done := n.done
	n.mu.Unlock()
	// Wait until both listeners answer as this server: the admin API with
	// its server ID, the federation listener with the same public key (a
	// port taken by another process would answer too, or not as this).
	deadline := time.Now().Add(20 * time.Second)
	var last error
	for {
		select {
		case <-done:
			t.Fatalf("%s exited before serving:\n%s", n.name, n.logTail(4000))
		default:
		}
		if last = n.checkIdentity(); last == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not serving on %s and %s after 20 s: %v\n%s", n.name, n.listen, n.admin, last, n.logTail(4000))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkIdentity asks both listeners who they are.
func (n *e2eNode) checkIdentity() error {
	ctx, cancel := context.WithTimeout(n.t.Context(), 2*time.Second)
	defer cancel()
	info, err := n.admins.GetServerInfo(ctx, connect.NewRequest(&adminv1.GetServerInfoRequest{}))
	if err != nil {
		return err
	}
	if info.Msg.GetServerId() != n.id {
		return fmt.Errorf("the admin listener %s is server %s, not %s", n.admin, info.Msg.GetServerId(), n.id)
	}
	key, err := authv1connect.NewAuthServiceClient(n.fed, n.fedURL).Key(ctx, connect.NewRequest(&authv1.KeyRequest{}))
	if err != nil {
		return err
	}
	if !bytes.Equal(key.Msg.GetKey(), info.Msg.GetPublicKey()) {
		return fmt.Errorf("the federation listener %s serves another server's key", n.listen)
	}
	return nil
}

var (
	e2ePortsMu sync.Mutex
	e2ePorts   = map[int]bool{}
)

// e2eFreePort is freePort, never twice the same port in this test binary:
// the kernel readily hands a port just closed to the next bind to port 0.
func e2eFreePort(t *testing.T) int {
	t.Helper()
	e2ePortsMu.Lock()
	defer e2ePortsMu.Unlock()
	for range 100 {
		if p := freePort(t); !e2ePorts[p] {
			e2ePorts[p] = true
			return p
		}
	}
	t.Fatal("no fresh loopback port after 100 tries")
	return 0
}

// e2eListen listens on a loopback port no e2eFreePort has handed out.
func e2eListen(t *testing.T) net.Listener {
	t.Helper()
	e2ePortsMu.Lock()
	defer e2ePortsMu.Unlock()
	var rejected []net.Listener
	defer func() {
		for _, ln := range rejected {
			ln.Close()
		}
	}()
	for range 100 {
		var lc net.ListenConfig
		ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if p := ln.Addr().(*net.TCPAddr).Port; !e2ePorts[p] {
			e2ePorts[p] = true
			return ln
		}
		rejected = append(rejected, ln)
	}
	t.Fatal("no fresh loopback port after 100 tries")
	return nil
}

// kill sends SIGKILL (no graceful shutdown: the crash case) and waits for
// the process to be gone. It does nothing if no process runs.
func (n *e2eNode) kill() {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		n.t.Errorf("%s still running 10 s after SIGKILL", n.name)
	}
	n.http.CloseIdleConnections()
}

// lastRunLog is the log of the current (or last) process.
func (n *e2eNode) lastRunLog() string {
	b, _ := os.ReadFile(n.logPath)
	marker := fmt.Sprintf("----- %s run %d -----", n.name, n.runs)
	if i := bytes.LastIndex(b, []byte(marker)); i >= 0 {
		b = b[i:]
	}
	return string(b)
}

func (n *e2eNode) logTail(max int) string {
	b, _ := os.ReadFile(n.logPath)
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}

// health asks the admin listener's gRPC health service (Connect protocol,
// JSON) for the server's status: SERVING once the startup pulls are done.
func (n *e2eNode) health(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+n.admin+"/grpc.health.v1.Health/Check", strings.NewReader("{}"))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := n.http.Do(req)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return "", err
	}
	if res.StatusCode != http.StatusOK {
		return "", fmt.Errorf("health: HTTP %d: %s", res.StatusCode, body)
	}
	var out struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return "", fmt.Errorf("health reply %q: %w", body, err)
	}
	return out.Status, nil
}

// waitServing waits until health answers SERVING, and returns how long that
// took.
func (n *e2eNode) waitServing(within time.Duration) time.Duration {
	n.t.Helper()
	start := time.Now()
	var last string
	e2eWait(n.t, within, n.name+" health SERVING", func() (bool, string) {
		ctx, cancel := context.WithTimeout(n.t.Context(), 2*time.Second)
		defer cancel()
		s, err := n.health(ctx)
		if err != nil {
			last = err.Error()
			return false, last
		}
		last = s
		return e2eServing(s), "status " + s
	})
	return time.Since(start)
}

// e2eServing reports whether a health status is SERVING (connect-go's JSON
// names the enum value in full).
func e2eServing(status string) bool {
	return status == "SERVING" || status == "SERVING_STATUS_SERVING"
}

// e2eWait polls cond until it holds or within has passed; the failure
// names what was awaited and cond's last word on it.
func e2eWait(t *testing.T, within time.Duration, what string, cond func() (bool, string)) {
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

// e2eEvent is the event the tests send: userAddedToGuild with a user ID that
// tells the events apart.
func e2eEvent(userID uint64) *syncv1.Event {
	return &syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{
		UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: userID, GuildId: 7},
	}}
}

// e2eLedger is what one server sent another: the user ID of each sequence
// number the sender's admin API gave back.
type e2eLedger struct {
	mu    sync.Mutex
	bySeq map[uint64]uint64
}

func newE2ELedger() *e2eLedger { return &e2eLedger{bySeq: map[uint64]uint64{}} }

func (l *e2eLedger) record(seq, userID uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if prev, ok := l.bySeq[seq]; ok {
		return fmt.Errorf("sequence number %d given twice (users %d and %d)", seq, prev, userID)
	}
	l.bySeq[seq] = userID
	return nil
}

func (l *e2eLedger) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.bySeq)
}

// want lists the user IDs by sequence number, 0..n-1; the sequence numbers
// given must be exactly those.
func (l *e2eLedger) want(t *testing.T) []uint64 {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]uint64, len(l.bySeq))
	for seq, user := range l.bySeq {
		if seq >= uint64(len(out)) {
			t.Fatalf("the sender gave sequence number %d among %d sends: not 0..n-1", seq, len(out))
		}
		out[seq] = user
	}
	return out
}

// send enqueues e2eEvent(userID) at from for to through the admin API and
// records the sequence number it got.
func (n *e2eNode) send(to *e2eNode, l *e2eLedger, userID uint64) uint64 {
	n.t.Helper()
	seq, err := n.trySend(n.t.Context(), to, userID)
	if err != nil {
		n.t.Fatalf("send %d from %s to %s: %v", userID, n.name, to.name, err)
	}
	if err := l.record(seq, userID); err != nil {
		n.t.Fatal(err)
	}
	return seq
}

func (n *e2eNode) trySend(ctx context.Context, to *e2eNode, userID uint64) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	res, err := n.admins.Send(ctx, connect.NewRequest(&adminv1.SendRequest{To: to.id, Event: e2eEvent(userID)}))
	if err != nil {
		return 0, err
	}
	return res.Msg.GetSeq(), nil
}

// sendMany sends e2eEvent(u) for every u in users, from several goroutines
// (the store commits concurrent appends together), and records each
// sequence number.
func (n *e2eNode) sendMany(to *e2eNode, l *e2eLedger, users []uint64) {
	n.t.Helper()
	const workers = 8
	next := make(chan uint64)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for u := range next {
				seq, err := n.trySend(n.t.Context(), to, u)
				if err == nil {
					err = l.record(seq, u)
				}
				if err != nil {
					errs <- fmt.Errorf("send %d from %s to %s: %w", u, n.name, to.name, err)
					for range next {
					}
					return
				}
			}
		}()
	}
	for _, u := range users {
		next <- u
	}
	close(next)
	wg.Wait()
	close(errs)
	for err := range errs {
		n.t.Fatal(err)
	}
}

// e2eUsers is first, first+1, ..., first+count-1.
func e2eUsers(first, count uint64) []uint64 {
	out := make([]uint64, count)
	for i := range out {
		out[i] = first + uint64(i)
	}
	return out
}

// openStore opens n's data directory read-only, as `postbox audit` does
// while the server runs.
func (n *e2eNode) openStore() (*embedded.Store, error) {
	ctx, cancel := context.WithTimeout(n.t.Context(), 10*time.Second)
	defer cancel()
	return embedded.OpenReadOnly(ctx, n.dataDir, embedded.Options{})
}

// e2ePeerID finds the stable ID under which n keeps peer's streams; "" if n
// has not met peer.
func e2ePeerID(ctx context.Context, s *embedded.Store, peer string) (streams.PeerID, error) {
	recs, err := e2eReadStream(ctx, s, streams.Peers)
	if err != nil {
		return "", err
	}
	for _, r := range recs {
		e, err := streams.DecodePeerEvent(r)
		if err != nil {
			return "", err
		}
		if seen, ok := e.(domain.PeerRegistered); ok && seen.ServerID.String() == peer {
			return seen.Peer, nil
		}
	}
	return "", nil
}

// e2eReadStream reads a whole stream; a missing one is empty.
func e2eReadStream(ctx context.Context, s *embedded.Store, stream string) ([]eventstore.RecordedEvent, error) {
	var out []eventstore.RecordedEvent
	for {
		recs, err := s.ReadStream(ctx, stream, uint64(len(out)), 1000)
		if errors.Is(err, eventstore.ErrStreamNotFound) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, recs...)
		if len(recs) < 1000 {
			return out, nil
		}
	}
}

// peerStream reads n's stream of the given kind (streams.Inbox,
// streams.Delivery, streams.Outbox) for peer.
func (n *e2eNode) peerStream(kind func(streams.PeerID) string, peer *e2eNode) ([]eventstore.RecordedEvent, error) {
	s, err := n.openStore()
	if err != nil {
		return nil, err
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(n.t.Context(), 10*time.Second)
	defer cancel()
	id, err := e2ePeerID(ctx, s, peer.id)
	if err != nil || id == "" {
		return nil, err
	}
	return e2eReadStream(ctx, s, kind(id))
}

// streamLen is how many records n's stream of that kind for peer holds,
// read cheaply (the newest record's revision).
func (n *e2eNode) streamLen(kind func(streams.PeerID) string, peer *e2eNode) (int, error) {
	s, err := n.openStore()
	if err != nil {
		return 0, err
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(n.t.Context(), 10*time.Second)
	defer cancel()
	id, err := e2ePeerID(ctx, s, peer.id)
	if err != nil || id == "" {
		return 0, err
	}
	last, err := s.ReadStreamBackward(ctx, kind(id), 1)
	if errors.Is(err, eventstore.ErrStreamNotFound) || err == nil && len(last) == 0 {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return int(last[0].Revision) + 1, nil
}

// inbox decodes n's inbox of events from peer.
func (n *e2eNode) inbox(peer *e2eNode) ([]streams.Received, error) {
	recs, err := n.peerStream(streams.Inbox, peer)
	if err != nil {
		return nil, err
	}
	return streams.ReceivedOf(recs)
}

// delivery decodes n's delivery stream for peer.
func (n *e2eNode) delivery(peer *e2eNode) ([]domain.DeliveryEvent, error) {
	recs, err := n.peerStream(streams.Delivery, peer)
	if err != nil {
		return nil, err
	}
	out := make([]domain.DeliveryEvent, 0, len(recs))
	for _, r := range recs {
		ev, err := streams.DecodeDelivery(r)
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	return out, nil
}

// waitInboxLen waits until n's inbox from peer holds at least count
// events.
func (n *e2eNode) waitInboxLen(peer *e2eNode, count int, within time.Duration) {
	n.t.Helper()
	e2eWait(n.t, within, fmt.Sprintf("%s's inbox from %s to hold %d events", n.name, peer.name, count), func() (bool, string) {
		got, err := n.inbox(peer)
		if err != nil {
			return false, err.Error()
		}
		return len(got) >= count, fmt.Sprintf("%d events", len(got))
	})
}

// waitDelivery waits until n's delivery stream for peer satisfies cond.
func (n *e2eNode) waitDelivery(peer *e2eNode, what string, within time.Duration, cond func([]domain.DeliveryEvent) bool) []domain.DeliveryEvent {
	n.t.Helper()
	var last []domain.DeliveryEvent
	e2eWait(n.t, within, fmt.Sprintf("%s's delivery stream for %s: %s", n.name, peer.name, what), func() (bool, string) {
		d, err := n.delivery(peer)
		if err != nil {
			return false, err.Error()
		}
		last = d
		return cond(d), e2eDescribe(d)
	})
	return last
}

// checkInbox asserts that n's inbox from peer holds exactly the events of
// l, in sequence order, each once, with its sender sequence number; it
// returns the records for further checks.
func (n *e2eNode) checkInbox(peer *e2eNode, l *e2eLedger) []streams.Received {
	n.t.Helper()
	want := l.want(n.t)
	got, err := n.inbox(peer)
	if err != nil {
		n.t.Fatalf("read %s's inbox from %s: %v", n.name, peer.name, err)
	}
	if problems := compareE2EInbox(got, want); len(problems) > 0 {
		n.t.Errorf("%s's inbox from %s: %d events, want exactly the %d sent events in order:\n  %s",
			n.name, peer.name, len(got), len(want), strings.Join(problems, "\n  "))
	}
	return got
}

// compareE2EInbox lists how got differs from the events want (user IDs by
// sequence number); at most a few lines per kind of problem.
func compareE2EInbox(got []streams.Received, want []uint64) []string {
	var problems []string
	report := func(format string, args ...any) {
		if len(problems) < 20 {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}
	if len(got) != len(want) {
		report("%d events, want %d", len(got), len(want))
	}
	for i, r := range got {
		user := r.Event.GetUserAddedToGuild().GetUserId()
		switch {
		case r.SenderSeq == nil:
			report("record %d (user %d, via %s) has no sender sequence number", i, user, r.Via)
		case *r.SenderSeq != uint64(i):
			report("record %d has sender sequence %d (user %d, via %s): a gap, a duplicate or out of order", i, *r.SenderSeq, user, r.Via)
		}
		if i < len(want) && (user != want[i] || r.Event.GetUserAddedToGuild() == nil) {
			report("record %d holds user %d, want user %d (sequence %d)", i, user, want[i], i)
		}
	}
	return problems
}

// e2eVias counts inbox records by how they came.
func e2eVias(recs []streams.Received) (push, pull int) {
	for _, r := range recs {
		switch r.Via {
		case eventsv1.EventReceived_VIA_PUSH:
			push++
		case eventsv1.EventReceived_VIA_PULL:
			pull++
		}
	}
	return push, pull
}

// e2eDescribe summarizes a delivery stream: runs of EventPushed are
// folded into one line, every other record is listed.
func e2eDescribe(d []domain.DeliveryEvent) string {
	var parts []string
	for i := 0; i < len(d); i++ {
		if p, ok := d[i].(domain.EventPushed); ok {
			j := i
			for j+1 < len(d) {
				if _, ok := d[j+1].(domain.EventPushed); !ok {
					break
				}
				j++
			}
			parts = append(parts, fmt.Sprintf("EventPushed seq %d..%d (%d records)", p.Seq, d[j].(domain.EventPushed).Last(), j-i+1))
			i = j
			continue
		}
		parts = append(parts, fmt.Sprintf("%T%+v", d[i], d[i]))
	}
	if len(parts) == 0 {
		return "empty"
	}
	return strings.Join(parts, "; ")
}

// e2eCheckDelivery asserts what the audit checks of a delivery
// stream: pushed sequence numbers strictly increase (nothing pushed twice,
// by the sender's own records), and no push is recorded in queue mode
// except right after a probe's PushResumed.
func e2eCheckDelivery(t *testing.T, name string, d []domain.DeliveryEvent) {
	t.Helper()
	queue := false
	var next uint64 // lowest sequence number a push may record
	for i, ev := range d {
		switch ev := ev.(type) {
		case domain.EventPushed:
			if queue {
				t.Errorf("%s: record %d, %+v, is a push recorded in queue mode", name, i, ev)
			}
			if ev.Seq < next {
				t.Errorf("%s: record %d pushes seq %d, but everything below %d was delivered already", name, i, ev.Seq, next)
			}
			next = ev.Last() + 1
		case domain.QueueModeEntered:
			queue = true
		case domain.PushResumed:
			queue = false
			next = max(next, ev.FromSeq)
		case domain.PullAcknowledged:
			next = max(next, ev.UpToSeq+1)
		case domain.PullServed:
			if !ev.AwaitsAck {
				next = max(next, ev.ToSeq+1)
			}
		case domain.EventsSkipped:
			next = max(next, ev.ThroughSeq+1)
		case domain.ReceiverReported:
			// What the peer holds, by its own account: delivery goes on
			// after it, backward too when the peer lost events.
			if ev.Has {
				next = ev.Seq + 1
			}
		}
	}
}

func e2eOfType[T domain.DeliveryEvent](d []domain.DeliveryEvent) []T {
	var out []T
	for _, ev := range d {
		if e, ok := ev.(T); ok {
			out = append(out, e)
		}
	}
	return out
}

// e2eProxy stands between a server and the peers that reach it by its server
// ID. It forwards everything, but can hold the next Pull for a while or
// cut the connection instead of returning the next Pull's reply.
type e2eProxy struct {
	t      *testing.T
	addr   string
	srv    *http.Server
	fwd    *httputil.ReverseProxy
	client *http.Transport
	target *url.URL

	mu        sync.Mutex
	holdNext  time.Duration   // hold the next Pull at most this long before forwarding it
	release   <-chan struct{} // or until this closes
	cutNext   bool            // forward the next Pull, then drop its reply and the connection
	pulls     int             // Pulls seen
	cuts      int             // Pull replies dropped
	held      chan struct{}   // closed when a held Pull arrives
	released  time.Time       // when the held Pull's reply went back
	heldReply chan struct{}   // closed once the held Pull's reply went back
	// cutPush: forward the next Push, drop its reply, then answer every
	// later Push 502 while refusePushes holds.
	cutPush      bool
	refusePushes bool
	pushCuts     int
	pushDelay    time.Duration // hold every Push this long before forwarding it
}

// newE2EProxy listens on a free loopback port and forwards to target
// (host:port); it stops in t.Cleanup.
func newE2EProxy(t *testing.T, target string) *e2eProxy {
	t.Helper()
	ln := e2eListen(t)
	u := &url.URL{Scheme: "http", Host: target}
	p := &e2eProxy{t: t, addr: ln.Addr().String(), target: u, client: &http.Transport{}}
	p.fwd = &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(u); r.Out.Host = r.In.Host },
		Transport: p.client,
		// A server behind the proxy may be down on purpose: answer 502
		// without logging it.
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, _ error) { w.WriteHeader(http.StatusBadGateway) },
	}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = p.srv.Close()
		p.client.CloseIdleConnections()
	})
	return p
}

// holdNextPull makes the proxy hold the next Pull until release closes, or
// for d at most; the returned channels close when it arrives and when its
// reply has gone back.
func (p *e2eProxy) holdNextPull(release <-chan struct{}, d time.Duration) (arrived, replied <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.holdNext, p.release, p.held, p.heldReply = d, release, make(chan struct{}), make(chan struct{})
	return p.held, p.heldReply
}

// cutNextPull makes the proxy drop the next Pull's reply.
func (p *e2eProxy) cutNextPull() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cutNext = true
}

func (p *e2eProxy) counts() (pulls, cuts int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pulls, p.cuts
}

// cutNextPushThenRefuse makes the proxy forward the next Push but drop its
// reply (the server applied it; the sender never hears so), and refuse
// every later Push until refusePushes(false).
func (p *e2eProxy) cutNextPushThenRefuse() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cutPush, p.refusePushes = true, true
}

func (p *e2eProxy) setRefusePushes(refuse bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refusePushes = refuse
}

func (p *e2eProxy) pushesCut() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pushCuts
}

// setPushDelay holds every Push d before forwarding it: a stream of
// one-event pushes then lasts long enough to be cut in the middle.
func (p *e2eProxy) setPushDelay(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pushDelay = d
}

func (p *e2eProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == e2ePushPath {
		p.mu.Lock()
		cut, refuse, delay := p.cutPush, p.refusePushes, p.pushDelay
		if cut {
			p.cutPush = false
			p.pushCuts++
		}
		p.mu.Unlock()
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-r.Context().Done():
				return
			}
		}
		switch {
		case cut:
			p.forwardAndCut(r)
		case refuse:
			w.WriteHeader(http.StatusBadGateway)
			return
		}
	}
	if r.URL.Path != e2ePullPath {
		p.fwd.ServeHTTP(w, r)
		return
	}
	p.mu.Lock()
	p.pulls++
	hold, release, held, heldReply, cut := p.holdNext, p.release, p.held, p.heldReply, p.cutNext
	p.holdNext, p.release, p.cutNext = 0, nil, false
	p.mu.Unlock()

	switch {
	case hold > 0:
		close(held)
		select {
		case <-time.After(hold):
		case <-release:
		case <-r.Context().Done():
		}
		p.fwd.ServeHTTP(w, r)
		p.mu.Lock()
		p.released = time.Now()
		p.mu.Unlock()
		close(heldReply)
	case cut:
		p.mu.Lock()
		p.cuts++
		p.mu.Unlock()
		p.forwardAndCut(r)
	default:
		p.fwd.ServeHTTP(w, r)
	}
}

// forwardAndCut forwards r, lets the server write its whole reply, then
// closes the caller's connection without a byte of it: the reply is lost
// after the server acted on the request.
func (p *e2eProxy) forwardAndCut(r *http.Request) {
	out := r.Clone(r.Context())
	out.RequestURI = ""
	out.URL.Scheme, out.URL.Host = p.target.Scheme, p.target.Host
	res, err := p.client.RoundTrip(out)
	if err == nil {
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	panic(http.ErrAbortHandler)
}

// releasedAt is when the held Pull's reply went back.
func (p *e2eProxy) releasedAt() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.released
}

// e2eSelf signs every request as one server ID.
type e2eSelf domain.ServerID

func (f e2eSelf) IDFor(domain.ServerID) domain.ServerID { return domain.ServerID(f) }

// e2eClientSigningAs is a peer client that signs as server ID as with the
// key in n's key file: what n's own peer client sends.
func e2eClientSigningAs(t *testing.T, keyOf *e2eNode, as string) *peerclient.Client {
	t.Helper()
	key, err := keyfile.Load(filepath.Join(keyOf.dataDir, "key.ed25519"))
	if err != nil {
		t.Fatal(err)
	}
	signer := authtoken.NewSigner(key.PrivateKey, clock.System{}, rand.Reader)
	// A generous answer time: the tests measure how long the receiver
	// makes a push wait (for its own pull), not this client's bound.
	timeouts := peerclient.Timeouts{Answer: 30 * time.Second}
	return peerclient.New(peerclient.Config{Insecure: true, Protocol: peerclient.HRPC, Timeouts: timeouts}, signer, e2eSelf(domain.MustParseServerID(as)))
}

// e2eSameDelivery reports whether two delivery streams are equal (their
// records are comparable structs).
func e2eSameDelivery(a, b []domain.DeliveryEvent) bool { return slices.Equal(a, b) }

// e2eAudit runs `postbox audit` on each node's data directory (read-only,
// while the servers run) and fails the test on a violation.
func e2eAudit(t *testing.T, nodes ...*e2eNode) {
	t.Helper()
	for _, n := range nodes {
		out, errOut, code := runCLI(t, "audit", "--data-dir", n.dataDir)
		if code != 0 {
			t.Errorf("postbox audit of %s: exit %d\n%s\n%s", n.name, code, out, errOut)
		}
	}
}
