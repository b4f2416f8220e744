package httpserver

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/harmony-postbox/postbox/adapters/rpcerrors"
	"github.com/harmony-postbox/postbox/domain"
)

// Admission bounds what the federation listener takes in: request bodies are
// read only after the caller is authenticated from its headers, and only
// within byte budgets, and only while they keep arriving.
type Admission struct {
	// InflightBytes bounds the request bodies held at once, all callers
	// together; never below the request size limit (0: DefaultInflightBytes).
	InflightBytes int64
	// PeerBytes bounds one authenticated peer's bodies at once (0: a quarter
	// of InflightBytes, and at least the request size limit).
	PeerBytes int64
	// MinBodyBytes must arrive in every BodyWindow while a body is read, or
	// the request is cut (0: 8 KiB per 10 s).
	MinBodyBytes int64
	BodyWindow   time.Duration
	// RetryAfter is the wait a refused caller is told (0: one second).
	RetryAfter time.Duration
}

// DefaultInflightBytes is the default for Admission.InflightBytes: sixteen
// request bodies of the largest size, or more if the limit is small.
func DefaultInflightBytes(maxRequest int64) int64 {
	return max(16*maxRequest, 64<<20)
}

// Defaults of the body rate rule: a body must bring 8 KiB in every 10
// seconds (800 bytes/s) while it is read. A 4 MiB push needs about 90
// minutes at that rate, so slow links pass; a 1 byte/s body is cut after 10 s.
const (
	DefaultMinBodyBytes = 8 << 10
	DefaultBodyWindow   = 10 * time.Second
)

// keyBodyBytes bounds the body of a call that needs no token
// (AuthService.Key, whose request is empty): strangers may send those, so
// each holds next to nothing of the budget.
const keyBodyBytes = 1 << 10

// framingBytes is room for transport framing around a message of the
// largest size (a gRPC envelope prefix is 5 bytes).
const framingBytes = 64

// ValidateInflight checks an in-flight budget against the request size
// limit: a budget below it could never admit the largest request this
// server announces.
func ValidateInflight(inflight, maxRequest int64) error {
	if inflight < 0 || (inflight != 0 && inflight < maxRequest) {
		return fmt.Errorf("--max-inflight-bytes %d is below --max-request-bytes %d: the largest request could never be admitted", inflight, maxRequest)
	}
	return nil
}

// ValidatePeerInflight checks one peer's budget against the request size
// limit and the budget of all callers (inflight, 0 for its default): a
// peer's budget below the limit could never admit its largest request,
// and one above the whole budget would be the whole budget.
func ValidatePeerInflight(peer, inflight, maxRequest int64) error {
	if peer == 0 {
		return nil
	}
	if peer < maxRequest {
		return fmt.Errorf("--max-peer-inflight-bytes %d is below --max-request-bytes %d: the largest request could never be admitted", peer, maxRequest)
	}
	if all := cmp.Or(inflight, DefaultInflightBytes(maxRequest)); peer > all {
		return fmt.Errorf("--max-peer-inflight-bytes %d is above --max-inflight-bytes %d, the budget of all callers together", peer, all)
	}
	return nil
}

func (a Admission) withDefaults(maxRequest int64) Admission {
	if a.InflightBytes <= 0 {
		a.InflightBytes = DefaultInflightBytes(maxRequest)
	}
	a.InflightBytes = max(a.InflightBytes, maxRequest+framingBytes)
	if a.PeerBytes <= 0 {
		a.PeerBytes = a.InflightBytes / 4
	}
	a.PeerBytes = min(max(a.PeerBytes, maxRequest+framingBytes), a.InflightBytes)
	if a.MinBodyBytes <= 0 || a.BodyWindow <= 0 {
		a.MinBodyBytes, a.BodyWindow = DefaultMinBodyBytes, DefaultBodyWindow
	}
	if a.RetryAfter <= 0 {
		a.RetryAfter = time.Second
	}
	return a
}

// Preauthenticator authenticates a federation call from its headers alone,
// before its body is read. ok is false for a procedure that needs no token;
// the returned context carries the caller for the handler.
// federation.PostboxService implements it.
type Preauthenticator interface {
	Preauthenticate(ctx context.Context, procedure string, h http.Header) (_ context.Context, _ domain.Caller, ok bool, _ error)
}

// byteBudget is a count of bytes taken from a limit, never waited for: a
// request that does not fit is refused at once, so nothing queues.
type byteBudget struct {
	mu    sync.Mutex
	used  int64
	limit int64
}

func (b *byteBudget) take(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.limit {
		return false
	}
	b.used += n
	return true
}

func (b *byteBudget) give(n int64) {
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
}

// peerBudgets is a byteBudget per authenticated peer; a peer holding
// nothing has no entry.
type peerBudgets struct {
	mu    sync.Mutex
	used  map[domain.ServerID]int64
	limit int64
}

func (b *peerBudgets) take(id domain.ServerID, n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used[id]+n > b.limit {
		return false
	}
	b.used[id] += n
	return true
}

func (b *peerBudgets) give(id domain.ServerID, n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used[id] -= n; b.used[id] <= 0 {
		delete(b.used, id)
	}
}

// admit decides whether r may be read, before any of its body is: the
// caller's token first (from the headers), then the budgets. On success it
// returns the request to serve, with the caller in its context and its body
// guarded, and a release to call once served.
func (f *FederationHandler) admit(w http.ResponseWriter, r *http.Request) (*http.Request, func(), error) {
	ctx, caller, authed := r.Context(), domain.Caller{}, false
	if f.preauth != nil {
		var err error
		ctx, caller, authed, err = f.preauth.Preauthenticate(r.Context(), r.URL.Path, r.Header)
		if err != nil {
			return nil, nil, err
		}
	}
	limit := f.limit + framingBytes
	if f.preauth != nil && !authed {
		limit = keyBodyBytes
	}
	if r.ContentLength > limit {
		return nil, nil, fmt.Errorf("%w: %d bytes", rpcerrors.ErrRequestTooLarge, r.ContentLength)
	}
	// What the body may cost: what it says, else the most it may be.
	n := limit
	if r.ContentLength >= 0 {
		n = r.ContentLength
	}
	if !f.all.take(n) {
		return nil, nil, &rpcerrors.Busy{Budget: "request bodies in flight", RetryAfter: f.adm.RetryAfter}
	}
	release := func() { f.all.give(n) }
	// Per peer only once authenticated: a forged ID must not spend a real
	// peer's share.
	if authed {
		if !f.peers.take(caller.ServerID, n) {
			release()
			return nil, nil, &rpcerrors.Busy{Budget: "this peer's request bodies in flight", RetryAfter: f.adm.RetryAfter}
		}
		release = func() { f.peers.give(caller.ServerID, n); f.all.give(n) }
	}
	r = r.WithContext(ctx)
	r.Body = &rateReader{
		body:     http.MaxBytesReader(w, r.Body, limit),
		rc:       http.NewResponseController(w),
		minBytes: f.adm.MinBodyBytes,
		window:   f.adm.BodyWindow,
	}
	return r, release, nil
}

// errSlowBody cuts a request whose body arrives too slowly.
var errSlowBody = errors.New("request body arrives too slowly")

// rateReader reads a request body that must keep arriving: at least
// minBytes in every window, measured from when reading starts. A read
// deadline (on the wall clock, as the connection's are) cuts a body that
// stops altogether; it replaces the listener's absolute read timeout, so a
// large body on a slow but steady link is read to the end.
type rateReader struct {
	body     io.ReadCloser
	rc       *http.ResponseController
	minBytes int64
	window   time.Duration

	got      int64 // in the current window
	deadline time.Time
	err      error
}

func (b *rateReader) nextWindow(now time.Time) {
	b.got, b.deadline = 0, now.Add(b.window)
	// Unsupported on some writers (test recorders); then only the check
	// after each read applies.
	_ = b.rc.SetReadDeadline(b.deadline)
}

func (b *rateReader) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.deadline.IsZero() {
		b.nextWindow(time.Now())
	}
	n, err := b.body.Read(p)
	b.got += int64(n)
	now := time.Now()
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded) || (b.got < b.minBytes && now.After(b.deadline)):
		b.err = fmt.Errorf("%w: fewer than %d bytes in %s", errSlowBody, b.minBytes, b.window)
		_ = b.rc.SetReadDeadline(now) // and nothing more from this connection
		return n, b.err
	case err == io.EOF:
		// Read whole: the reply may take its own time, as long as the
		// listener would give any request.
		_ = b.rc.SetReadDeadline(time.Time{})
		_ = b.rc.SetWriteDeadline(now.Add(writeTimeout))
	case err == nil && b.got >= b.minBytes:
		b.nextWindow(now)
	}
	return n, err
}

func (b *rateReader) Close() error { return b.body.Close() }
