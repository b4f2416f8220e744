package httpserver_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/authtoken"
	"github.com/harmony-postbox/postbox/adapters/federation"
	"github.com/harmony-postbox/postbox/adapters/federation/federationtest"
	"github.com/harmony-postbox/postbox/adapters/httpserver"
	"github.com/harmony-postbox/postbox/adapters/peerkeys"
	"github.com/harmony-postbox/postbox/domain"
	federationv1 "github.com/harmony-postbox/postbox/gen/postbox/federation/v1"
	harmonytypesv1 "github.com/harmony-postbox/postbox/gen/protocol/harmonytypes/v1"
	"github.com/harmony-postbox/postbox/gen/protocol/sync/v1/syncv1connect"
)

// Byte vectors copied from the shared wire-vectors.json (encoded by hand from
// the field numbers, sharing nothing with the generated code).
const (
	fixturePrivateKeyHex = "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2079b5562e8fe654f94078b112e8a98ba7901f853ae695bed7e0e3910bad049664"
	fixturePublicKeyHex  = "79b5562e8fe654f94078b112e8a98ba7901f853ae695bed7e0e3910bad049664"
	// "authorization header for that token": a plain upstream token from
	// example.org:2289 stamped 1700000000.
	fixturePlainHeader = "CkDfd/3cVPmjlLG+N7QTmZG+5Cz94LBrNOJ9P44ALrg9MuOZMnwGYJkCUq69zd/+HPs33jKG0PH9IsRzl79aJd4PEhgKEGV4YW1wbGUub3JnOjIyODkQgOLPqgY="
	// "token over the extended auth data": audience peer.example:2289.
	fixtureExtendedTokenHex = "0a40be1c99f7ec135a643b4c449133ddf8002c0c3e27b82f914519fbbbf7e001cc59b05687b3b7a2acfc6a43017e5a76ec68dbf5c9bc8d18af12a67cd5558b503104123f0a106578616d706c652e6f72673a323238391080e2cfaa06a20611706565722e6578616d706c653a32323839aa061030313233343536373839616263646566"
	// "auth data for NotifyNewId with the extension".
	fixtureNotifyAuthDataHex = "0a106578616d706c652e6f72673a323238391080e2cfaa06a20611706565722e6578616d706c653a32323839aa061030313233343536373839616263646566b206146e65772e6578616d706c652e6f72673a32323839"
	fixturePushHex           = "0a061204082a1007"       // "push request"
	fixturePushSeqHex        = "0a061204082a1007a00629" // "push request with the sequence extension" (seq 41)
	fixturePullAckHex        = "a00628a80601"           // "pull request with an acknowledgement" (ack 40)
	fixtureNotifyHex         = "0a146e65772e6578616d706c652e6f72673a32323839"
	fixtureKeyResponseHex    = "0a2079b5562e8fe654f94078b112e8a98ba7901f853ae695bed7e0e3910bad049664"
	fixtureHRPCErrorHex      = "0a0a682e6261642d617574681220746f6b656e2074696d65206973206f757473696465207468652077696e646f77"

	fixtureSender   = "example.org:2289"  // server_id in the fixture tokens
	fixtureAudience = "peer.example:2289" // audience in the extended fixture token
	fixtureTime     = 1700000000          // time in the fixture tokens
)

// The federation paths, spelled out rather than taken from generated code.
const (
	pathPull   = "/protocol.sync.v1.PostboxService/Pull"
	pathPush   = "/protocol.sync.v1.PostboxService/Push"
	pathNotify = "/protocol.sync.v1.PostboxService/NotifyNewId"
	pathKey    = "/protocol.auth.v1.AuthService/Key"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// manualClock is a domain.Clock the test moves by hand.
type manualClock struct {
	mu  sync.Mutex
	now time.Time
}

func newManualClock(unix int64) *manualClock { return &manualClock{now: time.Unix(unix, 0)} }

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *manualClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// offsetClock reads base shifted by offset: a sender whose clock is off.
type offsetClock struct {
	base   domain.Clock
	offset time.Duration
}

func (c offsetClock) Now() time.Time { return c.base.Now().Add(c.offset) }

var discardLogger = slog.New(slog.DiscardHandler)

// serve runs handler on a fresh 127.0.0.1 listener through httpserver.Listen
// and Serve, and stops it when the test ends.
func serve(t testing.TB, name string, handler http.Handler) string {
	t.Helper()
	srv, err := httpserver.Listen(t.Context(), name, "127.0.0.1:0", handler, httpserver.TLSFiles{}, discardLogger)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown %s: %v", name, err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve %s: %v", name, err)
			}
		case <-ctx.Done():
			t.Errorf("serve %s did not return", name)
		}
	})
	return srv.Addr().String()
}

// seenRequest is what a recording middleware saw of one request.
type seenRequest struct {
	Method, Path, ContentType string
	ProtoMajor                int
}

// recorder wraps a handler and records every request it passes on.
type recorder struct {
	next http.Handler
	mu   sync.Mutex
	seen []seenRequest
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	r.seen = append(r.seen, seenRequest{req.Method, req.URL.Path, req.Header.Get("Content-Type"), req.ProtoMajor})
	r.mu.Unlock()
	r.next.ServeHTTP(w, req)
}

func (r *recorder) requests() []seenRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]seenRequest(nil), r.seen...)
}

// peer is another server as far as the server under test can tell: its own
// key pair, served by the real KeyService through a FederationHandler on
// its own listener. Its ID is the listener's address.
type peer struct {
	id          domain.ServerID
	keyRequests atomic.Int64
	key         atomic.Pointer[ed25519.PrivateKey]
	handler     atomic.Pointer[httpserver.FederationHandler]
}

func startPeer(t testing.TB) *peer {
	t.Helper()
	p := &peer{}
	p.rotate(t)
	addr := serve(t, "peer", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == pathKey {
			p.keyRequests.Add(1)
		}
		p.handler.Load().ServeHTTP(w, r)
	}))
	p.id = domain.MustParseServerID(addr)
	return p
}

// rotate gives the peer a new key pair, served from now on.
func (p *peer) rotate(t testing.TB) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	h := httpserver.NewFederationHandler(syncv1connect.UnimplementedPostboxServiceHandler{}, federation.NewKeyService(pub), 1<<20, discardLogger)
	p.key.Store(&priv)
	p.handler.Store(h)
}

func (p *peer) signer(clock domain.Clock) *authtoken.Signer {
	return authtoken.NewSigner(*p.key.Load(), clock, rand.Reader)
}

// extended signs a token with Postbox's extension from p to audience.
func (p *peer) extended(t testing.TB, clock domain.Clock, audience domain.ServerID) string {
	t.Helper()
	h, err := p.signer(clock).Extended(p.id, audience, "")
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// tokens returns a source of extended tokens from p for audience, each
// with its own nonce, for use where t.Fatal cannot be called.
func (p *peer) tokens(clock domain.Clock, audience domain.ServerID) func() (string, error) {
	return func() (string, error) { return p.signer(clock).Extended(p.id, audience, "") }
}

// plain signs an upstream token (server ID and time only) from p.
func (p *peer) plain(t testing.TB, clock domain.Clock) string {
	t.Helper()
	h, err := p.signer(clock).Plain(p.id)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// tlsPeer is a peer whose key server speaks TLS at localhost:<port>, with a
// client TLS configuration that trusts it: were the address guard off, a
// resolver with that configuration would fetch its key.
type tlsPeer struct {
	id          domain.ServerID
	key         ed25519.PrivateKey
	clientTLS   *tls.Config
	connections atomic.Int64
	keyRequests atomic.Int64
}

func startTLSPeer(t testing.TB) *tlsPeer {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p := &tlsPeer{key: priv}
	h := httpserver.NewFederationHandler(syncv1connect.UnimplementedPostboxServiceHandler{}, federation.NewKeyService(pub), 1<<20, discardLogger)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == pathKey {
			p.keyRequests.Add(1)
		}
		h.ServeHTTP(w, r)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			p.connections.Add(1)
		}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	// httptest's certificate names example.com, not localhost.
	p.clientTLS = &tls.Config{RootCAs: roots, ServerName: "example.com", MinVersion: tls.VersionTLS12}
	p.id = domain.MustParseServerID("localhost:" + strconv.Itoa(srv.Listener.Addr().(*net.TCPAddr).Port))
	return p
}

// signData signs arbitrary AuthData bytes with key, as a header value.
func signData(t testing.TB, key ed25519.PrivateKey, data *federationv1.AuthDataExt) string {
	t.Helper()
	raw, err := proto.Marshal(data)
	if err != nil {
		t.Fatal(err)
	}
	h, err := authtoken.Encode(raw, ed25519.Sign(key, raw))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// fedOptions configure the server under test.
type fedOptions struct {
	id       string // default fixtureAudience
	clock    domain.Clock
	policy   domain.AuthPolicy
	keys     *peerkeys.Config // default: DefaultConfig with Insecure
	limit    httpserver.MaxRequestBytes
	remember map[string]ed25519.PublicKey // keys known before any request
	noBatch  bool                         // the service does not accept pushes of several events
	admit    *httpserver.Admission        // default: the handler's defaults
}

// fed is a running federation server: the real handler over the real
// PostboxService, Verifier, Resolver and recording Postbox.
type fed struct {
	id      domain.ServerID
	url     string
	clock   domain.Clock
	public  ed25519.PublicKey
	postbox *federationtest.Recorder
	rec     *recorder
}

func startFederation(t testing.TB, opts fedOptions) *fed {
	t.Helper()
	if opts.id == "" {
		opts.id = fixtureAudience
	}
	if opts.clock == nil {
		opts.clock = newManualClock(fixtureTime)
	}
	keysCfg := peerkeys.DefaultConfig()
	keysCfg.Insecure = true
	if opts.keys != nil {
		keysCfg = *opts.keys
	}
	if opts.limit == 0 {
		opts.limit = 4 << 20
	}
	resolver := peerkeys.New(keysCfg, opts.clock, discardLogger, nil)
	for id, key := range opts.remember {
		resolver.Remember(domain.MustParseServerID(id), key)
	}
	id := domain.MustParseServerID(opts.id)
	verifier := domain.NewVerifier(opts.policy, opts.clock, resolver, domain.NewIdentity(id, domain.DefaultAudienceGrace))
	postbox := federationtest.NewRecorder()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	service := federation.NewPostboxService(verifier, postbox)
	if !opts.noBatch {
		service.AcceptBatches(int64(opts.limit))
	}
	h := httpserver.NewFederationHandler(service, federation.NewKeyService(pub), opts.limit, discardLogger)
	if opts.admit != nil {
		h.WithAdmission(*opts.admit)
	}
	rec := &recorder{next: h}
	addr := serve(t, "federation", rec)
	return &fed{id: id, url: "http://" + addr, clock: opts.clock, public: pub, postbox: postbox, rec: rec}
}

// http1Client speaks HTTP/1.1 only, as hRPC clients and raw tools do.
func http1Client() *http.Client {
	p := new(http.Protocols)
	p.SetHTTP1(true)
	return &http.Client{Transport: &http.Transport{Protocols: p}, Timeout: 10 * time.Second}
}

// h2cClient speaks HTTP/2 without TLS only, as a plaintext gRPC client does.
func h2cClient() *http.Client {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: p}, Timeout: 10 * time.Second}
}

// closeIdle drops client's idle connections when the test ends, so servers
// shut down at once.
func closeIdle(t testing.TB, client *http.Client) *http.Client {
	t.Cleanup(client.CloseIdleConnections)
	return client
}

// hrpcReply is a raw hRPC reply.
type hrpcReply struct {
	Status int
	Header http.Header
	Body   []byte
	Proto  int
}

// rawHRPC sends one hand-built hRPC request over HTTP/1.1.
func rawHRPC(t testing.TB, method, url, contentType, auth string, body []byte) hrpcReply {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	client := http1Client()
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return hrpcReply{Status: resp.StatusCode, Header: resp.Header, Body: b, Proto: resp.ProtoMajor}
}

// checkHRPCHeaders asserts the two headers every hRPC reply must carry.
func checkHRPCHeaders(t testing.TB, r hrpcReply) {
	t.Helper()
	if got := r.Header.Values("Content-Type"); len(got) != 1 || got[0] != "application/hrpc" {
		t.Errorf("Content-Type = %q, want exactly application/hrpc", got)
	}
	if got := r.Header.Values("Hrpc-Version"); len(got) != 1 || got[0] != "1" {
		t.Errorf("Hrpc-Version = %q, want exactly 1", got)
	}
}

// checkHRPCError asserts r is an hRPC error reply with status and identifier.
func checkHRPCError(t testing.TB, r hrpcReply, status int, identifier string) *harmonytypesv1.Error {
	t.Helper()
	checkHRPCHeaders(t, r)
	if r.Status != status {
		t.Errorf("status = %d, want %d (body %x)", r.Status, status, r.Body)
	}
	var e harmonytypesv1.Error
	if err := proto.Unmarshal(r.Body, &e); err != nil {
		t.Fatalf("error body %x does not decode as an hRPC error: %v", r.Body, err)
	}
	if e.GetIdentifier() != identifier {
		t.Errorf("identifier = %q (%q), want %q", e.GetIdentifier(), e.GetHumanMessage(), identifier)
	}
	if e.GetHumanMessage() == "" {
		t.Error("error has no human message")
	}
	return &e
}

// checkOK asserts r is an hRPC success reply.
func checkOK(t testing.TB, r hrpcReply) {
	t.Helper()
	checkHRPCHeaders(t, r)
	if r.Status != http.StatusOK {
		var e harmonytypesv1.Error
		_ = proto.Unmarshal(r.Body, &e)
		t.Fatalf("status = %d (%s: %s), want 200", r.Status, e.GetIdentifier(), e.GetHumanMessage())
	}
}
