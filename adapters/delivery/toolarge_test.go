package delivery

import (
	"crypto/rand"
	"fmt"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"strings"

	"google.golang.org/protobuf/proto"

	"sync"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb/fakestreams"
	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/adapters/projector"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

type tooLargeCounter struct {
	noObserver
	mu sync.Mutex
	n  map[domain.ServerID]int
}

func (c *tooLargeCounter) ReceivedTooLarge(peer domain.ServerID, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[domain.ServerID]int{}
	}
	c.n[peer] += n
}

func (c *tooLargeCounter) count(peer domain.ServerID) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[peer]
}

// smallAppendsEngine runs an engine on a store whose appends take 4,000
// bytes, counting the received events too large for it.
func smallAppendsEngine(t *testing.T) (*Engine, *esdb.Store, *registry.Registry, *fakePeers, *tooLargeCounter) {
	t.Helper()
	srv := fakestreams.StartServer(t, fakestreams.Options{Profile: "24.10", MaxAppendSize: 4096})
	counter := &tooLargeCounter{}
	cfg := testConfig()
	cfg.Observer = counter
	peers := &fakePeers{}
	engine, store, reg := newESDBEngine(t, srv, "&maxAppendBytes=4000", cfg, peers)
	return engine, store, reg, peers, counter
}

// On a store that takes appends of a few KiB, a received event too large
// for any append is stored as a marker of its sender sequence number and
// size: the push is answered, the sequence numbers go on, the next push is
// taken, and the loss is counted and audited. An event whose protojson is
// too large but whose wire bytes fit is stored as its wire bytes. The same for an upstream
// sender (no sequence numbers) and for events that came by Pull.
func TestAReceivedEventTooLargeForTheStoreIsStoredAsAMarker(t *testing.T) {
	t.Parallel()
	engine, store, reg, peers, counter := smallAppendsEngine(t)
	upstream := domain.MustParseServerID("up.example:2289")
	ctx := t.Context()
	huge := invite(strings.Repeat("x", 10000))
	// 1.5 KB on the wire, 9 KB as protojson (each byte escaped as \u0001):
	// it fits the store only as its wire bytes.
	escaped := invite(strings.Repeat("\x01", 1500))

	pusher := domain.Caller{ServerID: peerB, Extended: true}
	seq := uint64(0)
	if err := engine.AcceptPush(ctx, pusher, []*syncv1.Event{added(0), huge, added(2)}, &seq); err != nil {
		t.Fatalf("push carrying an event too large for the store: %v", err)
	}
	seq = 3
	if err := engine.AcceptPush(ctx, pusher, []*syncv1.Event{added(3)}, &seq); err != nil {
		t.Fatalf("the next push: %v", err)
	}
	// The same push again (a lost answer): nothing is stored twice.
	seq = 0
	if err := engine.AcceptPush(ctx, pusher, []*syncv1.Event{added(0), huge, added(2)}, &seq); err != nil {
		t.Fatal(err)
	}
	if err := engine.AcceptPush(ctx, domain.Caller{ServerID: upstream}, []*syncv1.Event{huge}, nil); err != nil {
		t.Fatalf("upstream push too large for the store: %v", err)
	}
	// By Pull: a reply of several events, one too large.
	first := uint64(4)
	peers.set(func(f *fakePeers) {
		f.pullFn = func(ack *uint64) (peerclient.PullResult, error) {
			if ack != nil && *ack >= 6 {
				return peerclient.PullResult{}, nil
			}
			return peerclient.PullResult{Events: []*syncv1.Event{huge, escaped, huge}, FirstSeq: first, HasSeq: true}, nil
		}
	})
	if err := engine.PullFrom(ctx, peerB); err != nil {
		t.Fatalf("pull of events too large for the store: %v", err)
	}

	id, _ := reg.Lookup(peerB)
	var got []string
	for _, rec := range receivedIn(t, store, streams.Inbox(id)) {
		switch {
		case rec.TooLargeBytes != nil:
			if *rec.TooLargeBytes < 10000 || *rec.TooLargeBytes > 11000 {
				t.Errorf("marker of %d bytes for an event of about 10 KB", *rec.TooLargeBytes)
			}
			got = append(got, "marker")
		default:
			got = append(got, "event")
		}
		if len(got) == 6 && !proto.Equal(rec.Event, escaped) {
			t.Fatalf("the event whose protojson was too large reads back as %v", rec.Event)
		}
		if rec.SenderSeq == nil || *rec.SenderSeq != uint64(len(got)-1) {
			t.Fatalf("record %d has sender sequence %v", len(got)-1, rec.SenderSeq)
		}
	}
	if want := "event marker event event marker event marker"; strings.Join(got, " ") != want {
		t.Fatalf("inbox holds %q, want %q", strings.Join(got, " "), want)
	}
	upID, _ := reg.Lookup(upstream)
	up, err := store.ReadStream(ctx, streams.Inbox(upID), 0, 10)
	if err != nil || len(up) != 1 {
		t.Fatalf("upstream inbox: %d records, %v", len(up), err)
	}
	if rec, err := streams.DecodeReceived(up[0]); err != nil || rec.TooLargeBytes == nil || rec.SenderSeq != nil || rec.Event != nil {
		t.Fatalf("upstream record %+v, %v; want a marker without a sequence number", rec, err)
	}
	if n, m := counter.count(peerB), counter.count(upstream); n != 3 || m != 1 {
		t.Fatalf("counted %d and %d events too large, want 3 and 1", n, m)
	}

	report, err := projector.Audit(ctx, store, projector.AuditOptions{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !report.Clean() || len(report.TooLarge) != 4 {
		t.Fatalf("audit: %d violations %v, %d markers listed (want 4)", len(report.Violations), report.Violations, len(report.TooLarge))
	}
	if m := report.TooLarge[0]; m.ServerID != peerB.String() || m.SenderSeq == nil || *m.SenderSeq != 1 || m.Bytes < 10000 {
		t.Fatalf("first marker in the audit: %+v", m)
	}
}

// What the announced limits rest on: the store splits a batch of any size
// into appends, so only a single event must fit one. The largest event a
// Postbox sender's Send takes by default (DefaultMaxEventBytes on the wire),
// at its worst for protojson (every byte escaped), fits a default
// EventStoreDB append budget as its wire bytes, with the largest sequence
// number; as protojson it would not.
func TestTheLargestEventSendTakesFitsOneEventStoreDBAppend(t *testing.T) {
	t.Parallel()
	ev := invite("")
	for n := DefaultMaxEventBytes; ; n-- {
		ev.GetUserInvited().InviteId = strings.Repeat("\x01", n)
		if proto.Size(ev) <= DefaultMaxEventBytes {
			break
		}
	}
	seq := ^uint64(0)
	codec := streams.NewCodec(rand.Reader)
	r := streams.Received{Event: ev, Via: eventsv1.EventReceived_VIA_PULL, SenderSeq: &seq}
	compact, err := codec.EncodeReceivedAsBytes(r)
	if err != nil {
		t.Fatal(err)
	}
	if cost := len(compact.Data) + 2*len(compact.Type); cost > esdb.DefaultMaxAppendBytes {
		t.Fatalf("as wire bytes it counts %d, over the default append budget %d", cost, esdb.DefaultMaxAppendBytes)
	}
	full, err := codec.EncodeReceived(r)
	if err != nil {
		t.Fatal(err)
	}
	if cost := len(full.Data) + 2*len(full.Type); cost <= esdb.DefaultMaxAppendBytes {
		t.Fatalf("as protojson it counts %d: the worst case is not the worst", cost)
	}
}

// Given a store whose appends take a few KiB, and a Pull reply of events
// that each fit but whose run does not,
// when the reply is stored,
// then the run is stored as one record per event: every event is kept, in
// order, and none is counted as too large.
func TestARunTooLargeForTheStoreIsStoredEventByEvent(t *testing.T) {
	t.Parallel()
	engine, store, reg, peers, counter := smallAppendsEngine(t)
	const n = 40
	var reply []*syncv1.Event
	for i := range n {
		reply = append(reply, invite(fmt.Sprintf("%03d-%s", i, strings.Repeat("x", 200))))
	}
	peers.set(func(f *fakePeers) {
		f.pullFn = func(ack *uint64) (peerclient.PullResult, error) {
			if ack != nil {
				return peerclient.PullResult{}, nil
			}
			return peerclient.PullResult{Events: reply, FirstSeq: 0, HasSeq: true}, nil
		}
	})
	id, err := reg.Register(t.Context(), peerB)
	if err != nil {
		t.Fatal(err)
	}
	if err := engine.PullFrom(t.Context(), peerB); err != nil {
		t.Fatalf("pull: %v", err)
	}
	got := receivedIn(t, store, streams.Inbox(id))
	if len(got) != n {
		t.Fatalf("inbox holds %d events, want %d", len(got), n)
	}
	for i, rec := range got {
		if rec.TooLargeBytes != nil || !proto.Equal(rec.Event, reply[i]) || rec.SenderSeq == nil || *rec.SenderSeq != uint64(i) {
			t.Fatalf("event %d: %+v, want the %d-th of the reply", i, rec, i)
		}
	}
	if records, err := store.ReadStream(t.Context(), streams.Inbox(id), 0, 100); err != nil || len(records) != n {
		t.Fatalf("%d records (%v), want one per event", len(records), err)
	}
	if c := counter.count(peerB); c != 0 {
		t.Fatalf("%d events counted as too large, want none", c)
	}
}
