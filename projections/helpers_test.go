package projections

import (
	"crypto/rand"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
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

// receivedRun appends the events as one inbox record, a run, with sender
// sequence numbers from seq.
func (h *history) receivedRun(peer string, seq uint64, events ...*syncv1.Event) *history {
	h.t.Helper()
	recs := make([]streams.Received, len(events))
	for i, ev := range events {
		s := seq + uint64(i)
		recs[i] = streams.Received{Event: ev, Via: eventsv1.EventReceived_VIA_PULL, SenderSeq: &s}
	}
	data, err := h.codec.EncodeReceivedRuns(recs)
	if err != nil || len(data) != 1 {
		h.t.Fatalf("%d records (%v), want one run", len(data), err)
	}
	h.steps = append(h.steps, step{streams.Inbox(streams.PeerID(peer)), data[0]})
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
func given(t *testing.T, records ...eventstore.RecordedEvent) *State {
	t.Helper()
	s := NewState()
	apply(t, s, records...)
	return s
}

func apply(t *testing.T, s *State, records ...eventstore.RecordedEvent) {
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
