package admin

import (
	"crypto/rand"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	"github.com/harmony-postbox/postbox/gen/postbox/admin/v1/adminv1connect"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

type noNames struct{}

func (noNames) ServerID(streams.PeerID) (domain.ServerID, bool) { return domain.ServerID{}, false }

// A Watch after a position this store has no event at (another database's,
// or made up) is refused as an invalid argument saying so, rather than
// quietly watching from elsewhere; a position Watch printed works.
func TestWatchRefusesAPositionThatIsNotThisStores(t *testing.T) {
	t.Parallel()
	store, err := embedded.Open(t.Context(), t.TempDir(), embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	codec := streams.NewCodec(rand.Reader)
	var last eventstore.AppendResult
	for i := range 2 {
		seq := uint64(i)
		d, err := codec.EncodeReceived(streams.Received{Via: eventsv1.EventReceived_VIA_PUSH, SenderSeq: &seq,
			Event: &syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: seq}}}})
		if err != nil {
			t.Fatal(err)
		}
		if last, err = store.Append(t.Context(), streams.Inbox("p1"), eventstore.Any(), d); err != nil {
			t.Fatal(err)
		}
	}
	svc := NewService(domain.NewIdentity(domain.MustParseServerID("self.example:2289"), domain.DefaultAudienceGrace), nil, "test",
		nil, nil, store, noNames{}, nil, nil)
	mux := http.NewServeMux()
	// Mounted as the admin listener mounts it: errors mapped in full.
	mux.Handle(adminv1connect.NewAdminServiceHandler(svc, connect.WithInterceptors(ErrorsInFull(slog.New(slog.DiscardHandler)))))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	client := adminv1connect.NewAdminServiceClient(srv.Client(), srv.URL)

	watch := func(after uint64) ([]*adminv1.WatchResponse, error) {
		stream, err := client.Watch(t.Context(), connect.NewRequest(&adminv1.WatchRequest{After: after}))
		if err != nil {
			return nil, err
		}
		defer stream.Close()
		var got []*adminv1.WatchResponse
		for stream.Receive() {
			got = append(got, stream.Msg())
		}
		return got, stream.Err()
	}
	past := last.Position.Commit + 1000
	_, err = watch(past)
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "not the position of an event in this server's store") {
		t.Fatalf("watch after %d, past the end: %v; want invalid argument saying so", past, err)
	}
	got, err := watch(last.Position.Commit - 1)
	if err != nil || len(got) != 2 || got[0].GetEvent().GetSenderSeq() != 1 || !got[1].GetCaughtUp() {
		t.Fatalf("watch after the first event: %v, %v; want the second event, then caught up", got, err)
	}
}
