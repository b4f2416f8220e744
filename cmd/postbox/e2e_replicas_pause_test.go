package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/seqext"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// TestAPausedReplicaPushesNothingAPostboxReceiverApplies: two replicas
// (2 s leases) on the stand-in send to a Postbox peer B through a proxy
// that reads each push's owner term. The proxy holds one push of B's
// owner; the owner is paused with SIGSTOP past its lease, the other
// replica takes B over under the next term and pushes; then the held push
// goes on to B, and the owner is resumed with SIGCONT while sends go on.
// Under the old term at most that one push reaches B after the pause, B
// refuses it (postbox.stale-term), and B holds every event once and in
// order; the audit passes.
func TestAPausedReplicaPushesNothingAPostboxReceiverApplies(t *testing.T) {
	e2eSetup(t)
	store := startStandin(t, "24.10")
	keyPath := filepath.Join(t.TempDir(), "key.ed25519")
	flags := func(name string) []string {
		return []string{"--store", store, "--replica", name, "--replica-lease", "2s", "--key-file", keyPath}
	}
	r1 := newE2ENode(t, "R1", "", flags("r1")...)
	r1.start()
	r2 := newE2ENode(t, "R2", r1.id, flags("r2")...)
	r2.start()
	b := newE2ENode(t, "B", "")
	px := newTermProxy(t, b.listen)
	b.id = px.addr
	b.start()
	byName := map[string]*e2eNode{"r1": r1, "r2": r2}

	// Sends go on all along, through the replicas that are not paused.
	ledger := newE2ELedger()
	var up atomic.Pointer[[]*e2eNode]
	up.Store(&[]*e2eNode{r1, r2})
	stop := make(chan struct{})
	sent := make(chan error, 1)
	go func() {
		for user := uint64(1); ; user++ {
			select {
			case <-stop:
				sent <- nil
				return
			case <-time.After(10 * time.Millisecond):
			}
			via := (*up.Load())[int(user)%len(*up.Load())]
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			res, err := via.admins.Send(ctx, connect.NewRequest(&adminv1.SendRequest{To: b.id, Event: e2eEvent(user)}))
			cancel()
			if err == nil {
				err = ledger.record(res.Msg.GetSeq(), user)
			}
			if err != nil {
				sent <- fmt.Errorf("send %d through %s: %w", user, via.name, err)
				return
			}
		}
	}()
	stopSending := func() {
		close(stop)
		if err := <-sent; err != nil {
			t.Fatal(err)
		}
	}

	e2eWait(t, 30*time.Second, "B to receive 20 events", func() (bool, string) {
		n := ledger.len()
		return n >= 20 && px.applied() >= 20, fmt.Sprint(px.applied(), " pushed")
	})
	// The owner's next push is held at the proxy. A handover may come
	// between reading the owner and its next push (a replica whose view
	// of the others was behind): then the owner is read again.
	var owner string
	var term uint64
	for try := 1; ; try++ {
		owner, term = peerOwner(t, r1, b.id)
		if byName[owner] == nil || term == 0 {
			t.Fatalf("B's owner is %q under term %d", owner, term)
		}
		held := px.holdNextPush(term)
		select {
		case <-held:
		case <-time.After(10 * time.Second):
			if next, nextTerm := peerOwner(t, r1, b.id); try < 3 && (next != owner || nextTerm != term) {
				t.Logf("no push under term %d of %s: B moved to %s, term %d; holding its next push instead", term, owner, next, nextTerm)
				continue
			}
			t.Fatalf("no push of %s under term %d reached the proxy", owner, term)
		}
		break
	}
	paused, other := byName[owner], byName[map[string]string{"r1": "r2", "r2": "r1"}[owner]]
	up.Store(&[]*e2eNode{other})
	if err := paused.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	pausedAt := px.count()
	t.Logf("%s paused (term %d) with a push held at the proxy", paused.name, term)
	e2eWait(t, 20*time.Second, "the other replica to push to B under a later term", func() (bool, string) {
		return px.appliedAbove(term) > 0, fmt.Sprint(px.count(), " pushes")
	})
	answer := px.releaseHeld()
	if err := paused.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	t.Logf("the held push under term %d was answered %s; %s resumed", term, answer, paused.name)
	time.Sleep(2 * time.Second) // sends go on through the resumed replica's wake
	up.Store(&[]*e2eNode{r1, r2})
	time.Sleep(500 * time.Millisecond)
	stopSending()

	want := ledger.want(t)
	e2eWait(t, 30*time.Second, "B to receive every event", func() (bool, string) {
		got := watchUsers(t, b)
		return len(got) >= len(want), fmt.Sprint(len(got), " of ", len(want))
	})
	if got := watchUsers(t, b); !slices.Equal(got, want) {
		t.Fatalf("B holds %d events, want %d once and in order:\n got %v\nwant %v", len(got), len(want), got, want)
	}
	late := px.underTermFrom(term, pausedAt)
	t.Logf("%d events sent; %d pushes in all; under term %d after the pause: %v", len(want), px.count(), term, late)
	if len(late) > 1 {
		t.Errorf("%d pushes under term %d reached B after the pause, want at most 1: %v", len(late), term, late)
	}
	for _, p := range late {
		if p.status != http.StatusConflict || !strings.Contains(p.body, "postbox.stale-term") {
			t.Errorf("B answered a push under the ended term %d with %d %q, want 409 postbox.stale-term", term, p.status, p.body)
		}
	}
	if len(late) == 0 || late[0].status != http.StatusConflict {
		t.Errorf("the held push under term %d: %v, want it refused as stale", term, late)
	}
	if out, errOut, code := runCLI(t, "audit", "--store", store); code != 0 {
		t.Fatalf("audit --store: exit %d\n%s\n%s", code, out, errOut)
	}
}

// peerOwner is the replica that owns peer and its term, as peers --json on
// r says.
func peerOwner(t *testing.T, r *e2eNode, peer string) (string, uint64) {
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
			return p.GetOwner(), p.GetOwnerTerm()
		}
	}
	t.Fatalf("peers --json lists no %s:\n%s", peer, out)
	return "", 0
}

// termPush is one push as the proxy saw it: its owner term, first
// sequence number and events, and the receiver's answer.
type termPush struct {
	term, seq uint64
	events    int
	status    int
	body      string
}

func (p termPush) String() string {
	return fmt.Sprintf("{term %d seq %d+%d: %d %q}", p.term, p.seq, p.events, p.status, p.body)
}

// termProxy forwards everything to a Postbox server, reading the owner
// term of each push and the answer to it; it can hold one push of a
// given term until told to let it go.
type termProxy struct {
	t    *testing.T
	addr string
	fwd  *httputil.ReverseProxy

	mu       sync.Mutex
	pushes   []termPush
	holdTerm uint64        // hold the next push under this term (0: none)
	held     chan struct{} // closed when it arrives
	release  chan struct{} // closed to let it go
	answered chan termPush // its answer
}

func newTermProxy(t *testing.T, target string) *termProxy {
	t.Helper()
	ln := e2eListen(t)
	u := &url.URL{Scheme: "http", Host: target}
	transport := &http.Transport{}
	p := &termProxy{t: t, addr: ln.Addr().String()}
	p.fwd = &httputil.ReverseProxy{
		Rewrite:      func(r *httputil.ProxyRequest) { r.SetURL(u); r.Out.Host = r.In.Host },
		Transport:    transport,
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, _ error) { w.WriteHeader(http.StatusBadGateway) },
	}
	srv := &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		p.mu.Lock()
		if p.release != nil {
			close(p.release)
			p.release = nil
		}
		p.mu.Unlock()
		_ = srv.Close()
		transport.CloseIdleConnections()
	})
	return p
}

func (p *termProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != e2ePushPath {
		p.fwd.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	req := &syncv1.PushRequest{}
	if err := proto.Unmarshal(body, req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	push := termPush{term: seqext.PushTerm(req)}
	push.seq, _ = seqext.PushSeq(req)
	following, _ := seqext.Following(req)
	push.events = 1 + len(following)

	p.mu.Lock()
	var release chan struct{}
	var answered chan termPush
	if p.holdTerm != 0 && push.term == p.holdTerm {
		p.holdTerm = 0
		release, answered = p.release, p.answered
		close(p.held)
	}
	p.mu.Unlock()
	if release != nil {
		<-release
	}

	r.Body = io.NopCloser(bytes.NewReader(body))
	rec := &answerRecorder{ResponseWriter: w, status: http.StatusOK}
	p.fwd.ServeHTTP(rec, r)
	push.status, push.body = rec.status, rec.body.String()
	p.mu.Lock()
	p.pushes = append(p.pushes, push)
	p.mu.Unlock()
	if answered != nil {
		answered <- push
	}
}

// holdNextPush holds the next push under term; the channel closes when it
// arrives.
func (p *termProxy) holdNextPush(term uint64) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.holdTerm, p.held, p.release, p.answered = term, make(chan struct{}), make(chan struct{}), make(chan termPush, 1)
	return p.held
}

// releaseHeld lets the held push go on and returns the receiver's answer.
func (p *termProxy) releaseHeld() termPush {
	p.mu.Lock()
	release, answered := p.release, p.answered
	p.release = nil
	p.mu.Unlock()
	close(release)
	select {
	case a := <-answered:
		return a
	case <-time.After(20 * time.Second):
		p.t.Fatal("no answer to the held push")
		return termPush{}
	}
}

// count is how many pushes were answered.
func (p *termProxy) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pushes)
}

// applied is how many events pushes the receiver answered with 200 carried.
func (p *termProxy) applied() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, x := range p.pushes {
		if x.status == http.StatusOK {
			n += x.events
		}
	}
	return n
}

// appliedAbove is how many pushes under a term above term were answered 200.
func (p *termProxy) appliedAbove(term uint64) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, x := range p.pushes {
		if x.term > term && x.status == http.StatusOK {
			n++
		}
	}
	return n
}

// underTermFrom lists the pushes under term answered from the from-th on.
func (p *termProxy) underTermFrom(term uint64, from int) []termPush {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []termPush
	for _, x := range p.pushes[from:] {
		if x.term == term {
			out = append(out, x)
		}
	}
	return out
}

// answerRecorder passes an answer on and keeps its status and body.
type answerRecorder struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (a *answerRecorder) WriteHeader(code int) {
	a.status = code
	a.ResponseWriter.WriteHeader(code)
}

func (a *answerRecorder) Write(b []byte) (int, error) {
	a.body.Write(b)
	return a.ResponseWriter.Write(b)
}
