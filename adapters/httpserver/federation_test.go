package httpserver_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/authtoken"
	"github.com/harmony-postbox/postbox/adapters/federation"
	"github.com/harmony-postbox/postbox/adapters/federation/federationtest"
	"github.com/harmony-postbox/postbox/adapters/httpserver"
	"github.com/harmony-postbox/postbox/adapters/peerkeys"
	"github.com/harmony-postbox/postbox/adapters/seqext"
	"github.com/harmony-postbox/postbox/domain"
	federationv1 "github.com/harmony-postbox/postbox/gen/postbox/federation/v1"
	authv1 "github.com/harmony-postbox/postbox/gen/protocol/auth/v1"
	"github.com/harmony-postbox/postbox/gen/protocol/auth/v1/authv1connect"
	harmonytypesv1 "github.com/harmony-postbox/postbox/gen/protocol/harmonytypes/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
	"github.com/harmony-postbox/postbox/gen/protocol/sync/v1/syncv1connect"
)

func userAdded(user, guild uint64) *syncv1.Event {
	return &syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{
		UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: user, GuildId: guild},
	}}
}

// receivedFrom returns what the recorder received from one sender.
func receivedFrom(f *fed, from domain.ServerID) []federationtest.Received {
	var out []federationtest.Received
	for _, r := range f.postbox.Received() {
		if r.From == from {
			out = append(out, r)
		}
	}
	return out
}

// checkReceived asserts the recorder holds exactly want (event user 42
// added to guild 7, with these sequence numbers; -1 for none) from sender.
func checkReceived(t *testing.T, f *fed, from domain.ServerID, wantSeqs ...int64) {
	t.Helper()
	got := receivedFrom(f, from)
	if len(got) != len(wantSeqs) {
		t.Fatalf("recorder holds %d events from %s, want %d", len(got), from, len(wantSeqs))
	}
	for i, r := range got {
		if !proto.Equal(r.Event, userAdded(42, 7)) {
			t.Errorf("event %d = %v, want user 42 added to guild 7", i, r.Event)
		}
		switch {
		case wantSeqs[i] < 0 && r.Seq != nil:
			t.Errorf("event %d has seq %d, want none", i, *r.Seq)
		case wantSeqs[i] >= 0 && (r.Seq == nil || *r.Seq != uint64(wantSeqs[i])):
			t.Errorf("event %d seq = %v, want %d", i, r.Seq, wantSeqs[i])
		}
	}
}

// TestPushesOfSeveralEventsNeedAcceptBatches: a server that does not accept
// batches announces nothing and refuses a push of several events whole.
func TestPushesOfSeveralEventsNeedAcceptBatches(t *testing.T) {
	t.Parallel()
	f := startFederation(t, fedOptions{noBatch: true})
	p := startPeer(t)
	one := rawHRPC(t, http.MethodPost, f.url+pathPush, "application/hrpc", p.extended(t, f.clock, f.id), unhex(t, fixturePushSeqHex))
	checkOK(t, one)
	// last_seq 41, batch_bytes 0, batch_events 0.
	if want := "a00629a80600b00600"; hex.EncodeToString(one.Body) != want {
		t.Errorf("Push reply = %x, want %s", one.Body, want)
	}
	two := rawHRPC(t, http.MethodPost, f.url+pathPush, "application/hrpc", p.extended(t, f.clock, f.id),
		unhex(t, "0a061204082a1007a0062a"+"aa06061204082a1007"))
	checkHRPCError(t, two, http.StatusBadRequest, "hrpc.http.bad-unary-request")
	checkReceived(t, f, p.id, 41)
}

// TestFederationOverEveryProtocol calls Key, Pull and Push on one plaintext
// listener over hRPC (HTTP/1.1, raw bytes), Connect and gRPC (h2c), each
// authenticated with a token that the server checks against a key it
// fetches from the calling peer over the network.
func TestFederationOverEveryProtocol(t *testing.T) {
	t.Parallel()
	f := startFederation(t, fedOptions{})

	t.Run("hrpc", func(t *testing.T) {
		t.Parallel()
		p := startPeer(t)

		key := rawHRPC(t, http.MethodPost, f.url+pathKey, "application/hrpc", "", nil)
		checkOK(t, key)
		if want := append([]byte{0x0a, 0x20}, f.public...); !bytes.Equal(key.Body, want) {
			t.Errorf("Key reply = %x, want %x", key.Body, want)
		}
		if key.Proto != 1 {
			t.Errorf("hRPC reply over HTTP/%d, want HTTP/1.1", key.Proto)
		}

		pull := rawHRPC(t, http.MethodPost, f.url+pathPull, "application/hrpc", p.extended(t, f.clock, f.id), unhex(t, fixturePullAckHex))
		checkOK(t, pull)
		if len(pull.Body) != 0 {
			t.Errorf("Pull reply = %x, want the empty pull response", pull.Body)
		}

		push := rawHRPC(t, http.MethodPost, f.url+pathPush, "application/hrpc", p.extended(t, f.clock, f.id), unhex(t, fixturePushSeqHex))
		checkOK(t, push)
		// To a Postbox sender: last_seq 41 (field 100), batch_bytes 4 MiB
		// (field 101, the request limit), batch_events 10,000 (field 102).
		const limits = "a80680808002" + "b006904e"
		if want := "a00629" + limits; hex.EncodeToString(push.Body) != want {
			t.Errorf("Push reply = %x, want %s", push.Body, want)
		}
		checkReceived(t, f, p.id, 41)

		// Media type compared case-insensitively, parameters allowed; a
		// plain upstream token; a push without the sequence extension gets
		// the empty answer upstream gives.
		odd := rawHRPC(t, http.MethodPost, f.url+pathPush, "Application/HRPC; charset=utf-8", p.plain(t, f.clock), unhex(t, fixturePushHex))
		checkOK(t, odd)
		if len(odd.Body) != 0 {
			t.Errorf("Push reply to an upstream sender = %x, want an empty PushResponse", odd.Body)
		}
		checkReceived(t, f, p.id, 41, -1)

		// A push of three events: seq 50 (a00632) and two following events
		// (field 101: aa06, length 6, the same event bytes).
		const following = "aa06061204082a1007"
		batch := rawHRPC(t, http.MethodPost, f.url+pathPush, "application/hrpc", p.extended(t, f.clock, f.id),
			unhex(t, "0a061204082a1007a00632"+following+following))
		checkOK(t, batch)
		if want := "a00634" + limits; hex.EncodeToString(batch.Body) != want {
			t.Errorf("Push reply = %x, want %s (last_seq 52)", batch.Body, want)
		}
		checkReceived(t, f, p.id, 41, -1, 50, 51, 52)

		// A following event that does not decode: the whole push is
		// refused, nothing of it applied.
		bad := rawHRPC(t, http.MethodPost, f.url+pathPush, "application/hrpc", p.extended(t, f.clock, f.id),
			unhex(t, "0a061204082a1007a00635"+following+"aa0601ff"))
		checkHRPCError(t, bad, http.StatusBadRequest, "hrpc.http.bad-unary-request")
		checkReceived(t, f, p.id, 41, -1, 50, 51, 52)

		// More events than the announced 10,000: refused whole.
		tooMany := rawHRPC(t, http.MethodPost, f.url+pathPush, "application/hrpc", p.extended(t, f.clock, f.id),
			unhex(t, "0a061204082a1007a00635"+strings.Repeat(following, federation.MaxEventsPerPush)))
		checkHRPCError(t, tooMany, http.StatusBadRequest, "hrpc.http.bad-unary-request")
		checkReceived(t, f, p.id, 41, -1, 50, 51, 52)
		for _, r := range f.rec.requests() {
			if strings.HasPrefix(strings.ToLower(r.ContentType), "application/hrpc") && r.ProtoMajor != 1 {
				t.Errorf("hRPC request %s arrived over HTTP/%d, want HTTP/1.1", r.Path, r.ProtoMajor)
			}
		}

	})

	for _, tc := range []struct {
		name     string
		client   *http.Client
		opts     []connect.ClientOption
		wantCT   string
		wantHTTP int
	}{
		{"connect", closeIdle(t, http1Client()), nil, "application/proto", 1},
		{"grpc", closeIdle(t, h2cClient()), []connect.ClientOption{connect.WithGRPC()}, "application/grpc", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			p := startPeer(t)
			auth := authv1connect.NewAuthServiceClient(tc.client, f.url, tc.opts...)
			sync := syncv1connect.NewPostboxServiceClient(tc.client, f.url, tc.opts...)

			key, err := auth.Key(ctx, connect.NewRequest(&authv1.KeyRequest{}))
			if err != nil {
				t.Fatalf("Key: %v", err)
			}
			if !bytes.Equal(key.Msg.GetKey(), f.public) {
				t.Errorf("Key = %x, want %x", key.Msg.GetKey(), []byte(f.public))
			}

			pullReq := connect.NewRequest(&syncv1.PullRequest{})
			seqext.SetAck(pullReq.Msg, 3)
			pullReq.Header().Set("Authorization", p.extended(t, f.clock, f.id))
			pull, err := sync.Pull(ctx, pullReq)
			if err != nil {
				t.Fatalf("Pull: %v", err)
			}
			if n := len(pull.Msg.GetEventQueue()); n != 0 {
				t.Errorf("Pull returned %d events, want none", n)
			}
			if _, ok := seqext.FirstSeq(pull.Msg); ok {
				t.Error("an empty Pull reply carries first_seq")
			}

			pushReq := connect.NewRequest(&syncv1.PushRequest{Event: userAdded(42, 7)})
			seqext.SetPushSeq(pushReq.Msg, 41)
			pushReq.Header().Set("Authorization", p.extended(t, f.clock, f.id))
			if _, err := sync.Push(ctx, pushReq); err != nil {
				t.Fatalf("Push: %v", err)
			}
			plainReq := connect.NewRequest(&syncv1.PushRequest{Event: userAdded(42, 7)})
			plainReq.Header().Set("Authorization", p.plain(t, f.clock))
			if _, err := sync.Push(ctx, plainReq); err != nil {
				t.Fatalf("Push with a plain token: %v", err)
			}
			checkReceived(t, f, p.id, 41, -1)

			var n int
			for _, r := range f.rec.requests() {
				if strings.HasPrefix(r.ContentType, tc.wantCT) {
					n++
					if r.ProtoMajor != tc.wantHTTP {
						t.Errorf("%s request %s over HTTP/%d, want HTTP/%d", tc.name, r.Path, r.ProtoMajor, tc.wantHTTP)
					}
				}
			}
			if n < 4 {
				t.Errorf("server saw %d %s requests, want at least 4", n, tc.wantCT)
			}
		})
	}
}

// TestFixtureTokensOverTheWire sends requests made only of the fixture bytes:
// the tokens were signed by hand with the fixture key at the fixture time.
func TestFixtureTokensOverTheWire(t *testing.T) {
	t.Parallel()
	pub := ed25519.PublicKey(unhex(t, fixturePublicKeyHex))
	priv := ed25519.PrivateKey(unhex(t, fixturePrivateKeyHex))
	f := startFederation(t, fedOptions{remember: map[string]ed25519.PublicKey{fixtureSender: pub}})
	sender := domain.MustParseServerID(fixtureSender)

	// Serving the fixture key, Key answers the fixture's bytes exactly.
	keyServer := serve(t, "key", httpserver.NewFederationHandler(syncv1connect.UnimplementedPostboxServiceHandler{}, federation.NewKeyService(pub), 1<<20, discardLogger))
	key := rawHRPC(t, http.MethodPost, "http://"+keyServer+pathKey, "application/hrpc", "", nil)
	checkOK(t, key)
	if want := unhex(t, fixtureKeyResponseHex); !bytes.Equal(key.Body, want) {
		t.Errorf("Key reply = %x, want the fixture %x", key.Body, want)
	}

	checkOK(t, rawHRPC(t, http.MethodPost, f.url+pathPush, "application/hrpc", fixturePlainHeader, unhex(t, fixturePushHex)))
	checkReceived(t, f, sender, -1)

	extended := base64.StdEncoding.EncodeToString(unhex(t, fixtureExtendedTokenHex))
	checkOK(t, rawHRPC(t, http.MethodPost, f.url+pathPush, "application/hrpc", extended, unhex(t, fixturePushSeqHex)))
	checkReceived(t, f, sender, -1, 41)
	// Its nonce is spent now.
	checkHRPCError(t, rawHRPC(t, http.MethodPost, f.url+pathPush, "application/hrpc", extended, unhex(t, fixturePushSeqHex)),
		http.StatusBadRequest, "postbox.token-replayed")
	checkReceived(t, f, sender, -1, 41)

	pull := rawHRPC(t, http.MethodPost, f.url+pathPull, "application/hrpc", fixturePlainHeader, unhex(t, fixturePullAckHex))
	checkOK(t, pull)
	if len(pull.Body) != 0 {
		t.Errorf("Pull reply = %x, want empty", pull.Body)
	}

	// NotifyNewId signed over the fixture's extended AuthData passes
	// authentication and reaches the recorder, which knows no peers. Its
	// nonce is the one spent above, so on this server it is a replay; a
	// fresh server takes it.
	notifyData := unhex(t, fixtureNotifyAuthDataHex)
	notifyAuth, err := authtoken.Encode(notifyData, ed25519.Sign(priv, notifyData))
	if err != nil {
		t.Fatal(err)
	}
	checkHRPCError(t, rawHRPC(t, http.MethodPost, f.url+pathNotify, "application/hrpc", notifyAuth, unhex(t, fixtureNotifyHex)),
		http.StatusBadRequest, "postbox.token-replayed")
	fresh := startFederation(t, fedOptions{remember: map[string]ed25519.PublicKey{fixtureSender: pub}})
	checkHRPCError(t, rawHRPC(t, http.MethodPost, fresh.url+pathNotify, "application/hrpc", notifyAuth, unhex(t, fixtureNotifyHex)),
		http.StatusBadRequest, "postbox.unknown-peer")

	// An error reply begins with the identifier field exactly as the
	// fixture encodes it.
	noAuth := rawHRPC(t, http.MethodPost, f.url+pathPush, "application/hrpc", "", unhex(t, fixturePushHex))
	checkHRPCError(t, noAuth, http.StatusBadRequest, "h.bad-auth")
	if idField := unhex(t, fixtureHRPCErrorHex)[:12]; !bytes.HasPrefix(noAuth.Body, idField) {
		t.Errorf("error body %x does not begin with %x", noAuth.Body, idField)
	}
}

func TestHRPCEdgeCases(t *testing.T) {
	t.Parallel()
	const limit = 1024
	f := startFederation(t, fedOptions{limit: limit, remember: map[string]ed25519.PublicKey{fixtureSender: ed25519.PublicKey(unhex(t, fixturePublicKeyHex))}})
	garbage := []byte{0xff, 0xff, 0xff, 0xff}
	// Bodies are read only from authenticated callers: a plain token,
	// which may be sent again within its second.
	auth := fixturePlainHeader

	for _, tc := range []struct {
		name, method, path, contentType, auth string
		body                                  []byte
		status                                int
		identifier                            string
	}{
		{"GET", http.MethodGet, pathPull, "", "", nil, http.StatusMethodNotAllowed, "hrpc.http.bad-unary-request"},
		{"GET with hRPC type", http.MethodGet, pathKey, "application/hrpc", "", nil, http.StatusMethodNotAllowed, "hrpc.http.bad-unary-request"},
		{"PUT", http.MethodPut, pathPush, "application/hrpc", "", unhex(t, fixturePushHex), http.StatusMethodNotAllowed, "hrpc.http.bad-unary-request"},
		{"garbage body", http.MethodPost, pathPush, "application/hrpc", auth, garbage, http.StatusBadRequest, "hrpc.http.bad-unary-request"},
		{"garbage body at the limit", http.MethodPost, pathPush, "application/hrpc", auth, append(bytes.Repeat([]byte{0x0a}, limit-1), 0xff), http.StatusBadRequest, "hrpc.http.bad-unary-request"},
		{"unknown procedure", http.MethodPost, "/protocol.sync.v1.PostboxService/Nope", "application/hrpc", "", nil, http.StatusNotFound, "hrpc.not-found"},
		{"unknown path with a Connect type", http.MethodPost, "/nope", "application/proto", "", nil, http.StatusNotFound, "hrpc.not-found"},
		{"root", http.MethodGet, "/", "", "", nil, http.StatusNotFound, "hrpc.not-found"},
		{"body over the limit", http.MethodPost, pathPush, "application/hrpc", auth, make([]byte, limit+1), http.StatusRequestEntityTooLarge, "hrpc.resource-exhausted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := rawHRPC(t, tc.method, f.url+tc.path, tc.contentType, tc.auth, tc.body)
			checkHRPCError(t, r, tc.status, tc.identifier)
			if tc.status == http.StatusMethodNotAllowed && r.Header.Get("Allow") != http.MethodPost {
				t.Errorf("Allow = %q, want POST", r.Header.Get("Allow"))
			}
		})
	}
	if n := len(f.postbox.Received()); n != 0 {
		t.Errorf("recorder received %d events from refused requests", n)
	}
}

// operation is one federation call as the auth table makes it.
type operation int

const (
	opPull operation = iota
	opPush
	opNotify
)

const announcedID = "new.example.org:2289" // the new ID in fixtureNotifyHex

func (o operation) path() string {
	return [...]string{pathPull, pathPush, pathNotify}[o]
}

func (o operation) hrpcBody(t testing.TB) []byte {
	return [...][]byte{nil, unhex(t, fixturePushHex), unhex(t, fixtureNotifyHex)}[o]
}

// viaConnect makes the call with a generated client; auth "" sends no header.
func (o operation) viaConnect(ctx context.Context, c syncv1connect.PostboxServiceClient, auth string) error {
	set := func(h http.Header) {
		if auth != "" {
			h.Set("Authorization", auth)
		}
	}
	var err error
	switch o {
	case opPull:
		req := connect.NewRequest(&syncv1.PullRequest{})
		set(req.Header())
		_, err = c.Pull(ctx, req)
	case opPush:
		req := connect.NewRequest(&syncv1.PushRequest{Event: userAdded(42, 7)})
		set(req.Header())
		_, err = c.Push(ctx, req)
	case opNotify:
		req := connect.NewRequest(&syncv1.NotifyNewIdRequest{NewServerId: announcedID})
		set(req.Header())
		_, err = c.NotifyNewId(ctx, req)
	}
	return err
}

// outcome is how a call ended, whatever the protocol.
type outcome struct {
	ok         bool
	identifier string       // hRPC identifier, or Postbox-Error-Identifier metadata
	status     int          // hRPC only
	code       connect.Code // Connect and gRPC only
}

// call makes op over protocol ("hrpc", "connect", "grpc" or "grpc-web").
func call(t *testing.T, f *fed, protocol string, op operation, auth string) outcome {
	t.Helper()
	if protocol == "hrpc" {
		r := rawHRPC(t, http.MethodPost, f.url+op.path(), "application/hrpc", auth, op.hrpcBody(t))
		checkHRPCHeaders(t, r)
		if r.Status == http.StatusOK {
			return outcome{ok: true, status: r.Status}
		}
		var e harmonytypesv1.Error
		if err := proto.Unmarshal(r.Body, &e); err != nil {
			t.Fatalf("error body %x does not decode as an hRPC error: %v", r.Body, err)
		}
		return outcome{identifier: e.GetIdentifier(), status: r.Status}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	client, opts := http1Client(), []connect.ClientOption(nil)
	switch protocol {
	case "grpc":
		client, opts = h2cClient(), []connect.ClientOption{connect.WithGRPC()}
	case "grpc-web":
		opts = []connect.ClientOption{connect.WithGRPCWeb()}
	}
	defer client.CloseIdleConnections()
	err := op.viaConnect(ctx, syncv1connect.NewPostboxServiceClient(client, f.url, opts...), auth)
	if err == nil {
		return outcome{ok: true}
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		t.Fatalf("%s call failed without a Connect error: %v", protocol, err)
	}
	return outcome{identifier: ce.Meta().Get("Postbox-Error-Identifier"), code: ce.Code()}
}

var protocols = []string{"hrpc", "connect", "grpc", "grpc-web"}

// TestAuthOverTheWire refuses each kind of bad token with its identifier,
// over hRPC (identifier and HTTP status) and over Connect, gRPC and
// gRPC-Web (code and the Postbox-Error-Identifier metadata), and accepts
// the good ones.
func TestAuthOverTheWire(t *testing.T) {
	t.Parallel()
	main := startFederation(t, fedOptions{})
	blocking := startFederation(t, fedOptions{policy: domain.AuthPolicy{Access: mustAccess(t, nil, []string{"127.0.0.1"})}})
	strict := startFederation(t, fedOptions{policy: domain.AuthPolicy{RequireExtension: true}})
	// A peer whose key server is reachable, over TLS the resolvers trust,
	// but only at a loopback address.
	loopback := startTLSPeer(t)
	guardedCfg := peerkeys.DefaultConfig() // not insecure: loopback peers refused
	guardedCfg.TLS = loopback.clientTLS
	guarded := startFederation(t, fedOptions{keys: &guardedCfg})
	// The same, with the peer allow-listed: the control showing that only
	// the address guard keeps the guarded server from fetching the key.
	allowedCfg := guardedCfg
	allowedCfg.Access = mustAccess(t, []string{"localhost"}, nil)
	allowed := startFederation(t, fedOptions{keys: &allowedCfg, policy: domain.AuthPolicy{Access: allowedCfg.Access}})

	p := startPeer(t) // a well-behaved peer
	_, stranger, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := main.clock.Now()
	authData := func(serverID string, at time.Time) *federationv1.AuthDataExt {
		return &federationv1.AuthDataExt{ServerId: serverID, Time: uint64(at.Unix())}
	}
	skewed := func(d time.Duration) domain.Clock { return offsetClock{main.clock, d} }

	type row struct {
		name   string
		server *fed
		op     operation
		auth   func(t *testing.T, protocol string) string
		// wanted refusal; identifier "" means the call must succeed
		identifier string
		status     int
		code       connect.Code
	}
	rows := []row{
		{name: "no header", server: main, op: opPush,
			auth:       func(*testing.T, string) string { return "" },
			identifier: "h.bad-auth", status: 400, code: connect.CodeUnauthenticated},
		{name: "bad base64", server: main, op: opPush,
			auth:       func(*testing.T, string) string { return "not base64!" },
			identifier: "h.bad-token", status: 400, code: connect.CodeUnauthenticated},
		{name: "token not protobuf", server: main, op: opPull,
			auth:       func(*testing.T, string) string { return base64.StdEncoding.EncodeToString([]byte{0x0a, 0x05, 'a'}) },
			identifier: "h.bad-token", status: 400, code: connect.CodeUnauthenticated},
		{name: "signature of 63 bytes", server: main, op: opPush,
			auth: func(t *testing.T, _ string) string {
				raw, _ := proto.Marshal(authData(p.id.String(), now))
				h, err := authtoken.Encode(raw, ed25519.Sign(*p.key.Load(), raw)[:63])
				if err != nil {
					t.Fatal(err)
				}
				return h
			},
			identifier: "h.bad-token-signature", status: 400, code: connect.CodeUnauthenticated},
		{name: "auth data not protobuf", server: main, op: opPush,
			auth: func(t *testing.T, _ string) string {
				data := []byte{0x0a, 0x05, 'a'}
				h, err := authtoken.Encode(data, ed25519.Sign(*p.key.Load(), data))
				if err != nil {
					t.Fatal(err)
				}
				return h
			},
			identifier: "h.bad-token-data", status: 400, code: connect.CodeUnauthenticated},
		{name: "malformed server ID", server: main, op: opPush,
			auth: func(t *testing.T, _ string) string {
				return signData(t, *p.key.Load(), authData("https://"+p.id.String(), now))
			},
			identifier: "h.bad-token-data", status: 400, code: connect.CodeUnauthenticated},
		{name: "server ID without port", server: main, op: opPull,
			auth:       func(t *testing.T, _ string) string { return signData(t, *p.key.Load(), authData(p.id.Host(), now)) },
			identifier: "h.bad-token-data", status: 400, code: connect.CodeUnauthenticated},
		{name: "61 s old", server: main, op: opPush,
			auth:       func(t *testing.T, _ string) string { return p.plain(t, skewed(-61*time.Second)) },
			identifier: "h.bad-auth", status: 400, code: connect.CodeUnauthenticated},
		{name: "61 s ahead", server: main, op: opPush,
			auth:       func(t *testing.T, _ string) string { return p.extended(t, skewed(61*time.Second), main.id) },
			identifier: "h.bad-auth", status: 400, code: connect.CodeUnauthenticated},
		{name: "60 s old plain accepted", server: main, op: opPush,
			auth: func(t *testing.T, _ string) string { return p.plain(t, skewed(-60*time.Second)) }},
		{name: "60 s ahead accepted", server: main, op: opPush,
			auth: func(t *testing.T, _ string) string { return p.extended(t, skewed(60*time.Second), main.id) }},
		{name: "extended token older than the server", server: main, op: opPush,
			auth:       func(t *testing.T, _ string) string { return p.extended(t, skewed(-time.Second), main.id) },
			identifier: "postbox.token-replayed", status: 400, code: connect.CodeUnauthenticated},
		{name: "wrong key", server: main, op: opPush,
			auth:       func(t *testing.T, _ string) string { return signData(t, stranger, authData(p.id.String(), now)) },
			identifier: "h.token-verify-failure", status: 400, code: connect.CodeUnauthenticated},
		{name: "reused nonce", server: main, op: opPush,
			auth: func(t *testing.T, protocol string) string {
				h := p.extended(t, main.clock, main.id)
				if o := call(t, main, protocol, opPush, h); !o.ok {
					t.Fatalf("first use of the token refused: %+v", o)
				}
				return h
			},
			identifier: "postbox.token-replayed", status: 400, code: connect.CodeUnauthenticated},
		{name: "audience names another server", server: main, op: opPull,
			auth: func(t *testing.T, _ string) string {
				return p.extended(t, main.clock, domain.MustParseServerID("other.example:2289"))
			},
			identifier: "postbox.wrong-audience", status: 400, code: connect.CodeUnauthenticated},
		{name: "two plain tokens in one second", server: main, op: opPush,
			auth: func(t *testing.T, protocol string) string {
				first, second := p.plain(t, main.clock), p.plain(t, main.clock)
				if first != second {
					t.Fatalf("plain tokens in one second differ:\n%s\n%s", first, second)
				}
				if o := call(t, main, protocol, opPush, first); !o.ok {
					t.Fatalf("first token refused: %+v", o)
				}
				return second
			}},
		{name: "blocked host", server: blocking, op: opPush,
			auth:       func(t *testing.T, _ string) string { return p.extended(t, blocking.clock, blocking.id) },
			identifier: "h.host-not-allowed", status: 403, code: connect.CodePermissionDenied},
		{name: "NotifyNewId with a plain token", server: main, op: opNotify,
			auth:       func(t *testing.T, _ string) string { return p.plain(t, main.clock) },
			identifier: "postbox.extension-required", status: 400, code: connect.CodeUnauthenticated},
		{name: "NotifyNewId signing another new ID", server: main, op: opNotify,
			auth: func(t *testing.T, _ string) string {
				h, err := p.signer(main.clock).Extended(p.id, main.id, "evil.example:2289")
				if err != nil {
					t.Fatal(err)
				}
				return h
			},
			identifier: "postbox.extension-required", status: 400, code: connect.CodeUnauthenticated},
		{name: "NotifyNewId with the extension reaches the postbox", server: main, op: opNotify,
			auth: func(t *testing.T, _ string) string {
				h, err := p.signer(main.clock).Extended(p.id, main.id, announcedID)
				if err != nil {
					t.Fatal(err)
				}
				return h
			},
			identifier: "postbox.unknown-peer", status: 400, code: connect.CodeNotFound},
		{name: "plain token under require-extension", server: strict, op: opPull,
			auth:       func(t *testing.T, _ string) string { return p.plain(t, strict.clock) },
			identifier: "postbox.extension-required", status: 400, code: connect.CodeUnauthenticated},
		{name: "extended token under require-extension", server: strict, op: opPull,
			auth: func(t *testing.T, _ string) string { return p.extended(t, strict.clock, strict.id) }},
		{name: "loopback peer without insecure-peers", server: guarded, op: opPush,
			auth: func(t *testing.T, _ string) string {
				return signData(t, loopback.key, authData(loopback.id.String(), now))
			},
			identifier: "postbox.key-unavailable", status: 502, code: connect.CodeUnavailable},
		{name: "loopback peer on the allow list", server: allowed, op: opPush,
			auth: func(t *testing.T, _ string) string {
				return signData(t, loopback.key, authData(loopback.id.String(), now))
			}},
	}
	t.Run("rows", func(t *testing.T) {
		for _, tc := range rows {
			for _, protocol := range protocols {
				t.Run(tc.name+"/"+protocol, func(t *testing.T) {
					t.Parallel()
					got := call(t, tc.server, protocol, tc.op, tc.auth(t, protocol))
					if tc.identifier == "" {
						if !got.ok {
							t.Fatalf("refused with %+v, want success", got)
						}
						return
					}
					if got.ok {
						t.Fatalf("accepted, want %s", tc.identifier)
					}
					if got.identifier != tc.identifier {
						t.Errorf("identifier = %q, want %q", got.identifier, tc.identifier)
					}
					if protocol == "hrpc" && got.status != tc.status {
						t.Errorf("HTTP status = %d, want %d", got.status, tc.status)
					}
					if protocol != "hrpc" && got.code != tc.code {
						t.Errorf("code = %v, want %v", got.code, tc.code)
					}
				})
			}
		}
	})
	// Only the allow-listed server fetched the key, once; the guarded one
	// never even connected.
	if n := loopback.keyRequests.Load(); n != 1 {
		t.Errorf("the loopback key server got %d Key requests, want 1 (from the allow-listing server only)", n)
	}
	if n := loopback.connections.Load(); n != 1 {
		t.Errorf("the loopback key server got %d connections, want 1 (from the allow-listing server only)", n)
	}
	if p.keyRequests.Load() == 0 {
		t.Error("no server ever fetched the peer's key")
	}
	for _, f := range []*fed{blocking, guarded} {
		if n := len(f.postbox.Received()); n != 0 {
			t.Errorf("%d refused pushes reached the recorder", n)
		}
	}
}

func mustAccess(t *testing.T, allow, block []string) domain.AccessList {
	t.Helper()
	l, err := domain.NewAccessList(allow, block)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestPeerKeyRotation: after a peer rotates its key, its first request is
// accepted thanks to one refetch; refetches are rate-limited.
func TestPeerKeyRotation(t *testing.T) {
	t.Parallel()
	clock := newManualClock(fixtureTime)
	f := startFederation(t, fedOptions{clock: clock})
	p := startPeer(t)

	push := func(t *testing.T) outcome {
		t.Helper()
		return call(t, f, "hrpc", opPush, p.extended(t, clock, f.id))
	}
	if o := push(t); !o.ok {
		t.Fatalf("before rotation: %+v", o)
	}
	if n := p.keyRequests.Load(); n != 1 {
		t.Fatalf("key fetched %d times, want 1", n)
	}

	p.rotate(t)
	clock.Advance(peerkeys.DefaultConfig().RefreshEvery + time.Second)
	if o := push(t); !o.ok {
		t.Fatalf("first request after rotation refused: %+v", o)
	}
	if n := p.keyRequests.Load(); n != 2 {
		t.Fatalf("key fetched %d times, want 2 (one refetch)", n)
	}
	if o := push(t); !o.ok {
		t.Fatalf("second request after rotation refused: %+v", o)
	}
	if n := p.keyRequests.Load(); n != 2 {
		t.Fatalf("key fetched %d times after the refetch, want still 2", n)
	}

	// A second rotation within the refetch interval is not refetched: a
	// stream of bad signatures cannot make this server hammer the peer.
	p.rotate(t)
	clock.Advance(time.Second)
	if o := push(t); o.ok || o.identifier != "h.token-verify-failure" {
		t.Fatalf("rotation inside the refetch interval: %+v, want h.token-verify-failure", o)
	}
	if n := p.keyRequests.Load(); n != 2 {
		t.Fatalf("key fetched %d times, want still 2", n)
	}
	checkReceived(t, f, p.id, -1, -1, -1)
}
