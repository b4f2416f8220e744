package delivery

import (
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/authtoken"
	"github.com/harmony-postbox/postbox/adapters/hrpc"
	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
	"github.com/harmony-postbox/postbox/gen/protocol/sync/v1/syncv1connect"
)

// upstreamReceiver answers Push over hRPC as an upstream server does: it
// decodes the upstream PushRequest, takes its one event, and answers with
// an empty PushResponse. It notes any field a push carried beyond the
// event and the sequence number.
type upstreamReceiver struct {
	mu     sync.Mutex
	users  []uint64
	extras []protowire.Number
}

func (u *upstreamReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	var req syncv1.PushRequest
	if err == nil {
		err = proto.Unmarshal(body, &req)
	}
	if r.URL.Path != syncv1connect.PostboxServicePushProcedure || err != nil {
		http.Error(w, "not a push", http.StatusBadRequest)
		return
	}
	u.mu.Lock()
	u.users = append(u.users, req.GetEvent().GetUserAddedToGuild().GetUserId())
	for raw := req.ProtoReflect().GetUnknown(); len(raw) > 0; {
		num, typ, n := protowire.ConsumeTag(raw)
		if n < 0 {
			break
		}
		// The sequence number and the continuity claim (epoch, prev_seq,
		// prev_id, last_id: fields 102 to 106) are sent to every receiver
		// and skipped by upstream ones; events following the first (101)
		// must never reach one.
		if num != 100 && (num < 102 || num > 106) {
			u.extras = append(u.extras, num)
		}
		raw = raw[n:]
		if n = protowire.ConsumeFieldValue(num, typ, raw); n < 0 {
			break
		}
		raw = raw[n:]
	}
	u.mu.Unlock()
	w.Header().Set("Content-Type", hrpc.ContentType)
	w.WriteHeader(http.StatusOK) // an empty PushResponse: no bytes
}

type selfID domain.ServerID

func (s selfID) IDFor(domain.ServerID) domain.ServerID { return domain.ServerID(s) }

// TestAnUpstreamReceiverGetsOneEventPerPushOverTheWire: a backlog pushed by
// the real client to a receiver that answers as upstream does arrives one
// event per push, each once, in order, and no push carries anything an
// upstream receiver would skip.
func TestAnUpstreamReceiverGetsOneEventPerPushOverTheWire(t *testing.T) {
	t.Parallel()
	up := &upstreamReceiver{}
	srv := httptest.NewServer(up)
	t.Cleanup(srv.Close)
	upID := domain.MustParseServerID(strings.TrimPrefix(srv.URL, "http://"))

	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	client := peerclient.New(peerclient.Config{Insecure: true, Protocol: peerclient.HRPC},
		authtoken.NewSigner(key, systemClock{}, rand.Reader), selfID(domain.MustParseServerID("a.example:2289")))
	w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, client: client, cfg: testConfig()}
	w.open()

	const n = 40
	for i := range uint64(n) {
		if _, err := w.engine.Send(t.Context(), upID, added(i)); err != nil {
			t.Fatal(err)
		}
	}
	id, _ := w.engine.registry.Lookup(upID)
	p := w.engine.peer(id)
	eventually(t, "every event delivered", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.out.Delivered == n
	})
	up.mu.Lock()
	defer up.mu.Unlock()
	want := make([]uint64, n)
	for i := range want {
		want[i] = uint64(i)
	}
	if !slices.Equal(up.users, want) {
		t.Fatalf("the upstream receiver got %v, want 0..%d once each, in order", up.users, n-1)
	}
	if len(up.extras) > 0 {
		t.Fatalf("pushes carried fields %v an upstream receiver skips", up.extras)
	}
}
