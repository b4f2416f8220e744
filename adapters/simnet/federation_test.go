package simnet_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"log/slog"
	"net/http"
	"testing"
	"testing/synctest"
	"time"

	"github.com/harmony-postbox/postbox/adapters/authtoken"
	"github.com/harmony-postbox/postbox/adapters/clock"
	"github.com/harmony-postbox/postbox/adapters/federation"
	"github.com/harmony-postbox/postbox/adapters/federation/federationtest"
	"github.com/harmony-postbox/postbox/adapters/httpserver"
	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/adapters/peerkeys"
	"github.com/harmony-postbox/postbox/adapters/simnet"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
	"github.com/harmony-postbox/postbox/gen/protocol/sync/v1/syncv1connect"
)

type fixedSelf domain.ServerID

func (s fixedSelf) IDFor(domain.ServerID) domain.ServerID { return domain.ServerID(s) }

// The production federation stack runs over the simulated network inside a
// synctest bubble, with no socket: a's peer client signs and pushes over
// each protocol; b's federation handler verifies the token with the real
// verifier, fetching a's key from a over the network, and hands the events
// to its Postbox (here a recorder).
func TestFederationStackOverTheNetworkInABubble(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		logger := discardLogger()
		n := simnet.New(11, simnet.Faults{})
		defer n.Close()
		idA, idB := domain.MustParseServerID(a), domain.MustParseServerID(b)

		pubA, privA, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		n.Listen(a, httpserver.NewFederationHandler(syncv1connect.UnimplementedPostboxServiceHandler{},
			federation.NewKeyService(pubA), 1<<20, logger))

		pubB, _, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		keysCfg := peerkeys.DefaultConfig()
		keysCfg.Plaintext, keysCfg.Transport = true, n.Transport(b)
		keys := peerkeys.New(keysCfg, clock.System{}, logger, nil)
		verifier := domain.NewVerifier(domain.AuthPolicy{}, clock.System{}, keys, domain.NewIdentity(idB, domain.DefaultAudienceGrace))
		box := federationtest.NewRecorder()
		n.Listen(b, httpserver.NewFederationHandler(federation.NewPostboxService(verifier, box).AcceptBatches(1<<20),
			federation.NewKeyService(pubB), 1<<20, logger))

		signer := authtoken.NewSigner(privA, clock.System{}, rand.Reader)
		start := time.Now()
		for i, protocol := range []peerclient.Protocol{peerclient.HRPC, peerclient.Connect, peerclient.GRPC} {
			client := peerclient.New(peerclient.Config{Plaintext: true, Protocol: protocol, Transport: n.Transport(a)}, signer, fixedSelf(idA))
			ev := &syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{
				UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: uint64(i), GuildId: 9},
			}}
			if _, err := client.Push(t.Context(), idB, uint64(i), []*syncv1.Event{ev}); err != nil {
				t.Fatalf("push over %s: %v", protocol, err)
			}
		}
		got := box.Received()
		if len(got) != 3 {
			t.Fatalf("b received %d events, want 3", len(got))
		}
		for i, r := range got {
			if r.From != idA || r.Seq == nil || *r.Seq != uint64(i) || r.Event.GetUserAddedToGuild().GetUserId() != uint64(i) {
				t.Errorf("event %d: from %s seq %v %v", i, r.From, r.Seq, r.Event)
			}
		}
		// Three pushes and one key fetch (b remembers a's key), in no
		// virtual time at all.
		if n.Calls() != 4 {
			t.Errorf("the network carried %d calls, want 4", n.Calls())
		}
		if d := time.Since(start); d != 0 {
			t.Errorf("took %v of virtual time, want none", d)
		}

		// A lost reply is an error for the caller, though b applied the push.
		n.SetFaults(simnet.Faults{DropReply: 1})
		client := peerclient.New(peerclient.Config{Plaintext: true, Transport: n.Transport(a)}, signer, fixedSelf(idA))
		_, err = client.Push(t.Context(), idB, 3, []*syncv1.Event{got[0].Event})
		if !errors.Is(err, simnet.ErrUnreachable) {
			t.Errorf("push whose reply was lost: %v, want ErrUnreachable", err)
		}
		if got := box.Received(); len(got) != 4 || got[3].Seq == nil || *got[3].Seq != 3 {
			t.Errorf("b holds %d events after the push whose reply was lost, want 4, the last with seq 3", len(got))
		}
	})
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// Two requests from a server whose key is not known yet arrive together
// while its key takes a while to come: one handler fetches it, the other
// waits for that fetch. The wait must be durable in the bubble (a
// sync.Mutex wait is not), or virtual time stops and the fetch never ends.
func TestConcurrentVerificationsWaitDurablyForOneKeyFetch(t *testing.T) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		synctest.Test(t, func(t *testing.T) {
			logger := discardLogger()
			n := simnet.New(3, simnet.Faults{})
			defer n.Close()
			idA, idB := domain.MustParseServerID(a), domain.MustParseServerID(b)
			pubA, privA, _ := ed25519.GenerateKey(rand.Reader)
			pubB, _, _ := ed25519.GenerateKey(rand.Reader)
			slowKeys := httpserver.NewFederationHandler(syncv1connect.UnimplementedPostboxServiceHandler{},
				federation.NewKeyService(pubA), 1<<20, logger)
			n.Listen(a, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				time.Sleep(time.Second) // a slow key server
				slowKeys.ServeHTTP(w, r)
			}))
			keysCfg := peerkeys.DefaultConfig()
			keysCfg.Plaintext, keysCfg.Transport = true, n.Transport(b)
			keys := peerkeys.New(keysCfg, clock.System{}, logger, nil)
			verifier := domain.NewVerifier(domain.AuthPolicy{}, clock.System{}, keys, domain.NewIdentity(idB, domain.DefaultAudienceGrace))
			box := federationtest.NewRecorder()
			n.Listen(b, httpserver.NewFederationHandler(federation.NewPostboxService(verifier, box),
				federation.NewKeyService(pubB), 1<<20, logger))
			client := peerclient.New(peerclient.Config{Plaintext: true, Transport: n.Transport(a)},
				authtoken.NewSigner(privA, clock.System{}, rand.Reader), fixedSelf(idA))
			start := time.Now()
			errs := make(chan error, 2)
			for i := range 2 {
				go func() {
					ev := &syncv1.Event{Kind: &syncv1.Event_UserInvited_{UserInvited: &syncv1.Event_UserInvited{InviteId: "i"}}}
					_, err := client.Push(t.Context(), idB, uint64(i), []*syncv1.Event{ev})
					errs <- err
				}()
			}
			for range 2 {
				if err := <-errs; err != nil {
					t.Errorf("push: %v", err)
				}
			}
			if took := time.Since(start); took != time.Second {
				t.Errorf("the pushes took %v, want the key fetch's 1s", took)
			}
			if got := len(box.Received()); got != 2 {
				t.Errorf("b received %d pushes, want 2", got)
			}
		})
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the bubble stalled: a wait inside it is not durable (a sync.Mutex held across a network wait?)")
	}
}
