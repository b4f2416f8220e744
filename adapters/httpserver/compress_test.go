package httpserver_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/clock"
	"github.com/harmony-postbox/postbox/adapters/httpserver"
	"github.com/harmony-postbox/postbox/adapters/metrics"
	"github.com/harmony-postbox/postbox/domain"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	"github.com/harmony-postbox/postbox/gen/postbox/admin/v1/adminv1connect"
	authv1 "github.com/harmony-postbox/postbox/gen/protocol/auth/v1"
)

// connectCall posts a Connect unary request to url from a caller that
// accepts gzip, as connect-go clients do by default, and returns the reply
// body as it came and its Content-Encoding.
func connectCall(t *testing.T, url string, req proto.Message) (body []byte, encoding string) {
	t.Helper()
	raw, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	r, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url, bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	r.Header.Set("Content-Type", "application/proto")
	r.Header.Set("Connect-Protocol-Version", "1")
	// Set by hand, so that the transport hands the body over as it came.
	r.Header.Set("Accept-Encoding", "gzip")
	res, err := closeIdle(t, http1Client()).Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err = io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK {
		t.Fatalf("%s: %d %s", url, res.StatusCode, body)
	}
	return body, res.Header.Get("Content-Encoding")
}

// A reply of a few bytes goes out as it is, even to a caller that accepts
// gzip: compressing it costs far more than the bytes it could save.
func TestSmallFederationRepliesAreNotCompressed(t *testing.T) {
	t.Parallel()
	f := startFederation(t, fedOptions{})
	body, encoding := connectCall(t, f.url+pathKey, &authv1.KeyRequest{})
	if encoding != "" {
		t.Errorf("Key reply of a %d-byte key sent with Content-Encoding %q, want none", len(f.public), encoding)
	}
	if want := append([]byte{0x0a, 0x20}, f.public...); !bytes.Equal(body, want) {
		t.Errorf("Key reply = %x, want %x", body, want)
	}
}

// peerLister answers ListPeers with n peers.
type peerLister struct {
	adminv1connect.UnimplementedAdminServiceHandler
	n int
}

func (l peerLister) ListPeers(context.Context, *connect.Request[adminv1.ListPeersRequest]) (*connect.Response[adminv1.ListPeersResponse], error) {
	res := &adminv1.ListPeersResponse{}
	for i := range l.n {
		res.Peers = append(res.Peers, &adminv1.Peer{ServerId: fmt.Sprintf("peer%d.example:2289", i)})
	}
	return connect.NewResponse(res), nil
}

type noCursors struct{}

func (noCursors) Cursors() []domain.PeerCursor { return nil }

func (noCursors) PeerIDOf(domain.ServerID) (string, bool) { return "", false }

// The admin API compresses only replies large enough to gain from it.
func TestAdminRepliesAreCompressedOnlyWhenLarge(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		peers    int
		encoding string
	}{
		{1, ""},       // a couple of dozen bytes
		{200, "gzip"}, // several KiB
	} {
		t.Run(fmt.Sprint(tc.peers), func(t *testing.T) {
			t.Parallel()
			h := httpserver.NewAdminHandler(t.Context(), peerLister{n: tc.peers}, grpchealth.NewStaticChecker(),
				metrics.New(metrics.NewCounters(noCursors{}), noCursors{}), "", clock.System{}, discardLogger)
			addr := serve(t, "admin", h)
			body, encoding := connectCall(t, "http://"+addr+adminv1connect.AdminServiceListPeersProcedure, &adminv1.ListPeersRequest{})
			if encoding != tc.encoding {
				t.Fatalf("%d peers: Content-Encoding %q, want %q", tc.peers, encoding, tc.encoding)
			}
			if encoding == "gzip" {
				zr, err := gzip.NewReader(bytes.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				if body, err = io.ReadAll(zr); err != nil {
					t.Fatal(err)
				}
			}
			var res adminv1.ListPeersResponse
			if err := proto.Unmarshal(body, &res); err != nil || len(res.Peers) != tc.peers {
				t.Fatalf("reply of %d peers, %v; want %d", len(res.Peers), err, tc.peers)
			}
		})
	}
}
