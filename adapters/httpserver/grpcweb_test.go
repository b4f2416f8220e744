package httpserver_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/federation"
	"github.com/harmony-postbox/postbox/adapters/federation/federationtest"
	"github.com/harmony-postbox/postbox/adapters/httpserver"
	"github.com/harmony-postbox/postbox/adapters/peerkeys"
	"github.com/harmony-postbox/postbox/adapters/seqext"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
	"github.com/harmony-postbox/postbox/gen/protocol/sync/v1/syncv1connect"
)

// queuedPostbox answers every Pull with one queued batch and remembers the
// acknowledgements; pushes are recorded.
type queuedPostbox struct {
	*federationtest.Recorder
	batch domain.PullBatch[*syncv1.Event]

	mu   sync.Mutex
	acks []*uint64
}

func (q *queuedPostbox) ServeAccountedPull(_ context.Context, _ domain.Caller, ack *uint64, _ *domain.PullAccount) (domain.PullBatch[*syncv1.Event], error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.acks = append(q.acks, ack)
	return q.batch, nil
}

// TestPullAndPushOverGRPCWeb makes real gRPC-Web calls (connect-go's
// gRPC-Web client, over HTTP/1.1 as browsers' proxies do) to the federation
// handler: a Pull that acknowledges and gets a queued batch with its
// first_seq, a push of several events answered with last_seq and the
// announced limits, and refused calls that carry the identifier in their
// metadata.
func TestPullAndPushOverGRPCWeb(t *testing.T) {
	t.Parallel()
	clock := newManualClock(fixtureTime)
	keysCfg := peerkeys.DefaultConfig()
	keysCfg.Insecure = true
	id := domain.MustParseServerID(fixtureAudience)
	verifier := domain.NewVerifier(domain.AuthPolicy{}, clock, peerkeys.New(keysCfg, clock, discardLogger, nil),
		domain.NewIdentity(id, domain.DefaultAudienceGrace))
	queued := []*syncv1.Event{userAdded(42, 7), userAdded(43, 8)}
	box := &queuedPostbox{Recorder: federationtest.NewRecorder(), batch: domain.PullBatch[*syncv1.Event]{Events: queued, FirstSeq: 5}}
	const limit = 4 << 20
	service := federation.NewPostboxService(verifier, box).AcceptBatches(limit)
	rec := &recorder{next: httpserver.NewFederationHandler(service, federation.NewKeyService(nil), limit, discardLogger)}
	url := "http://" + serve(t, "federation", rec)
	client := syncv1connect.NewPostboxServiceClient(closeIdle(t, http1Client()), url, connect.WithGRPCWeb())
	p := startPeer(t)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()

	pullReq := connect.NewRequest(&syncv1.PullRequest{})
	seqext.SetAck(pullReq.Msg, 3)
	pullReq.Header().Set("Authorization", p.extended(t, clock, id))
	pull, err := client.Pull(ctx, pullReq)
	if err != nil {
		t.Fatalf("Pull: %v", err)
	}
	if got := pull.Msg.GetEventQueue(); len(got) != 2 || !proto.Equal(got[0], queued[0]) || !proto.Equal(got[1], queued[1]) {
		t.Errorf("Pull reply events %v, want %v", got, queued)
	}
	if first, ok := seqext.FirstSeq(pull.Msg); !ok || first != 5 {
		t.Errorf("Pull reply first_seq %d (present %v), want 5", first, ok)
	}
	box.mu.Lock()
	if len(box.acks) != 1 || box.acks[0] == nil || *box.acks[0] != 3 {
		t.Errorf("the Pull reached the postbox with acks %v, want one ack of 3", box.acks)
	}
	box.mu.Unlock()

	pushReq := connect.NewRequest(&syncv1.PushRequest{Event: userAdded(42, 7)})
	seqext.SetPushSeq(pushReq.Msg, 7)
	if err := seqext.AddFollowing(pushReq.Msg, userAdded(42, 7), userAdded(42, 7)); err != nil {
		t.Fatal(err)
	}
	pushReq.Header().Set("Authorization", p.extended(t, clock, id))
	push, err := client.Push(ctx, pushReq)
	if err != nil {
		t.Fatalf("Push: %v", err)
	}
	reply, ok := seqext.GetPushReply(push.Msg)
	if !ok || reply.LastSeq != 9 || reply.BatchBytes != limit || reply.BatchEvents != federation.MaxEventsPerPush {
		t.Errorf("Push reply %+v (present %v), want last_seq 9, batch_bytes %d, batch_events %d", reply, ok, limit, federation.MaxEventsPerPush)
	}
	plainReq := connect.NewRequest(&syncv1.PushRequest{Event: userAdded(42, 7)})
	plainReq.Header().Set("Authorization", p.plain(t, clock))
	if _, err := client.Push(ctx, plainReq); err != nil {
		t.Fatalf("Push with a plain token: %v", err)
	}
	checkReceived(t, &fed{postbox: box.Recorder}, p.id, 7, 8, 9, -1)

	// Refusals carry the identifier and code over gRPC-Web too.
	for _, tc := range []struct {
		name, auth, identifier string
		code                   connect.Code
	}{
		{"no token", "", "h.bad-auth", connect.CodeUnauthenticated},
		{"a token for another server", p.extended(t, clock, domain.MustParseServerID("other.example:2289")), "postbox.wrong-audience", connect.CodeUnauthenticated},
	} {
		req := connect.NewRequest(&syncv1.PushRequest{Event: userAdded(1, 1)})
		if tc.auth != "" {
			req.Header().Set("Authorization", tc.auth)
		}
		_, err := client.Push(ctx, req)
		var ce *connect.Error
		if !errors.As(err, &ce) || ce.Code() != tc.code || ce.Meta().Get("Postbox-Error-Identifier") != tc.identifier {
			t.Errorf("%s: %v; want %v with identifier %s", tc.name, err, tc.code, tc.identifier)
		}
	}
	if n := len(box.Received()); n != 4 {
		t.Errorf("the postbox holds %d events, want the 4 accepted ones", n)
	}

	var web int
	for _, r := range rec.requests() {
		if strings.HasPrefix(r.ContentType, "application/grpc-web") {
			web++
			if r.ProtoMajor != 1 {
				t.Errorf("gRPC-Web request %s over HTTP/%d, want HTTP/1.1", r.Path, r.ProtoMajor)
			}
		}
	}
	if web != 5 {
		t.Errorf("the server saw %d gRPC-Web requests, want 5", web)
	}
}
