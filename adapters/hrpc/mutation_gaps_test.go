package hrpc_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/hrpc"
	"github.com/harmony-postbox/postbox/adapters/rpcerrors"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// acceptingPush serves Push by accepting every message, even an empty one,
// and remembers the messages it was given.
type acceptingPush struct {
	mu  sync.Mutex
	got []*syncv1.PushRequest
}

func (a *acceptingPush) handler(logger *slog.Logger) *hrpc.Handler {
	return hrpc.NewHandler(logger, hrpc.Options{MaxRequestBytes: 64},
		hrpc.Unary(pushPath, func(_ context.Context, req *connect.Request[syncv1.PushRequest]) (*connect.Response[syncv1.PushResponse], error) {
			a.mu.Lock()
			defer a.mu.Unlock()
			a.got = append(a.got, req.Msg)
			return connect.NewResponse(&syncv1.PushResponse{}), nil
		}))
}

func (a *acceptingPush) calls() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.got)
}

// A request that says its length (as every real client's does) is read
// whole and handed to the method, over a real connection.
func TestARequestOfAnnouncedLengthIsServed(t *testing.T) {
	t.Parallel()
	var a acceptingPush
	srv := httptest.NewServer(a.handler(slog.New(slog.DiscardHandler)))
	t.Cleanup(srv.Close)
	req := &syncv1.PushRequest{}
	if err := proto.Unmarshal(unhex(t, "0a061204082a1007"), req); err != nil {
		t.Fatal(err)
	}
	if err := hrpc.Call(callCtx(t), srv.Client(), srv.URL, pushPath, nil, req, &syncv1.PushResponse{}, 0); err != nil {
		t.Fatalf("Call: %v", err)
	}
	if a.calls() != 1 || !proto.Equal(a.got[0], req) {
		t.Fatalf("the method got %v, want %v", a.got, req)
	}
}

// A body that does not match its Content-Length, shorter or longer, is
// refused before the method sees any of it.
func TestABodyNotOfItsAnnouncedLengthIsRefused(t *testing.T) {
	t.Parallel()
	push := unhex(t, "0a061204082a1007")
	for _, tc := range []struct {
		name     string
		announce int64
	}{
		{"shorter", int64(len(push)) + 12},
		{"longer", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var a acceptingPush
			req := &http.Request{
				Method: "POST", URL: &url.URL{Path: pushPath}, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
				Header:        http.Header{"Content-Type": {"application/hrpc"}},
				Body:          io.NopCloser(bytes.NewReader(push)),
				ContentLength: tc.announce,
			}
			rec := httptest.NewRecorder()
			a.handler(slog.New(slog.DiscardHandler)).ServeHTTP(rec, req)
			if id := checkReply(t, rec); rec.Code != http.StatusBadRequest || id != rpcerrors.BadUnaryRequest {
				t.Fatalf("got %d %q, want 400 %s", rec.Code, id, rpcerrors.BadUnaryRequest)
			}
			if a.calls() != 0 {
				t.Fatalf("the method was called with %v", a.got)
			}
		})
	}
}

type failingBody struct{}

func (failingBody) Read([]byte) (int, error) { return 0, errors.New("connection reset") }

func TestABodyThatCannotBeReadIsRefused(t *testing.T) {
	t.Parallel()
	var a acceptingPush
	var log bytes.Buffer
	h := a.handler(slog.New(slog.NewTextHandler(&log, nil)))
	req := &http.Request{
		Method: "POST", URL: &url.URL{Path: pushPath}, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Content-Type": {"application/hrpc"}},
		Body:   io.NopCloser(failingBody{}),
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if id := checkReply(t, rec); rec.Code != http.StatusBadRequest || id != rpcerrors.BadUnaryRequest {
		t.Fatalf("got %d %q, want 400 %s", rec.Code, id, rpcerrors.BadUnaryRequest)
	}
	// The refusal is logged, with why, for the operator.
	if !strings.Contains(log.String(), "hrpc request refused") || !strings.Contains(log.String(), "connection reset") {
		t.Fatalf("log: %q", log.String())
	}
}

func TestAGetIsToldToPost(t *testing.T) {
	t.Parallel()
	rec := serveOne(newTestHandler(64, nil), "GET", pushPath, "application/hrpc", nil, nil)
	if rec.Code != http.StatusMethodNotAllowed || rec.Result().Header.Get("Allow") != http.MethodPost {
		t.Fatalf("got %d, Allow %q; want 405, Allow POST", rec.Code, rec.Result().Header.Get("Allow"))
	}
}

func TestCallTakesEvery2xxAsSuccess(t *testing.T) {
	t.Parallel()
	srv, _, _ := replyWith(t, 299, "application/hrpc", nil)
	if err := hrpc.Call(callCtx(t), srv.Client(), srv.URL, "/p", nil, &syncv1.PushRequest{}, &syncv1.PushResponse{}, 0); err != nil {
		t.Fatalf("a 299 reply: %v", err)
	}
}

// A resource-exhausted reply without RetryInfo (a body over the limit)
// says no wait, and does not claim to have one.
func TestATooLargeReplyCarriesNoRetryInfo(t *testing.T) {
	t.Parallel()
	err := hrpc.Call(callCtx(t), http.DefaultClient, busyServer(t, rpcerrors.ErrRequestTooLarge), "/p", nil, &syncv1.PushRequest{}, &syncv1.PushResponse{}, 0)
	var remote *hrpc.RemoteError
	if !errors.As(err, &remote) || remote.Identifier != rpcerrors.ResourceExhausted {
		t.Fatalf("Call: %v, want resource-exhausted", err)
	}
	if remote.HasRetryInfo || remote.RetryAfter != 0 {
		t.Fatalf("RetryInfo %v, %s; want none", remote.HasRetryInfo, remote.RetryAfter)
	}
}
