package peerclient_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/authtoken"
	"github.com/harmony-postbox/postbox/adapters/clock"
	"github.com/harmony-postbox/postbox/adapters/federation"
	"github.com/harmony-postbox/postbox/adapters/federation/federationtest"
	"github.com/harmony-postbox/postbox/adapters/hrpc"
	"github.com/harmony-postbox/postbox/adapters/httpserver"
	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/adapters/peerkeys"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
	"github.com/harmony-postbox/postbox/gen/protocol/sync/v1/syncv1connect"
)

var discardLogger = slog.New(slog.DiscardHandler)

// lateHandler lets a listener be bound (and its port known) before the
// handler, which needs the port as its server ID, exists. It is set before
// Serve starts and never changes after.
type lateHandler struct{ h http.Handler }

func (l *lateHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) { l.h.ServeHTTP(w, r) }

// serve binds 127.0.0.1:0 with httpserver.Listen, lets build make the
// handler for the bound server ID, serves it, and stops it when the test ends.
func serve(t *testing.T, build func(id domain.ServerID) http.Handler) domain.ServerID {
	t.Helper()
	late := &lateHandler{}
	srv, err := httpserver.Listen(t.Context(), "test", "127.0.0.1:0", late, httpserver.TLSFiles{}, discardLogger)
	if err != nil {
		t.Fatal(err)
	}
	id := domain.MustParseServerID(srv.Addr().String())
	late.h = build(id)
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return id
}

// fakePostbox records what the federation endpoints hand it.
type fakePostbox struct {
	mu      sync.Mutex
	batch   domain.PullBatch[*syncv1.Event]
	pulls   []*uint64
	pushes  []federationtest.Received
	renames []domain.ServerID
}

func (f *fakePostbox) ServeAccountedPull(_ context.Context, _ domain.Caller, ack *uint64, _ *domain.PullAccount) (domain.PullBatch[*syncv1.Event], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pulls = append(f.pulls, ack)
	return f.batch, nil
}

func (f *fakePostbox) AcceptClaimedPush(_ context.Context, caller domain.Caller, events []*syncv1.Event, seq *uint64, _ *domain.PushClaim) (domain.PushAnswer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pushes = append(f.pushes, federationtest.Each(caller.ServerID, events, seq)...)
	return domain.PushAnswer{}, nil
}

const takenID = "taken.example:2289"

func (f *fakePostbox) AcceptRename(_ context.Context, _ domain.Caller, newID domain.ServerID) error {
	if newID.String() == takenID {
		return fmt.Errorf("%w: %s", domain.ErrIDTaken, newID)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.renames = append(f.renames, newID)
	return nil
}

func (f *fakePostbox) setBatch(b domain.PullBatch[*syncv1.Event]) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.batch = b
}

func (f *fakePostbox) snapshot() (pulls []*uint64, pushes []federationtest.Received, renames []domain.ServerID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append(pulls, f.pulls...), append(pushes, f.pushes...), append(renames, f.renames...)
}

// seen is one request as the server received it.
type seen struct {
	Path, ContentType, Auth string
	ProtoMajor              int
}

// remote is a real federation server (real Verifier, real key resolver
// fetching over loopback) in front of a fake Postbox.
type remote struct {
	id  domain.ServerID
	box *fakePostbox
	mu  sync.Mutex
	log []seen
}

func (r *remote) requests() []seen {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]seen(nil), r.log...)
}

func startRemote(t *testing.T) *remote {
	t.Helper()
	r := &remote{box: &fakePostbox{}}
	r.id = serve(t, func(id domain.ServerID) http.Handler {
		cfg := peerkeys.DefaultConfig()
		cfg.Insecure = true
		keys := peerkeys.New(cfg, clock.System{}, discardLogger, nil)
		verifier := domain.NewVerifier(domain.AuthPolicy{}, clock.System{}, keys, domain.NewIdentity(id, domain.DefaultAudienceGrace))
		pub, _, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		h := httpserver.NewFederationHandler(federation.NewPostboxService(verifier, r.box).AcceptBatches(1<<20), federation.NewKeyService(pub), 1<<20, discardLogger)
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			r.mu.Lock()
			r.log = append(r.log, seen{req.URL.Path, req.Header.Get("Content-Type"), req.Header.Get("Authorization"), req.ProtoMajor})
			r.mu.Unlock()
			h.ServeHTTP(w, req)
		})
	})
	return r
}

type fixedSelf domain.ServerID

func (s fixedSelf) IDFor(domain.ServerID) domain.ServerID { return domain.ServerID(s) }

// newClient returns a client whose key is served by its own loopback key
// server, so the remote verifies it over the network; servedKey, if set, is
// served instead of the client's real key (a peer that lies about its key).
func newClient(t *testing.T, cfg peerclient.Config, servedKey ed25519.PublicKey) (*peerclient.Client, domain.ServerID) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if servedKey != nil {
		pub = servedKey
	}
	self := serve(t, func(domain.ServerID) http.Handler {
		return httpserver.NewFederationHandler(syncv1connect.UnimplementedPostboxServiceHandler{}, federation.NewKeyService(pub), 1<<20, discardLogger)
	})
	cfg.Insecure = true
	signer := authtoken.NewSigner(priv, clock.System{}, rand.Reader)
	return peerclient.New(cfg, signer, fixedSelf(self)), self
}

func event(user, guild uint64) *syncv1.Event {
	return &syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{
		UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: user, GuildId: guild},
	}}
}

func removed(user, guild uint64) *syncv1.Event {
	return &syncv1.Event{Kind: &syncv1.Event_UserRemovedFromGuild_{
		UserRemovedFromGuild: &syncv1.Event_UserRemovedFromGuild{UserId: user, GuildId: guild},
	}}
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var protocols = []peerclient.Protocol{peerclient.HRPC, peerclient.Connect, peerclient.GRPC}

func TestClientOverEveryProtocol(t *testing.T) {
	t.Parallel()
	for _, protocol := range protocols {
		t.Run(string(protocol), func(t *testing.T) {
			t.Parallel()
			ctx := ctxFor(t)
			srv := startRemote(t)
			client, self := newClient(t, peerclient.Config{Protocol: protocol}, nil)

			// Push: the sequence number arrives, 0 included (presence
			// matters); the receiver announces how much one push may carry.
			res, err := client.Push(ctx, srv.id, 41, []*syncv1.Event{event(42, 7)})
			if err != nil {
				t.Fatalf("Push: %v", err)
			}
			if res != (peerclient.PushResult{Through: 41, BatchBytes: 1 << 20, BatchEvents: federation.MaxEventsPerPush}) {
				t.Errorf("Push = %+v, want through 41, batches up to 1 MiB and %d events", res, federation.MaxEventsPerPush)
			}
			if _, err := client.Push(ctx, srv.id, 0, []*syncv1.Event{removed(42, 7)}); err != nil {
				t.Fatalf("Push seq 0: %v", err)
			}
			// A push of several events: all taken, in order.
			res, err = client.Push(ctx, srv.id, 1, []*syncv1.Event{event(5, 1), event(6, 1), removed(5, 1)})
			if err != nil {
				t.Fatalf("Push of three: %v", err)
			}
			if res.Through != 3 {
				t.Errorf("Push of three events from 1 = %+v, want through 3", res)
			}
			_, pushes, _ := srv.box.snapshot()
			if len(pushes) != 5 {
				t.Fatalf("server got %d events, want 5", len(pushes))
			}
			for i, want := range []struct {
				event *syncv1.Event
				seq   uint64
			}{{event(42, 7), 41}, {removed(42, 7), 0}, {event(5, 1), 1}, {event(6, 1), 2}, {removed(5, 1), 3}} {
				p := pushes[i]
				if p.From != self || !proto.Equal(p.Event, want.event) || p.Seq == nil || *p.Seq != want.seq {
					t.Errorf("push %d = from %s, %v, seq %v; want from %s, %v, seq %d", i, p.From, p.Event, p.Seq, self, want.event, want.seq)
				}
			}

			// Pull: events and first_seq decoded; the acknowledgement sent.
			srv.box.setBatch(domain.PullBatch[*syncv1.Event]{Events: []*syncv1.Event{event(1, 2), removed(3, 4)}, FirstSeq: 41})
			ack := uint64(40)
			got, err := client.Pull(ctx, srv.id, &ack)
			if err != nil {
				t.Fatalf("Pull: %v", err)
			}
			if !got.HasSeq || got.FirstSeq != 41 || len(got.Events) != 2 ||
				!proto.Equal(got.Events[0], event(1, 2)) || !proto.Equal(got.Events[1], removed(3, 4)) {
				t.Errorf("Pull = %+v, want two events from seq 41", got)
			}
			srv.box.setBatch(domain.PullBatch[*syncv1.Event]{})
			got, err = client.Pull(ctx, srv.id, nil)
			if err != nil {
				t.Fatalf("empty Pull: %v", err)
			}
			if got.HasSeq || len(got.Events) != 0 {
				t.Errorf("empty Pull = %+v, want nothing and no seq", got)
			}
			pulls, _, _ := srv.box.snapshot()
			if len(pulls) != 2 || pulls[0] == nil || *pulls[0] != 40 || pulls[1] != nil {
				t.Errorf("server saw acks %v, want 40 then none", pulls)
			}

			// NotifyNewID: the rename arrives, signed over the new ID.
			newID := domain.MustParseServerID("renamed.example:2289")
			if err := client.NotifyNewID(ctx, srv.id, newID); err != nil {
				t.Fatalf("NotifyNewID: %v", err)
			}
			if _, _, renames := srv.box.snapshot(); len(renames) != 1 || renames[0] != newID {
				t.Errorf("renames = %v, want %s", renames, newID)
			}
			var notifyAuth string
			for _, r := range srv.requests() {
				if r.Path == syncv1connect.PostboxServiceNotifyNewIdProcedure {
					notifyAuth = r.Auth
				}
			}
			tok, err := authtoken.Decode(notifyAuth)
			if err != nil {
				t.Fatalf("NotifyNewId token: %v", err)
			}
			if c := tok.Claims; c.NewServerID != newID.String() || c.Audience != srv.id.String() || c.ServerID != self.String() || len(c.Nonce) != domain.NonceSize {
				t.Errorf("NotifyNewId claims = %+v", c)
			}

			// Remote errors: an application refusal and an auth refusal.
			err = client.NotifyNewID(ctx, srv.id, domain.MustParseServerID(takenID))
			checkRemote(t, err, syncv1connect.PostboxServiceNotifyNewIdProcedure, "postbox.id-taken", http.StatusConflict)
			// Read back through the one error table, and kept the peer's.
			if !domain.PeerSaid(err, domain.ErrIDTaken) || domain.PeerSaid(err, domain.ErrUnknownPeer) {
				t.Errorf("the peer's postbox.id-taken is not read back as its domain.ErrIDTaken: %v", err)
			}

			// Every request went out in the protocol asked for.
			for _, r := range srv.requests() {
				if r.Path == peerkeys.KeyProcedure {
					continue // the server's own key fetches go elsewhere
				}
				switch protocol {
				case peerclient.HRPC:
					if r.ContentType != "application/hrpc" || r.ProtoMajor != 1 {
						t.Errorf("hRPC request %s with Content-Type %q over HTTP/%d, want exactly application/hrpc over HTTP/1.1", r.Path, r.ContentType, r.ProtoMajor)
					}
				case peerclient.Connect:
					if r.ContentType != "application/proto" {
						t.Errorf("Connect request %s with Content-Type %q", r.Path, r.ContentType)
					}
				case peerclient.GRPC:
					if r.ContentType != "application/grpc" || r.ProtoMajor != 2 {
						t.Errorf("gRPC request %s with Content-Type %q over HTTP/%d, want h2c", r.Path, r.ContentType, r.ProtoMajor)
					}
				}
			}
		})
	}
}

func checkRemote(t *testing.T, err error, procedure, identifier string, status int) {
	t.Helper()
	var re *hrpc.RemoteError
	if !errors.As(err, &re) {
		t.Fatalf("err = %v (%T), want *hrpc.RemoteError", err, err)
	}
	if re.Identifier != identifier || re.Procedure != procedure || re.HTTPStatus != status || re.HumanMessage == "" {
		t.Errorf("RemoteError = %+v, want %s from %s with status %d", *re, identifier, procedure, status)
	}
}

// TestClientAuthRefusedOverEveryProtocol: a peer whose key server serves
// another key is refused, and the refusal comes back with its identifier.
func TestClientAuthRefusedOverEveryProtocol(t *testing.T) {
	t.Parallel()
	srv := startRemote(t)
	otherPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, protocol := range protocols {
		t.Run(string(protocol), func(t *testing.T) {
			t.Parallel()
			client, _ := newClient(t, peerclient.Config{Protocol: protocol}, otherPub)
			_, err := client.Push(ctxFor(t), srv.id, 0, []*syncv1.Event{event(1, 1)})
			status := http.StatusBadRequest
			if protocol != peerclient.HRPC {
				status = http.StatusUnauthorized // Connect's status for Unauthenticated
			}
			checkRemote(t, err, syncv1connect.PostboxServicePushProcedure, "h.token-verify-failure", status)
		})
	}
	if _, pushes, _ := srv.box.snapshot(); len(pushes) != 0 {
		t.Errorf("refused pushes reached the postbox: %v", pushes)
	}
}

func TestPerPeerProtocolOverridesDefault(t *testing.T) {
	t.Parallel()
	hrpcPeer, grpcPeer := startRemote(t), startRemote(t)
	client, _ := newClient(t, peerclient.Config{
		Protocol: peerclient.Connect,
		PerPeer:  map[domain.ServerID]peerclient.Protocol{hrpcPeer.id: peerclient.HRPC, grpcPeer.id: peerclient.GRPC},
	}, nil)
	ctx := ctxFor(t)
	for _, r := range []*remote{hrpcPeer, grpcPeer} {
		if _, err := client.Push(ctx, r.id, 5, []*syncv1.Event{event(1, 1)}); err != nil {
			t.Fatal(err)
		}
	}
	check := func(r *remote, want string) {
		t.Helper()
		for _, s := range r.requests() {
			if s.Path == syncv1connect.PostboxServicePushProcedure && s.ContentType != want {
				t.Errorf("push to %s went as %q, want %q", r.id, s.ContentType, want)
			}
		}
	}
	check(hrpcPeer, "application/hrpc")
	check(grpcPeer, "application/grpc")
}

func TestUnreachablePeerIsNotARemoteError(t *testing.T) {
	t.Parallel()
	var lc net.ListenConfig
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	gone := domain.MustParseServerID("127.0.0.1:" + strconv.Itoa(port))
	for _, protocol := range protocols {
		client, _ := newClient(t, peerclient.Config{Protocol: protocol}, nil)
		_, err := client.Push(ctxFor(t), gone, 0, []*syncv1.Event{event(1, 1)})
		var re *hrpc.RemoteError
		if err == nil || errors.As(err, &re) {
			t.Errorf("%s: push to a closed port: %v, want a local error", protocol, err)
		}
	}
}

func TestParseProtocol(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]peerclient.Protocol{"": peerclient.HRPC, "hrpc": peerclient.HRPC, " GRPC ": peerclient.GRPC, "Connect": peerclient.Connect} {
		if got, err := peerclient.ParseProtocol(in); err != nil || got != want {
			t.Errorf("ParseProtocol(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := peerclient.ParseProtocol("grpc-web"); !errors.Is(err, domain.ErrInvalidArgument) {
		t.Errorf("ParseProtocol(grpc-web) = %v, want ErrInvalidArgument", err)
	}
}
