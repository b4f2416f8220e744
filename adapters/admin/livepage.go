package admin

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"

	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
)

// The live page: a read-only view of every peer for a browser, served
// under LivePrefix on the admin listener from files embedded in the
// binary (no network needed besides the listener itself).
//
// Its data feed is Server-Sent Events: every tick, one ListPeers answer as
// protojson (the message `postbox peers --json` prints, one per line), its
// event ID the server's time in Unix milliseconds. A browser's EventSource
// cannot send a bearer header, so with --admin-token the page trades the
// token, once, for a cookie: it reads the token from the URL's fragment
// (…/live/#token=…, never sent over the network), POSTs LiveSession with
// `Authorization: Bearer <token>`, and gets an HttpOnly, SameSite=Strict
// cookie scoped to LivePrefix, derived from the token (not the token) and
// valid for the page's reads only (Guard).

// LivePrefix is where the live page is served.
const LivePrefix = "/live/"

// Paths under LivePrefix.
const (
	LiveFeed    = LivePrefix + "feed"
	LiveSession = LivePrefix + "session"
	liveCookie  = "postbox_live"
)

//go:embed live
var liveFiles embed.FS

// PeerLister answers ListPeers, as the admin API does.
type PeerLister interface {
	ListPeers(ctx context.Context, req *connect.Request[adminv1.ListPeersRequest]) (*connect.Response[adminv1.ListPeersResponse], error)
}

// LivePage serves the page, its session and its feed, which sends a
// snapshot every tick until the request or ctx (the server's life) ends.
func LivePage(ctx context.Context, peers PeerLister, token Token, every time.Duration, now func() time.Time) http.Handler {
	static, err := fs.Sub(liveFiles, "live")
	if err != nil {
		panic(err) // the embedded directory is part of the build
	}
	mux := http.NewServeMux()
	mux.Handle("GET "+LivePrefix, http.StripPrefix(LivePrefix, http.FileServerFS(static)))
	mux.Handle("GET "+LiveFeed, liveFeed{ctx: ctx, peers: peers, every: every, now: now})
	// GET tells the page whether it may read (Guard answers 401 if not);
	// POST, which Guard lets through only with the bearer token, sets the
	// cookie.
	mux.HandleFunc("GET "+LiveSession, func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("POST "+LiveSession, func(w http.ResponseWriter, _ *http.Request) {
		if token != "" {
			http.SetCookie(w, &http.Cookie{Name: liveCookie, Value: liveCookieValue(token), Path: LivePrefix,
				HttpOnly: true, SameSite: http.SameSiteStrictMode})
		}
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

// liveCookieValue is the cookie a token buys: a MAC of a fixed text under
// the token, so the cookie reveals nothing of the token and dies with it.
func liveCookieValue(token Token) string {
	mac := hmac.New(sha256.New, []byte(token))
	mac.Write([]byte("postbox live page"))
	return base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

type liveFeed struct {
	ctx   context.Context
	peers PeerLister
	every time.Duration
	now   func() time.Time
}

func (f liveFeed) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	// A browser reconnects by itself; tell it not to wait long.
	if _, err := fmt.Fprint(w, "retry: 1000\n\n"); err != nil {
		return
	}
	tick := time.NewTicker(f.every)
	defer tick.Stop()
	for {
		if err := f.send(r.Context(), w); err != nil {
			msg, _ := json.Marshal(err.Error())
			fmt.Fprintf(w, "event: failed\ndata: %s\n\n", msg)
		}
		if rc.Flush() != nil {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-f.ctx.Done():
			return // shutting down: let the server's graceful shutdown finish
		case <-tick.C:
		}
	}
}

// send writes one snapshot: an SSE message whose data is one line of
// protojson of ListPeersResponse, its ID the server's time.
func (f liveFeed) send(ctx context.Context, w http.ResponseWriter) error {
	res, err := f.peers.ListPeers(ctx, connect.NewRequest(&adminv1.ListPeersRequest{}))
	if err != nil {
		return err
	}
	b, err := protojson.MarshalOptions{EmitUnpopulated: true}.Marshal(res.Msg)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "id: %d\nevent: peers\ndata: %s\n\n", f.now().UnixMilli(), b)
	return err
}
