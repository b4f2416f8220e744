package hrpc_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/hrpc"
	"github.com/harmony-postbox/postbox/domain"
	harmonytypesv1 "github.com/harmony-postbox/postbox/gen/protocol/harmonytypes/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

const pushPath = "/protocol.sync.v1.PostboxService/Push"

// Byte vectors copied from the shared wire-vectors.json.
var fixtureHex = []string{
	"0a061204082a1007",                             // push request
	"0a061204082a1007a00629",                       // push request with the sequence extension
	"0a060a04082a1007",                             // push request, user removed
	"0a0d1a0b082a10091a05696e762d31",               // push request, user invited
	"0a0d220b0807102a1a05696e762d31",               // push request, invite rejected
	"a00628a80601",                                 // pull request with an acknowledgement
	"0a146e65772e6578616d706c652e6f72673a32323839", // notify new id
	"", // empty message
}

var errBoom = errors.New("boom")

// pushHandler is a tiny PostboxService.Push: it echoes nothing, refuses a
// push without an event, refuses user-invited events as bad auth (a domain
// error), and fails on invite-rejected events with an unclassified error.
func pushHandler(_ context.Context, req *connect.Request[syncv1.PushRequest]) (*connect.Response[syncv1.PushResponse], error) {
	switch req.Msg.GetEvent().GetKind().(type) {
	case nil:
		return nil, fmt.Errorf("%w: no event", domain.ErrInvalidArgument)
	case *syncv1.Event_UserInvited_:
		return nil, fmt.Errorf("%w: from the handler", domain.ErrBadAuth)
	case *syncv1.Event_UserRejectedInvite_:
		return nil, errBoom
	}
	if req.Header().Get("X-Test") == "connect-error" {
		return nil, connect.NewError(connect.CodeResourceExhausted, errors.New("slow down"))
	}
	return connect.NewResponse(&syncv1.PushResponse{}), nil
}

func newTestHandler(limit int64, observe func(string, error)) *hrpc.Handler {
	return hrpc.NewHandler(slog.New(slog.DiscardHandler), hrpc.Options{MaxRequestBytes: limit, Observe: observe},
		hrpc.Unary(pushPath, pushHandler))
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkReply asserts what every hRPC reply must be: both headers, and either
// 200 or a body that decodes as an hRPC error with an identifier.
func checkReply(t testing.TB, rec *httptest.ResponseRecorder) (identifier string) {
	t.Helper()
	h := rec.Result().Header
	if got := h.Values("Content-Type"); len(got) != 1 || got[0] != "application/hrpc" {
		t.Fatalf("Content-Type = %q, want exactly application/hrpc", got)
	}
	if got := h.Values("Hrpc-Version"); len(got) != 1 || got[0] != "1" {
		t.Fatalf("Hrpc-Version = %q, want exactly 1", got)
	}
	if rec.Code == http.StatusOK {
		var res syncv1.PushResponse
		if err := proto.Unmarshal(rec.Body.Bytes(), &res); err != nil {
			t.Fatalf("200 reply %x is not a PushResponse: %v", rec.Body.Bytes(), err)
		}
		return ""
	}
	if rec.Code < 400 || rec.Code > 599 {
		t.Fatalf("status %d is neither 200 nor an error", rec.Code)
	}
	var e harmonytypesv1.Error
	if err := proto.Unmarshal(rec.Body.Bytes(), &e); err != nil {
		t.Fatalf("error reply %x does not decode as an hRPC error: %v", rec.Body.Bytes(), err)
	}
	if e.GetIdentifier() == "" {
		t.Fatalf("error reply %d without an identifier", rec.Code)
	}
	return e.GetIdentifier()
}

func serveOne(h http.Handler, method, path, contentType string, header http.Header, body []byte) *httptest.ResponseRecorder {
	req := &http.Request{
		Method: method,
		URL:    &url.URL{Path: path},
		Header: http.Header{},
		Body:   io.NopCloser(bytes.NewReader(body)),
		Proto:  "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestHandlerReplies(t *testing.T) {
	t.Parallel()
	type call struct {
		procedure string
		err       error
	}
	var observed []call
	h := newTestHandler(64, func(p string, err error) { observed = append(observed, call{p, err}) })
	push := unhex(t, "0a061204082a1007")
	for _, tc := range []struct {
		name, method, path, contentType string
		header                          http.Header
		body                            []byte
		status                          int
		identifier                      string
	}{
		{"ok", "POST", pushPath, "application/hrpc", nil, push, 200, ""},
		{"ok with parameters and odd case", "POST", pushPath, "APPLICATION/hrpc ; charset=utf-8", nil, push, 200, ""},
		{"ok with a malformed parameter", "POST", pushPath, "application/hrpc; =", nil, push, 200, ""},
		{"GET", "GET", pushPath, "application/hrpc", nil, nil, 405, "hrpc.http.bad-unary-request"},
		{"no content type", "POST", pushPath, "", nil, push, 415, "hrpc.http.bad-unary-request"},
		{"other content type", "POST", pushPath, "application/proto", nil, push, 415, "hrpc.http.bad-unary-request"},
		{"hrpc prefix only", "POST", pushPath, "application/hrpcx", nil, push, 415, "hrpc.http.bad-unary-request"},
		{"unknown path", "POST", "/x.Y/Z", "application/hrpc", nil, push, 404, "hrpc.not-found"},
		{"garbage", "POST", pushPath, "application/hrpc", nil, []byte{0xff}, 400, "hrpc.http.bad-unary-request"},
		{"at the limit", "POST", pushPath, "application/hrpc", nil, append(bytes.Repeat([]byte{0x0a, 0x00}, 31), 0xff, 0xff), 400, "hrpc.http.bad-unary-request"},
		{"over the limit", "POST", pushPath, "application/hrpc", nil, make([]byte, 65), 413, "hrpc.resource-exhausted"},
		{"handler refuses", "POST", pushPath, "application/hrpc", nil, nil, 400, "hrpc.http.bad-unary-request"},
		{"domain error", "POST", pushPath, "application/hrpc", nil, unhex(t, "0a0d1a0b082a10091a05696e762d31"), 400, "h.bad-auth"},
		{"unclassified error", "POST", pushPath, "application/hrpc", nil, unhex(t, "0a0d220b0807102a1a05696e762d31"), 500, "hrpc.internal-server-error"},
		{"connect error", "POST", pushPath, "application/hrpc", http.Header{"X-Test": {"connect-error"}}, push, 429, "hrpc.resource-exhausted"},
	} {
		rec := serveOne(h, tc.method, tc.path, tc.contentType, tc.header, tc.body)
		id := checkReply(t, rec)
		if rec.Code != tc.status || id != tc.identifier {
			t.Errorf("%s: got %d %q, want %d %q", tc.name, rec.Code, id, tc.status, tc.identifier)
		}
	}
	// The unclassified error's text stays in the log, not in the reply.
	rec := serveOne(h, "POST", pushPath, "application/hrpc", nil, unhex(t, "0a0d220b0807102a1a05696e762d31"))
	if bytes.Contains(rec.Body.Bytes(), []byte("boom")) {
		t.Errorf("internal error text leaked to the caller: %q", rec.Body.Bytes())
	}
	// Observe hears of every call that reached a method, with its error.
	if len(observed) == 0 || observed[0] != (call{pushPath, nil}) {
		t.Errorf("first observed call = %v, want a successful push", observed)
	}
	var sawBoom bool
	for _, c := range observed {
		sawBoom = sawBoom || errors.Is(c.err, errBoom)
	}
	if !sawBoom {
		t.Error("Observe never saw the handler's error")
	}
}

func TestUnaryPassesHeadersAndUnknownFields(t *testing.T) {
	t.Parallel()
	var gotAuth string
	var gotUnknown []byte
	h := hrpc.NewHandler(slog.New(slog.DiscardHandler), hrpc.Options{},
		hrpc.Unary(pushPath, func(_ context.Context, req *connect.Request[syncv1.PushRequest]) (*connect.Response[syncv1.PushResponse], error) {
			gotAuth = req.Header().Get("Authorization")
			gotUnknown = req.Msg.ProtoReflect().GetUnknown()
			return connect.NewResponse(&syncv1.PushResponse{}), nil
		}))
	rec := serveOne(h, "POST", pushPath, "application/hrpc", http.Header{"Authorization": {"token"}}, unhex(t, "0a061204082a1007a00629"))
	if id := checkReply(t, rec); id != "" {
		t.Fatalf("refused: %s", id)
	}
	if gotAuth != "token" {
		t.Errorf("handler saw Authorization %q", gotAuth)
	}
	if want := unhex(t, "a00629"); !bytes.Equal(gotUnknown, want) {
		t.Errorf("handler saw unknown fields %x, want the seq extension %x", gotUnknown, want)
	}
}

// FuzzHRPCRequest: whatever arrives, the handler never panics, every reply
// carries both hRPC headers, and it is a 200 or a decodable hRPC error with
// an identifier.
func FuzzHRPCRequest(f *testing.F) {
	for _, h := range fixtureHex {
		b, err := hex.DecodeString(h)
		if err != nil {
			f.Fatal(err)
		}
		f.Add("POST", pushPath, "application/hrpc", b)
	}
	f.Add("GET", pushPath, "application/hrpc", []byte(nil))
	f.Add("POST", pushPath, "Application/HRPC; charset=utf-8", []byte{0x0a, 0x00})
	f.Add("POST", "/nope", "application/hrpc", []byte{0xff})
	f.Add("post", pushPath, "application/hrpc;;;", make([]byte, 300))
	f.Add("POST", pushPath, "", []byte{})
	h := newTestHandler(256, nil)
	f.Fuzz(func(t *testing.T, method, path, contentType string, body []byte) {
		if path == "" || path[0] != '/' {
			path = "/" + path
		}
		rec := serveOne(h, method, path, contentType, nil, body)
		checkReply(t, rec)
	})
}
