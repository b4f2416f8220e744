package projector

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
	"github.com/harmony-postbox/postbox/projections"
)

// history is a script of records in global order. The same script becomes
// synthetic records (records) or an embedded store (store), so the checks
// can be tested both on shapes the store cannot produce and on a real store.
type history struct {
	t     *testing.T
	codec *streams.Codec
	steps []step
}

type step struct {
	stream string
	data   eventstore.EventData
}

func newHistory(t *testing.T) *history {
	return &history{t: t, codec: streams.NewCodec(rand.Reader)}
}

// base is the creation time of the first synthetic record; each next one
// is a second later.
var base = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func (h *history) add(stream, typ string, m proto.Message) *history {
	h.t.Helper()
	d, err := h.codec.Encode(typ, m)
	if err != nil {
		h.t.Fatal(err)
	}
	h.steps = append(h.steps, step{stream, d})
	return h
}

func (h *history) seen(peer, server string) *history {
	return h.add(streams.Peers, streams.TypePeerSeen, &eventsv1.PeerSeen{PeerId: peer, ServerId: server})
}

func (h *history) renamed(peer, from, to string) *history {
	return h.add(streams.Peers, streams.TypePeerRenamed, &eventsv1.PeerRenamed{PeerId: peer, OldServerId: from, NewServerId: to})
}

func (h *history) enqueue(peer string, events ...*syncv1.Event) *history {
	h.t.Helper()
	for _, ev := range events {
		d, err := h.codec.EncodeEnqueued(ev)
		if err != nil {
			h.t.Fatal(err)
		}
		h.steps = append(h.steps, step{streams.Outbox(streams.PeerID(peer)), d})
	}
	return h
}

// enqueueN enqueues n guild additions.
func (h *history) enqueueN(peer string, n int) *history {
	for i := range n {
		h.enqueue(peer, added(uint64(100+i), 1))
	}
	return h
}

func (h *history) delivery(peer string, events ...domain.DeliveryEvent) *history {
	h.t.Helper()
	data, err := h.codec.EncodeDelivery(events...)
	if err != nil {
		h.t.Fatal(err)
	}
	for _, d := range data {
		h.steps = append(h.steps, step{streams.Delivery(streams.PeerID(peer)), d})
	}
	return h
}

// received appends inbox records; seq is the first sender sequence number
// (the rest follow), or nil for none.
func (h *history) received(peer string, seq *uint64, events ...*syncv1.Event) *history {
	h.t.Helper()
	return h.receivedIn(peer, 0, seq, events...)
}

// receivedIn is received with the sender's epoch the sequence numbers
// count in.
func (h *history) receivedIn(peer string, epoch uint64, seq *uint64, events ...*syncv1.Event) *history {
	h.t.Helper()
	for i, ev := range events {
		var s *uint64
		if seq != nil {
			v := *seq + uint64(i)
			s = &v
		}
		rec := streams.Received{Event: ev, Via: eventsv1.EventReceived_VIA_PUSH, SenderSeq: s}
		if s != nil {
			rec.SenderEpoch = epoch
		}
		d, err := h.codec.EncodeReceived(rec)
		if err != nil {
			h.t.Fatal(err)
		}
		h.steps = append(h.steps, step{streams.Inbox(streams.PeerID(peer)), d})
	}
	return h
}

// raw appends a record with a given type and body.
func (h *history) raw(stream, typ string, data []byte) *history {
	h.steps = append(h.steps, step{stream, eventstore.EventData{Type: typ, Data: data}})
	return h
}

// records is the script as a store would record it: revisions counted per
// stream, positions 1, 2, 3...
func (h *history) records() []eventstore.RecordedEvent {
	revs := map[string]uint64{}
	out := make([]eventstore.RecordedEvent, 0, len(h.steps))
	for i, s := range h.steps {
		n := uint64(i + 1)
		out = append(out, eventstore.RecordedEvent{
			Stream: s.stream, Revision: revs[s.stream], Position: eventstore.Position{Commit: n, Prepare: n},
			ID: s.data.ID, Type: s.data.Type, Data: s.data.Data, Created: base.Add(time.Duration(i) * time.Second),
		})
		revs[s.stream]++
	}
	return out
}

// store appends the script to a new embedded store, one append per record.
func (h *history) store() *embedded.Store {
	h.t.Helper()
	s := openStore(h.t, h.t.TempDir())
	h.appendTo(s)
	return s
}

func (h *history) appendTo(s eventstore.Store) {
	h.t.Helper()
	for _, st := range h.steps {
		if _, err := s.Append(h.t.Context(), st.stream, eventstore.Any(), st.data); err != nil {
			h.t.Fatalf("append to %s: %v", st.stream, err)
		}
	}
	h.steps = nil
}

func openStore(t *testing.T, dir string) *embedded.Store {
	t.Helper()
	s, err := embedded.Open(t.Context(), dir, embedded.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// given folds records into a fresh state.
func given(t *testing.T, records ...eventstore.RecordedEvent) *projections.State {
	t.Helper()
	s := projections.NewState()
	apply(t, s, records...)
	return s
}

func apply(t *testing.T, s *projections.State, records ...eventstore.RecordedEvent) {
	t.Helper()
	for _, r := range records {
		if err := s.Apply(streams.Decode(r)); err != nil {
			t.Fatalf("apply %s@%d: %v", r.Stream, r.Revision, err)
		}
	}
}

// readAll returns every record of the store in global order.
func readAll(t *testing.T, s eventstore.Store) []eventstore.RecordedEvent {
	t.Helper()
	sub, err := s.Subscribe(t.Context(), eventstore.Filter{}, eventstore.FromStart())
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	var out []eventstore.RecordedEvent
	for {
		item, err := sub.Recv(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if item.CaughtUp {
			return out
		}
		out = append(out, *item.Event)
	}
}

func added(user, guild uint64) *syncv1.Event {
	return &syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: user, GuildId: guild}}}
}

func removed(user, guild uint64) *syncv1.Event {
	return &syncv1.Event{Kind: &syncv1.Event_UserRemovedFromGuild_{UserRemovedFromGuild: &syncv1.Event_UserRemovedFromGuild{UserId: user, GuildId: guild}}}
}

func invited(user, inviter uint64, invite string) *syncv1.Event {
	return &syncv1.Event{Kind: &syncv1.Event_UserInvited_{UserInvited: &syncv1.Event_UserInvited{UserId: user, InviterId: inviter, InviteId: invite}}}
}

func rejected(guild, user uint64, invite string) *syncv1.Event {
	return &syncv1.Event{Kind: &syncv1.Event_UserRejectedInvite_{UserRejectedInvite: &syncv1.Event_UserRejectedInvite{GuildId: guild, UserId: user, InviteId: invite}}}
}

func u64(v uint64) *uint64 { return &v }

// eventually polls cond until it holds or 30 seconds pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// memStore serves records from memory: a subscription yields those after
// its start, then CaughtUp, then waits; recvErr, if set, fails every Recv.
type memStore struct {
	records []eventstore.RecordedEvent
	recvErr error
	subErr  error
	subs    atomic.Int32
}

func (m *memStore) Subscribe(_ context.Context, _ eventstore.Filter, from eventstore.SubscribeFrom) (eventstore.Subscription, error) {
	m.subs.Add(1)
	if m.subErr != nil {
		return nil, m.subErr
	}
	var rest []eventstore.RecordedEvent
	for _, r := range m.records {
		if from.IsStart() || from.Position().Less(r.Position) {
			rest = append(rest, r)
		}
	}
	return &memSub{rest: rest, err: m.recvErr}, nil
}

// memDatabaseID is the database identity every memStore holds.
const memDatabaseID = "0123456789abcdef0123456789abcdef"

// ReadStream serves the database stream only: the store's identity.
func (m *memStore) ReadStream(_ context.Context, stream string, from uint64, _ int) ([]eventstore.RecordedEvent, error) {
	if stream != streams.Database || from > 0 {
		return nil, eventstore.ErrStreamNotFound
	}
	ev, err := streams.NewCodec(rand.Reader).EncodeDatabaseCreated(memDatabaseID)
	if err != nil {
		return nil, err
	}
	return []eventstore.RecordedEvent{{Stream: stream, ID: ev.ID, Type: ev.Type, Data: ev.Data}}, nil
}

// Append is never needed: the identity is there already.
func (m *memStore) Append(context.Context, string, eventstore.ExpectedRevision, ...eventstore.EventData) (eventstore.AppendResult, error) {
	return eventstore.AppendResult{}, errors.New("memStore: read only")
}

type memSub struct {
	rest   []eventstore.RecordedEvent
	err    error
	caught bool
}

func (s *memSub) Recv(ctx context.Context) (eventstore.Item, error) {
	switch {
	case s.err != nil:
		return eventstore.Item{}, s.err
	case len(s.rest) > 0:
		r := s.rest[0]
		s.rest = s.rest[1:]
		return eventstore.Item{Event: &r}, nil
	case !s.caught:
		s.caught = true
		return eventstore.Item{CaughtUp: true}, nil
	}
	<-ctx.Done()
	return eventstore.Item{}, ctx.Err()
}

func (s *memSub) Close() error { return nil }

// syncBuffer is a log destination safe for the goroutines of Live.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func bufferLogger(b *syncBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// mixedHistory exercises every projection: registry, cursors, guilds and
// invites both ways.
func mixedHistory(t *testing.T) *history {
	return newHistory(t).
		seen("pa", "a.example:2289").
		add(streams.Peers, streams.TypePeerKeyLearned, &eventsv1.PeerKeyLearned{PeerId: "pa", PublicKey: []byte("0123456789abcdef0123456789abcdef")}).
		enqueue("pa", added(5, 1), invited(6, 42, "s1")).
		delivery("pa", domain.EventPushed{Seq: 0, Attempts: 1}).
		seen("pb", "b.example:2289").
		received("pb", u64(0), added(42, 7), invited(42, 9, "i1"), added(42, 8)).
		enqueue("pa", added(5, 2)).
		delivery("pa", domain.QueueModeEntered{FromSeq: 1, Attempts: 6, LastError: "timeout"}).
		received("pa", u64(0), rejected(1, 6, "s1")).
		renamed("pb", "b.example:2289", "b2.example:2289").
		received("pb", u64(3), removed(42, 7)).
		delivery("pa", domain.PullServed{FromSeq: 1, ToSeq: 2, AwaitsAck: true}).
		delivery("pa", domain.PullAcknowledged{UpToSeq: 2}, domain.PushResumed{FromSeq: 3, Reason: domain.ResumeQueueDrained}).
		add(streams.Peers, streams.TypeOwnServerIDChanged, &eventsv1.OwnServerIdChanged{OldServerId: "us:1", NewServerId: "we:1"}).
		add(streams.Peers, streams.TypePeerNotifiedOfNewID, &eventsv1.PeerNotifiedOfNewId{PeerId: "pa", NewServerId: "we:1"})
}

func audit(t *testing.T, store AuditStore, opts AuditOptions) projections.Report {
	t.Helper()
	rep, err := Audit(t.Context(), store, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// pos is the position of the last record s applied.
func pos(s *projections.State) domain.Position {
	p, _ := s.Position()
	return p
}
