package hrpc_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/hrpc"
	authv1 "github.com/harmony-postbox/postbox/gen/protocol/auth/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// replyWith serves one canned reply and records the request it got.
func replyWith(t *testing.T, status int, contentType string, body []byte) (*httptest.Server, *http.Request, *[]byte) {
	t.Helper()
	var got http.Request
	var gotBody []byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = *r.Clone(context.Background())
		gotBody, _ = io.ReadAll(r.Body)
		if contentType != "" {
			w.Header().Set("Content-Type", contentType)
		}
		w.WriteHeader(status)
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv, &got, &gotBody
}

func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestCallSendsExactHRPCRequest(t *testing.T) {
	t.Parallel()
	key := bytes.Repeat([]byte{7}, 32)
	reply, _ := proto.Marshal(&authv1.KeyResponse{Key: key})
	srv, got, gotBody := replyWith(t, 200, "application/hrpc", reply)

	var res authv1.KeyResponse
	header := http.Header{"Authorization": {"tok"}, "Content-Type": {"text/plain"}}
	if err := hrpc.Call(callCtx(t), srv.Client(), srv.URL+"/", "/protocol.auth.v1.AuthService/Key", header, &authv1.KeyRequest{}, &res, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(res.GetKey(), key) {
		t.Errorf("key = %x", res.GetKey())
	}
	if got.Method != http.MethodPost || got.URL.Path != "/protocol.auth.v1.AuthService/Key" {
		t.Errorf("request %s %s", got.Method, got.URL.Path)
	}
	// Exactly this value: the Rust server compares the whole header.
	if ct := got.Header.Values("Content-Type"); len(ct) != 1 || ct[0] != "application/hrpc" {
		t.Errorf("Content-Type = %q, want exactly application/hrpc", ct)
	}
	if v := got.Header.Get("Hrpc-Version"); v != "1" {
		t.Errorf("Hrpc-Version = %q", v)
	}
	if a := got.Header.Get("Authorization"); a != "tok" {
		t.Errorf("Authorization = %q", a)
	}
	if len(*gotBody) != 0 {
		t.Errorf("KeyRequest body = %x, want empty", *gotBody)
	}
}

func TestCallErrors(t *testing.T) {
	t.Parallel()
	// The fixture "hrpc error": h.bad-auth, "token time is outside the window".
	fixtureErr := unhex(t, "0a0a682e6261642d617574681220746f6b656e2074696d65206973206f757473696465207468652077696e646f77")
	for _, tc := range []struct {
		name        string
		status      int
		contentType string
		body        []byte
		maxReply    int64
		remote      *hrpc.RemoteError // nil: a local error containing wantText
		wantText    string
	}{
		{name: "hrpc error", status: 400, contentType: "application/hrpc", body: fixtureErr,
			remote: &hrpc.RemoteError{Procedure: "/p", HTTPStatus: 400, Identifier: "h.bad-auth", HumanMessage: "token time is outside the window"}},
		{name: "hrpc error with parameters", status: 502, contentType: "application/hrpc; charset=utf-8", body: fixtureErr,
			remote: &hrpc.RemoteError{Procedure: "/p", HTTPStatus: 502, Identifier: "h.bad-auth", HumanMessage: "token time is outside the window"}},
		{name: "not an hrpc body", status: 503, contentType: "text/html", body: []byte("<html>down</html>"),
			remote: &hrpc.RemoteError{Procedure: "/p", HTTPStatus: 503, HumanMessage: "Service Unavailable"}},
		{name: "undecodable hrpc body", status: 500, contentType: "application/hrpc", body: []byte{0xff},
			remote: &hrpc.RemoteError{Procedure: "/p", HTTPStatus: 500, HumanMessage: "Internal Server Error"}},
		{name: "undecodable success", status: 200, contentType: "application/hrpc", body: []byte{0xff}, wantText: "decode reply"},
		{name: "reply over the limit", status: 200, contentType: "application/hrpc", body: make([]byte, 11), maxReply: 10, wantText: "exceeds 10 bytes"},
		{name: "reply at the limit", status: 200, contentType: "application/hrpc", body: bytes.Repeat([]byte{0x0a, 0x00}, 5), maxReply: 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv, _, _ := replyWith(t, tc.status, tc.contentType, tc.body)
			err := hrpc.Call(callCtx(t), srv.Client(), srv.URL, "/p", nil, &syncv1.PushRequest{}, &syncv1.PushResponse{}, tc.maxReply)
			var remote *hrpc.RemoteError
			switch {
			case tc.remote != nil:
				if !errors.As(err, &remote) {
					t.Fatalf("err = %v, want a RemoteError", err)
				}
				if *remote != *tc.remote {
					t.Errorf("got %+v, want %+v", *remote, *tc.remote)
				}
			case tc.wantText != "":
				if err == nil || errors.As(err, &remote) || !strings.Contains(err.Error(), tc.wantText) {
					t.Errorf("err = %v, want a local error about %q", err, tc.wantText)
				}
			default:
				if err != nil {
					t.Errorf("err = %v", err)
				}
			}
		})
	}
}

func TestCallHonoursContext(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	err := hrpc.Call(ctx, srv.Client(), srv.URL, "/p", nil, &syncv1.PushRequest{}, &syncv1.PushResponse{}, 0)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want the deadline", err)
	}
}
