// Package simnet is an in-memory network for simulating a federation in one
// test process: each simulated server gets an http.Client whose transport
// calls the other servers' http.Handlers directly, with no sockets, so a
// whole federation can run inside a testing/synctest bubble under virtual
// time.
//
// Faults are injected by a seeded random source, and each call's fate is a
// function of the seed, the link (caller, callee), the call's method (its
// path) and content (a key the simulation derives from the body, see
// KeyBy), and how many calls with that same method and content the link
// carried before it, never of goroutine timing: the k-th push of event 7
// from a to b meets the same fault in every run with the same seed, whether
// a pull on the same link ran before it or after. The faults:
// drop the request (the handler never runs), drop the reply (the handler
// ran, the caller gets an error), delay the call (which reorders concurrent
// calls), deliver it twice (a late copy runs the handler again, its reply
// discarded), and partitions, which the simulation sets per link. Every
// fault is recorded, and Digest summarises them.
package simnet

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"slices"
	"strings"
	"sync"
	"time"
)

// Kind is a kind of fault.
type Kind string

// The faults the network injects or records.
const (
	// Refused: nothing listens at the callee (a crashed or stopped server).
	Refused Kind = "refused"
	// Partitioned: the link is cut; the call fails without reaching the callee.
	Partitioned Kind = "partitioned"
	// DropRequest: the request is lost; the handler never runs.
	DropRequest Kind = "drop-request"
	// DropReply: the handler ran, its reply is lost.
	DropReply Kind = "drop-reply"
	// Delay: the call is held back before it reaches the callee.
	Delay Kind = "delay"
	// Duplicate: the request reaches the callee a second time, later.
	Duplicate Kind = "duplicate"
)

// Kinds lists every kind, in a fixed order for reports.
var Kinds = []Kind{Refused, Partitioned, DropRequest, DropReply, Delay, Duplicate}

// Faults are the chances, per call, of each fault.
type Faults struct {
	// DropRequest, DropReply and Duplicate are exclusive chances in [0, 1]
	// (their sum at most 1); Delay is drawn independently of them.
	DropRequest, DropReply, Duplicate, Delay float64
	// MaxDelay bounds a delay, and how late a duplicate comes after the
	// original; a delay is uniform in [0, MaxDelay).
	MaxDelay time.Duration
}

// Fault is one fault the network injected.
type Fault struct {
	From, To string
	Path     string
	// Content is the key of the call's content (KeyBy); "" without one.
	Content string
	// Call is the call's number among those with its link, path and
	// content, counted from 0.
	Call  uint64
	Kind  Kind
	Delay time.Duration // for Delay and Duplicate
}

func (f Fault) String() string {
	s := fmt.Sprintf("%s->%s %s [%s] #%d %s", f.From, f.To, f.Path, f.Content, f.Call, f.Kind)
	if f.Delay > 0 {
		s += " " + f.Delay.String()
	}
	return s
}

// ErrUnreachable is what a call that did not get its reply fails with:
// refused, partitioned, or a request or reply lost on the way.
var ErrUnreachable = errors.New("simnet: unreachable")

// DuplicateTimeout bounds how long a duplicate's handler may run.
const DuplicateTimeout = time.Minute

type link struct{ from, to string }

// callKey is what a call's fate depends on besides the seed and its count.
type callKey struct{ from, to, path, content string }

// ContentKey derives, from a call's path and body, a key of what the call
// carries that does not depend on goroutine timing (say, the sequence
// numbers of a push, not its token's nonce), so that two concurrent calls
// on one link keep their fates whichever goes first.
type ContentKey func(path string, body []byte) string

// Network connects simulated servers. It is safe for concurrent use; make
// it inside the synctest bubble that runs the servers, so its goroutines
// and timers belong to the bubble.
type Network struct {
	seed uint64

	// ctx ends with Close, cancelling duplicates still to come.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	faults   Faults
	latency  time.Duration
	onCall   func(Call)
	key      ContentKey
	handlers map[string]http.Handler
	calls    map[callKey]uint64
	cut      map[link]bool
	trace    []Fault
	addrs    map[string]string // caller's remote address, as a server sees it
}

// New returns a network whose faults follow seed.
func New(seed uint64, faults Faults) *Network {
	ctx, cancel := context.WithCancel(context.Background())
	return &Network{
		seed: seed, faults: faults, ctx: ctx, cancel: cancel,
		handlers: map[string]http.Handler{}, calls: map[callKey]uint64{},
		cut: map[link]bool{}, addrs: map[string]string{},
	}
}

// SetFaults changes the chances of faults from now on (for example to
// none, to check that everything is delivered once faults stop).
func (n *Network) SetFaults(f Faults) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.faults = f
}

// SetLatency gives every call a transit time between half and one and a
// half times d, drawn like its faults (from the seed, the call and its
// count), and not a fault: with none, every call and what it causes
// happen at the instant it is made, and goroutines of several servers
// woken at one instant run in an order Go does not fix; spread apart,
// they seldom meet, and a seed replays (README "Simulation").
func (n *Network) SetLatency(d time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.latency = d
}

// Call is one call as the network carried it, for OnCall.
type Call struct {
	From, To, Path string
	// Content is the key of the call's content (KeyBy).
	Content string
	// Count is the call's number among those with its link, path and
	// content, from 0.
	Count uint64
}

// OnCall makes the network tell f of every call as it is made, before its
// fate: a simulation checks what senders do with it (say, that no push
// loop spins). f runs with the network's lock held, so it must not call
// the network. Set it before the first call.
func (n *Network) OnCall(f func(Call)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.onCall = f
}

// KeyBy sets how calls' content is keyed (nil: by path alone). Set it
// before the first call.
func (n *Network) KeyBy(key ContentKey) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.key = key
}

// Listen serves h at host (a server ID, "name:port"): calls to
// http(s)://host reach it. Listening again replaces the handler, as a
// restarted server does.
func (n *Network) Listen(host string, h http.Handler) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.handlers[host] = h
}

// Unlisten stops serving host: calls to it are refused, as to a crashed
// server. Handlers already running go on.
func (n *Network) Unlisten(host string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.handlers, host)
}

// Partition cuts the link from one server to another (one direction).
func (n *Network) Partition(from, to string) { n.setCut(from, to, true) }

// Heal restores the link from one server to another.
func (n *Network) Heal(from, to string) { n.setCut(from, to, false) }

func (n *Network) setCut(from, to string, cut bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if cut {
		n.cut[link{from, to}] = true
	} else {
		delete(n.cut, link{from, to})
	}
}

// Client returns the http.Client that server from calls others with.
func (n *Network) Client(from string) *http.Client {
	return &http.Client{Transport: n.Transport(from)}
}

// Transport returns the RoundTripper behind Client(from).
func (n *Network) Transport(from string) http.RoundTripper {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.addrs[from]; !ok {
		// A documentation address per caller, in the order callers joined.
		n.addrs[from] = fmt.Sprintf("192.0.2.%d:%d", len(n.addrs)%254+1, 40000+len(n.addrs))
	}
	return &transport{n: n, from: from, addr: n.addrs[from]}
}

// Close cancels duplicates still to be delivered and waits for every
// handler the network started on its own (duplicates, and handlers whose
// callers gave up) to return.
func (n *Network) Close() {
	n.cancel()
	n.wg.Wait()
}

// Trace returns the faults injected so far, ordered by link, path,
// content and call number, so that it is the same whatever order
// concurrent calls ran in.
func (n *Network) Trace() []Fault {
	n.mu.Lock()
	out := slices.Clone(n.trace)
	n.mu.Unlock()
	slices.SortStableFunc(out, func(a, b Fault) int {
		return cmp.Or(strings.Compare(a.From, b.From), strings.Compare(a.To, b.To), strings.Compare(a.Path, b.Path),
			strings.Compare(a.Content, b.Content), cmp.Compare(a.Call, b.Call), strings.Compare(string(a.Kind), string(b.Kind)))
	})
	return out
}

// Counts returns how many faults of each kind were injected.
func (n *Network) Counts() map[Kind]int {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := map[Kind]int{}
	for _, f := range n.trace {
		out[f.Kind]++
	}
	return out
}

// Calls returns how many calls the network carried, over all links.
func (n *Network) Calls() uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	var total uint64
	for _, c := range n.calls {
		total += c
	}
	return total
}

// Digest is a short hash of the trace: two runs that injected the same
// faults into the same calls have the same digest.
func (n *Network) Digest() string {
	h := sha256.New()
	for _, f := range n.Trace() {
		fmt.Fprintln(h, f.String())
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// Summary is a one-line count of the faults by kind.
func (n *Network) Summary() string {
	counts := n.Counts()
	parts := make([]string, 0, len(Kinds))
	for _, k := range Kinds {
		parts = append(parts, fmt.Sprintf("%s=%d", k, counts[k]))
	}
	return strings.Join(parts, " ")
}

// fate is what happens to one call.
type fate struct {
	call    uint64
	handler http.Handler
	kind    Kind          // "" for none, else Refused, Partitioned, DropRequest, DropReply or Duplicate
	delay   time.Duration // before the call reaches the callee, a fault
	transit time.Duration // before the call reaches the callee, not a fault (SetLatency)
	lag     time.Duration // of a duplicate after the original
}

// decide counts the call among those of its link, path and content, and
// draws its fate from the seed, those and the count.
func (n *Network) decide(from, to, path string, body []byte) fate {
	n.mu.Lock()
	defer n.mu.Unlock()
	l := link{from, to}
	var content string
	if n.key != nil {
		content = n.key(path, body)
	}
	ck := callKey{from, to, path, content}
	k := n.calls[ck]
	n.calls[ck] = k + 1
	if n.onCall != nil {
		n.onCall(Call{From: from, To: to, Path: path, Content: content, Count: k})
	}
	h := fnv.New64a()
	_, _ = io.WriteString(h, from+"\x00"+to+"\x00"+path+"\x00"+content)
	r := rand.New(rand.NewPCG(n.seed, h.Sum64()^(k+1)*0x9e3779b97f4a7c15))
	// Every value is drawn for every call, so one fault's chance does not
	// shift the draws of the others.
	delayDraw, delayFrac, kindDraw, lagFrac, transitFrac := r.Float64(), r.Float64(), r.Float64(), r.Float64(), r.Float64()
	f := n.faults
	ft := fate{call: k, handler: n.handlers[to], transit: time.Duration((0.5 + transitFrac) * float64(n.latency))}
	if delayDraw < f.Delay && f.MaxDelay > 0 {
		ft.delay = time.Duration(delayFrac * float64(f.MaxDelay))
	}
	switch {
	case n.cut[l]:
		ft.kind, ft.delay = Partitioned, 0
	case ft.handler == nil:
		ft.kind = Refused
	case kindDraw < f.DropRequest:
		ft.kind = DropRequest
	case kindDraw < f.DropRequest+f.DropReply:
		ft.kind = DropReply
	case kindDraw < f.DropRequest+f.DropReply+f.Duplicate:
		ft.kind = Duplicate
		ft.lag = time.Duration(lagFrac * float64(f.MaxDelay))
	}
	if ft.delay > 0 {
		n.trace = append(n.trace, Fault{From: from, To: to, Path: path, Content: content, Call: k, Kind: Delay, Delay: ft.delay})
	}
	if ft.kind != "" {
		n.trace = append(n.trace, Fault{From: from, To: to, Path: path, Content: content, Call: k, Kind: ft.kind, Delay: ft.lag})
	}
	return ft
}

type transport struct {
	n    *Network
	from string
	addr string
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		var err error
		body, err = io.ReadAll(req.Body)
		_ = req.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("simnet: read request body: %w", err)
		}
	}
	ctx := req.Context()
	to := req.URL.Host
	ft := t.n.decide(t.from, to, req.URL.Path, body)
	fail := func(what string) error {
		return fmt.Errorf("simnet: %s %s: %s: %w", req.Method, req.URL, what, ErrUnreachable)
	}
	if wait := ft.delay + ft.transit; wait > 0 {
		if err := sleep(ctx, wait); err != nil {
			return nil, err
		}
	}
	switch ft.kind {
	case Partitioned:
		return nil, fail("network partitioned")
	case Refused:
		return nil, fail("connection refused")
	case DropRequest:
		return nil, fail("request lost")
	}
	trace := httptrace.ContextClientTrace(ctx)
	if trace != nil && trace.GotConn != nil {
		trace.GotConn(httptrace.GotConnInfo{})
	}
	if ft.kind == Duplicate {
		t.n.duplicate(t, ft, req, body)
	}
	resp, err := t.n.serve(ctx, t, ft.handler, req, body)
	if err != nil {
		return nil, err
	}
	if ft.kind == DropReply {
		_ = resp.Body.Close()
		return nil, fail("reply lost")
	}
	if trace != nil && trace.GotFirstResponseByte != nil {
		trace.GotFirstResponseByte()
	}
	resp.Request = req
	return resp, nil
}

// serve runs h on a copy of req, in its own goroutine as a server would,
// and returns its reply; if ctx ends first, the caller gets ctx's error
// and the handler runs on (with its request's context cancelled, as when a
// client closes its connection).
func (n *Network) serve(ctx context.Context, t *transport, h http.Handler, req *http.Request, body []byte) (*http.Response, error) {
	hctx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() { cancel(context.Cause(ctx)) })
	done := make(chan *http.Response, 1)
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer stop()
		defer cancel(nil)
		done <- run(hctx, t, h, req, body)
	}()
	select {
	case resp := <-done:
		if resp == nil {
			return nil, fmt.Errorf("simnet: %s %s: the handler aborted: %w", req.Method, req.URL, ErrUnreachable)
		}
		return resp, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("simnet: %s %s: %w", req.Method, req.URL, context.Cause(ctx))
	}
}

// duplicate delivers req to the callee once more, lag later, in the
// background; its reply goes nowhere.
func (n *Network) duplicate(t *transport, ft fate, req *http.Request, body []byte) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		ctx, cancel := context.WithTimeout(n.ctx, ft.lag+DuplicateTimeout)
		defer cancel()
		if sleep(ctx, ft.lag) != nil {
			return
		}
		if resp := run(ctx, t, ft.handler, req, body); resp != nil {
			_ = resp.Body.Close()
		}
	}()
}

// run calls h with a server-side copy of req and records its reply; nil if
// the handler aborted (panicked with http.ErrAbortHandler, as a server
// would take it).
func run(ctx context.Context, t *transport, h http.Handler, req *http.Request, body []byte) (resp *http.Response) {
	sreq := httptest.NewRequestWithContext(ctx, req.Method, req.URL.String(), bytes.NewReader(body))
	sreq.Header = req.Header.Clone()
	sreq.Host = req.URL.Host
	sreq.RemoteAddr = t.addr
	rec := httptest.NewRecorder()
	defer func() {
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler { //nolint:errorlint // net/http compares it the same way
				panic(p)
			}
			resp = nil
		}
	}()
	h.ServeHTTP(rec, sreq)
	return rec.Result()
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}
