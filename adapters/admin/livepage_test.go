package admin

import (
	"bufio"
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"

	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
)

// countingPeers answers one peer whose head grows by one each call.
type countingPeers struct{ calls atomic.Uint64 }

func (c *countingPeers) ListPeers(context.Context, *connect.Request[adminv1.ListPeersRequest]) (*connect.Response[adminv1.ListPeersResponse], error) {
	n := c.calls.Add(1)
	return connect.NewResponse(&adminv1.ListPeersResponse{Peers: []*adminv1.Peer{{ServerId: "b.example:2289", PeerId: "pb", Head: n}}}), nil
}

// sseEvent is one Server-Sent Event.
type sseEvent struct{ id, event, data string }

// readEvents reads n events of the given type from an SSE body.
func readEvents(t *testing.T, sc *bufio.Scanner, n int, kind string) []sseEvent {
	t.Helper()
	var out []sseEvent
	var cur sseEvent
	for len(out) < n && sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if cur.event == kind {
				out = append(out, cur)
			}
			cur = sseEvent{}
		case strings.HasPrefix(line, "id: "):
			cur.id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "event: "):
			cur.event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			cur.data = strings.TrimPrefix(line, "data: ")
		}
	}
	if len(out) < n {
		t.Fatalf("the feed ended after %d %q events: %v", len(out), kind, sc.Err())
	}
	return out
}

func TestLivePageWithAToken(t *testing.T) {
	t.Parallel()
	ctx, stop := context.WithCancel(t.Context())
	peers := &countingPeers{}
	at := time.UnixMilli(1_800_000_000_123)
	srv := httptest.NewServer(Guard(LivePage(ctx, peers, "s3cret", 10*time.Millisecond, func() time.Time { return at }), "s3cret", nil))
	defer srv.Close()
	get := func(path, cookie, bearer, method string) *http.Response {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), method, srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if cookie != "" {
			req.AddCookie(&http.Cookie{Name: liveCookie, Value: cookie})
		}
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		res, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}

	// The page's files need no token, and hold no data.
	for _, path := range []string{"/live/", "/live/app.js", "/live/style.css"} {
		res := get(path, "", "", "GET")
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Errorf("GET %s without the token: %d, want 200", path, res.StatusCode)
		}
	}
	// The feed does, or the cookie the token buys.
	for _, c := range []struct{ cookie, bearer, method, path string }{
		{"", "", "GET", "/live/feed"},
		{"forged", "", "GET", "/live/feed"},
		{"", "", "GET", "/live/session"},
		{"", "", "POST", "/live/session"},
		{"", "wrong", "POST", "/live/session"},
		{liveCookieValue("s3cret"), "", "POST", "/live/session"}, // the cookie buys no cookie
		{liveCookieValue("s3cret"), "", "GET", "/metrics"},       // nor anything but the page's reads
	} {
		res := get(c.path, c.cookie, c.bearer, c.method)
		res.Body.Close()
		if res.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s %s with cookie %q, bearer %q: %d, want 401", c.method, c.path, c.cookie, c.bearer, res.StatusCode)
		}
	}
	res := get("/live/session", "", "s3cret", "POST")
	res.Body.Close()
	var cookie *http.Cookie
	for _, c := range res.Cookies() {
		if c.Name == liveCookie {
			cookie = c
		}
	}
	if res.StatusCode != http.StatusNoContent || cookie == nil || !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode ||
		cookie.Path != LivePrefix || strings.Contains(cookie.Value, "s3cret") {
		t.Fatalf("POST /live/session with the token: %d, cookie %+v; want an HttpOnly, SameSite=Strict cookie for %s, not the token", res.StatusCode, cookie, LivePrefix)
	}
	if res := get("/live/session", cookie.Value, "", "GET"); res.StatusCode != http.StatusNoContent {
		t.Errorf("GET /live/session with the cookie: %d", res.StatusCode)
	}

	// With the cookie the feed sends snapshots, each a ListPeersResponse.
	res = get("/live/feed", cookie.Value, "", "GET")
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("GET /live/feed with the cookie: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	events := readEvents(t, bufio.NewScanner(res.Body), 3, "peers")
	var last uint64
	for _, e := range events {
		var m adminv1.ListPeersResponse
		if err := protojson.Unmarshal([]byte(e.data), &m); err != nil {
			t.Fatalf("feed data %q: %v", e.data, err)
		}
		if len(m.GetPeers()) != 1 || m.GetPeers()[0].GetServerId() != "b.example:2289" || m.GetPeers()[0].GetHead() <= last {
			t.Errorf("feed snapshot %v after head %d", m.GetPeers(), last)
		}
		last = m.GetPeers()[0].GetHead()
		if e.id != strconv.FormatInt(at.UnixMilli(), 10) {
			t.Errorf("event ID %q, want the server's time %d", e.id, at.UnixMilli())
		}
	}

	// Shutting down ends the stream.
	stop()
	done := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(res.Body)
		for sc.Scan() {
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the feed went on after its context ended")
	}
}
