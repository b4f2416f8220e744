package projections

// Behaviour whose breaking no other test noticed (scripts/mutate.sh
// ./projections): each case here fails on one or more small wrong changes.

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
)

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

func TestAuditReportsAnUnreadableCheckpointAsChecked(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "projections.checkpoint")
	if err := writeFileAtomic(path, []byte("{")); err != nil {
		t.Fatal(err)
	}
	rep := audit(t, &memStore{}, AuditOptions{CheckpointPath: path})
	if !rep.CheckpointChecked || rep.Clean() {
		t.Fatalf("report %+v; want the checkpoint checked and found bad", rep)
	}
}

func TestAuditRuleEdges(t *testing.T) {
	t.Parallel()
	deliveryA, inboxA := streams.Delivery("pa"), streams.Inbox("pa")
	epoch := func(h *history, seq, epoch uint64) {
		d, err := h.codec.EncodeReceived(streams.Received{Event: added(1, 1), Via: eventsv1.EventReceived_VIA_PUSH, SenderSeq: &seq, SenderEpoch: epoch})
		if err != nil {
			t.Fatal(err)
		}
		h.steps = append(h.steps, step{inboxA, d})
	}
	for _, tt := range []struct {
		name    string
		history func(h *history)
		want    []Violation
	}{{
		name: "queue mode from the event at the head",
		history: func(h *history) {
			h.enqueueN("pa", 2).delivery("pa", domain.QueueModeEntered{FromSeq: 2, Attempts: 6})
		},
		want: []Violation{{Stream: deliveryA, Revision: 0, Rule: RuleCursorWithinHead}},
	}, {
		name: "an acknowledgement of the event at the head",
		history: func(h *history) {
			h.enqueueN("pa", 2).delivery("pa", domain.QueueModeEntered{FromSeq: 0, Attempts: 6}, domain.PullAcknowledged{UpToSeq: 2})
		},
		want: []Violation{{Stream: deliveryA, Revision: 1, Rule: RuleCursorWithinHead}},
	}, {
		name: "an epoch that starts where delivery stands, and one that does not",
		history: func(h *history) {
			h.enqueueN("pa", 3).delivery("pa", domain.EventPushed{Seq: 0}, domain.EpochStarted{Epoch: 7, FromSeq: 1}, domain.EpochStarted{Epoch: 8, FromSeq: 2})
		},
		want: []Violation{{Stream: deliveryA, Revision: 2, Rule: RuleCursorIncreasing}},
	}, {
		name: "a receiver's report within the outbox, of nothing, and of the event at the head",
		history: func(h *history) {
			h.delivery("pa", domain.ReceiverReported{}).
				enqueueN("pa", 3).
				delivery("pa", domain.EventPushed{Seq: 0, Through: 1}, domain.ReceiverReported{Seq: 1, Has: true}, domain.ReceiverReported{Seq: 3, Has: true})
		},
		want: []Violation{{Stream: deliveryA, Revision: 3, Rule: RuleCursorWithinHead}},
	}, {
		name: "a skip of a single event",
		history: func(h *history) {
			h.enqueueN("pa", 2).delivery("pa", domain.EventsSkipped{FromSeq: 0, ThroughSeq: 0, Reason: "r"})
		},
	}, {
		name: "an inbox's first sequence number repeated",
		history: func(h *history) {
			h.received("pa", u64(0), added(1, 1)).received("pa", u64(0), added(1, 2))
		},
		want: []Violation{{Stream: inboxA, Revision: 1, Rule: RuleInboxSeqIncreasing}},
	}, {
		name: "a sender's new epoch starts its sequence numbers again",
		history: func(h *history) {
			epoch(h, 5, 1)
			epoch(h, 0, 2)
			epoch(h, 1, 2)
		},
	}} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHistory(t).seen("pa", "a.example:2289")
			tt.history(h)
			wantViolations(t, audit(t, &memStore{records: h.records()}, AuditOptions{}), tt.want...)
		})
	}
}

func TestAuditOutboxRepeatSaysWhatCameBefore(t *testing.T) {
	t.Parallel()
	recs := newHistory(t).enqueueN("pa", 3).records()
	recs[2].Revision = 1 // 0, 1, 1
	a := NewAuditor()
	for _, r := range recs {
		a.Check(streams.Decode(r))
	}
	if rep := a.report(); len(rep.Violations) != 1 || !strings.Contains(rep.Violations[0].Detail, "sequence 1 again, after 1") {
		t.Fatalf("violations %v", rep.Violations)
	}
}

func TestCheckpointDiffDescriptions(t *testing.T) {
	t.Parallel()
	recs := newHistory(t).seen("pa", "a.example:2289").seen("pb", "b.example:2289").received("pa", nil, added(1, 1)).records()
	full := given(t, recs...)
	t.Run("a peer missing on either side", func(t *testing.T) {
		fewer := given(t, recs[0], recs[2]) // at the same position, without pb's registration
		if _, diff := equalStates(fewer, full); !strings.Contains(diff, "peer pb is missing from the checkpoint") {
			t.Errorf("diff %q", diff)
		}
		if _, diff := equalStates(full, fewer); !strings.Contains(diff, "peer pb is in the checkpoint but not in the replay") {
			t.Errorf("diff %q", diff)
		}
	})
	t.Run("the first differing peer by ID", func(t *testing.T) {
		// Many peers differ, so an unsorted walk would rarely name pa.
		h := newHistory(t)
		for _, id := range []string{"pa", "pb", "pc", "pd", "pe", "pf", "pg", "ph"} {
			h.seen(id, id[1:]+".example:2289")
		}
		full := given(t, h.records()...)
		other := full.Clone()
		for _, id := range []domain.PeerID{"pa", "pb", "pc", "pd", "pe", "pf", "pg", "ph"} {
			other.peer(id).out.Head = 5
		}
		for range 5 {
			if _, diff := equalStates(other, full); !strings.HasPrefix(diff, "peer pa:") {
				t.Fatalf("diff %q", diff)
			}
		}
	})
	t.Run("a state without position", func(t *testing.T) {
		if _, diff := equalStates(NewState(), full); !strings.Contains(diff, "position none") {
			t.Errorf("diff %q", diff)
		}
	})
	t.Run("the guild lists", func(t *testing.T) {
		other := full.Clone()
		other.guilds = map[uint64]map[guildKey]struct{}{}
		if _, diff := equalStates(other, full); !strings.HasPrefix(diff, "guild lists:") {
			t.Errorf("diff %q", diff)
		}
	})
}

// A checkpoint's bytes depend on the state alone, not on map order.
func TestCheckpointBytesAreStable(t *testing.T) {
	t.Parallel()
	h := newHistory(t)
	for _, p := range []string{"pa", "pb", "pc"} {
		h.seen(p, p+".example:2289")
		for _, inv := range []string{"i1", "i2", "i3", "i4"} {
			h.enqueue(p, invited(uint64(len(inv)), 9, p+inv))
			h.received(p, nil, invited(42, 9, p+inv))
		}
	}
	s := given(t, h.records()...)
	first, err := MarshalCheckpoint(s)
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		again, err := MarshalCheckpoint(s.Clone())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, first) {
			t.Fatalf("two encodings of one state differ:\n%s\n%s", first, again)
		}
	}
	sent := s.SentInvites()
	for i := 1; i < len(sent); i++ {
		if a, b := sent[i-1], sent[i]; a.ServerID > b.ServerID || a.ServerID == b.ServerID && a.InviteID > b.InviteID {
			t.Fatalf("SentInvites not sorted: %v", sent)
		}
	}
}

func TestStateEdges(t *testing.T) {
	t.Parallel()
	t.Run("unreadable records of every stream are errors", func(t *testing.T) {
		for _, stream := range []string{streams.Peers, streams.Outbox("pa"), streams.Inbox("pa")} {
			typ := map[string]string{streams.Peers: streams.TypePeerSeen, streams.Outbox("pa"): streams.TypeEventEnqueued, streams.Inbox("pa"): streams.TypeEventReceived}[stream]
			recs := newHistory(t).raw(stream, typ, []byte("not json")).records()
			if err := NewState().Apply(streams.Decode(recs[0])); err == nil {
				t.Errorf("an unreadable %s record applied without error", typ)
			}
		}
	})
	t.Run("a rename keeps the former ID", func(t *testing.T) {
		s := given(t, newHistory(t).seen("pa", "a.example:2289").renamed("pa", "a.example:2289", "b.example:2289").records()...)
		v, ok := s.Peer("a.example:2289")
		if !ok || v.ServerID != "b.example:2289" || !reflect.DeepEqual(v.FormerServerIDs, []string{"a.example:2289"}) {
			t.Fatalf("Peer = %+v, %v", v, ok)
		}
	})
	t.Run("no peer has an empty server ID", func(t *testing.T) {
		s := given(t, newHistory(t).enqueueN("pa", 1).records()...)
		if _, ok := s.Peer(""); ok {
			t.Fatal("a peer was found by an empty server ID")
		}
	})
	t.Run("only a report that moves delivery back counts as a rewind", func(t *testing.T) {
		s := given(t, newHistory(t).seen("pa", "a.example:2289").enqueueN("pa", 3).
			delivery("pa", domain.EventPushed{Seq: 0, Through: 1}, domain.ReceiverReported{Seq: 1, Has: true}).records()...)
		if v, _ := s.Peer("a.example:2289"); v.ReceiverRewinds != 0 {
			t.Fatalf("ReceiverRewinds = %d after an in-step report", v.ReceiverRewinds)
		}
	})
	t.Run("the inbox's last sender sequence number, by epoch", func(t *testing.T) {
		h := newHistory(t)
		add := func(seq, epoch uint64) {
			d, err := h.codec.EncodeReceived(streams.Received{Event: added(1, 1), Via: eventsv1.EventReceived_VIA_PUSH, SenderSeq: &seq, SenderEpoch: epoch})
			if err != nil {
				t.Fatal(err)
			}
			h.steps = append(h.steps, step{streams.Inbox("pa"), d})
		}
		last := func(s *State) (uint64, uint64, bool) {
			p := s.peers["pa"]
			return p.in.LastSeq, p.in.Epoch, p.in.HasSeq
		}
		add(0, 0)
		s := given(t, h.records()...)
		if seq, ep, has := last(s); !has || seq != 0 || ep != 0 {
			t.Fatalf("after event 0: %d in %d, %v", seq, ep, has)
		}
		h.steps = nil
		add(5, 0)
		add(3, 0)
		add(1, 9)
		recs := h.records()
		for i := range recs {
			recs[i].Position = eventstore.Position{Commit: uint64(10 + i), Prepare: uint64(10 + i)}
		}
		apply(t, s, recs[:2]...)
		if seq, _, _ := last(s); seq != 5 {
			t.Fatalf("after 5 and 3: last %d, want 5", seq)
		}
		apply(t, s, recs[2])
		if seq, ep, _ := last(s); seq != 1 || ep != 9 {
			t.Fatalf("after a new epoch: %d in %d, want 1 in 9", seq, ep)
		}
	})
}

// A time JSON cannot hold (after year 9999) makes the checkpoint fail to
// encode: that is an error, not a checkpoint silently left unwritten.
func TestACheckpointThatCannotBeEncodedIsAnError(t *testing.T) {
	t.Parallel()
	recs := newHistory(t).seen("pa", "a.example:2289").enqueueN("pa", 1).delivery("pa", domain.EventPushed{Seq: 0}).records()
	recs[2].Created = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	path := filepath.Join(t.TempDir(), "projections.checkpoint")
	if err := WriteCheckpoint(path, given(t, recs...)); err == nil {
		t.Fatal("WriteCheckpoint succeeded")
	}
}

// A checkpoint whose registry part names no valid server ID is not read:
// the state is rebuilt instead.
func TestACheckpointWithABadServerIDIsRefused(t *testing.T) {
	t.Parallel()
	for name, peer := range map[string]string{
		"current":     `{"peer_id": "pa", "server_id": "no port", "mode": "push"}`,
		"former":      `{"peer_id": "pa", "server_id": "a.example:1", "former_server_ids": ["no port"], "mode": "push"}`,
		"knows us as": `{"peer_id": "pa", "server_id": "a.example:1", "knows_us_as": "no port", "mode": "push"}`,
	} {
		data := `{"version": 1, "position": null, "state": {"peers": [` + peer + `]}}`
		if _, err := UnmarshalCheckpoint([]byte(data)); err == nil {
			t.Errorf("%s: a checkpoint with %s read", name, peer)
		}
	}
	if _, err := UnmarshalCheckpoint([]byte(`{"version": 1, "position": null, "state": {"own_server_id": "no port"}}`)); err == nil {
		t.Error("a checkpoint with an own server ID of no port read")
	}
}

// The database's identity is the first record of its stream; a checkpoint
// of another database is reported once the replay knows the store's.
func TestTheDatabaseIdentityAndTheAudit(t *testing.T) {
	t.Parallel()
	h := newHistory(t)
	first, _ := h.codec.EncodeDatabaseCreated("d1")
	second, _ := h.codec.EncodeDatabaseCreated("d2")
	h.steps = append(h.steps, step{streams.Database, first}, step{streams.Database, second})
	recs := h.seen("pa", "a.example:2289").records()
	if id := given(t, recs...).DatabaseID(); id != "d1" {
		t.Fatalf("DatabaseID = %q, want the first record's", id)
	}
	for _, tc := range []struct {
		checkpointDB string
		violations   int
	}{{"d1", 0}, {"d9", 1}, {"", 0}} {
		cp := given(t, recs...)
		cp.SetDatabaseID(tc.checkpointDB)
		a := NewAuditor()
		a.CompareCheckpoint("cp", cp)
		for _, r := range recs {
			a.Check(streams.Decode(r))
		}
		if rep := a.Report(); len(rep.Violations) != tc.violations {
			t.Errorf("checkpoint of %q: violations %v", tc.checkpointDB, rep.Violations)
		}
	}
	// A store without one: nothing to compare.
	cp := given(t, recs[2:]...)
	cp.SetDatabaseID("d9")
	a := NewAuditor()
	a.CompareCheckpoint("cp", cp)
	for _, r := range recs[2:] {
		a.Check(streams.Decode(r))
	}
	if rep := a.Report(); !rep.Clean() || rep.TooLarge == nil || rep.Skips == nil {
		t.Errorf("a store without an identity: %+v", rep)
	}
}

// An inbox record that cannot be read still counts in the inbox's length:
// the stream holds it.
func TestAnUnreadableInboxRecordCounts(t *testing.T) {
	t.Parallel()
	recs := newHistory(t).seen("pa", "a.example:2289").raw(streams.Inbox("pa"), streams.TypeEventReceived, []byte("{")).records()
	s := NewState()
	for _, r := range recs {
		_ = s.Apply(streams.Decode(r))
	}
	if v, _ := s.Peer("a.example:2289"); v.EventsReceived != 1 {
		t.Fatalf("EventsReceived = %d, want 1", v.EventsReceived)
	}
}

// Peers lists by server ID, then peer ID, however many there are. Peers
// with streams come from a map: with sixteen of them, its order is the
// sorted one by chance about once in 2*10^13 runs (peers known only to the
// registry come sorted from it).
func TestPeersAreListedByServerID(t *testing.T) {
	t.Parallel()
	h := newHistory(t)
	var want []string
	for i := range 16 {
		id := fmt.Sprintf("p%02d", 15-i)
		h.seen(id, id[1:]+".example:2289").enqueueN(id, 1)
		want = append([]string{id}, want...)
	}
	h.enqueueN("pz", 1) // a peer known only by its streams: no server ID, first
	want = append([]string{"pz"}, want...)
	var got []string
	for _, v := range given(t, h.records()...).Peers() {
		got = append(got, v.PeerID)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Peers in the order %v, want %v", got, want)
	}
}

// Guilds and Invites are sorted, not in the map's order: with sixteen of
// each, an unsorted list is in order by chance about once in 2*10^13 runs.
func TestGuildsAndInvitesAreListedInOrder(t *testing.T) {
	t.Parallel()
	h := newHistory(t).seen("pa", "a.example:2289").seen("pb", "b.example:2289")
	var seq uint64
	for i := range uint64(8) {
		for _, peer := range []string{"pb", "pa"} {
			h.received(peer, u64(seq), added(42, 100-i), invited(42, 5, fmt.Sprintf("inv-%02d", 20-i)))
		}
		seq++
	}
	s := given(t, h.records()...)
	guilds, invites := s.Guilds(42), s.Invites(42)
	if len(guilds) != 16 || len(invites) != 16 {
		t.Fatalf("%d guilds, %d invites, want 16 of each", len(guilds), len(invites))
	}
	if !slices.IsSortedFunc(guilds, func(a, b GuildRef) int {
		return cmp.Or(cmp.Compare(a.ServerID, b.ServerID), cmp.Compare(a.GuildID, b.GuildID))
	}) {
		t.Fatalf("guilds out of order: %+v", guilds)
	}
	if !slices.IsSortedFunc(invites, func(a, b Invite) int {
		return cmp.Or(cmp.Compare(a.ServerID, b.ServerID), cmp.Compare(a.InviteID, b.InviteID))
	}) {
		t.Fatalf("invites out of order: %+v", invites)
	}
}
