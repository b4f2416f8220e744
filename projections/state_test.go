package projections

import (
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

func TestProjectionPeerRegistry(t *testing.T) {
	t.Parallel()
	t.Run("peers are listed by server ID with their keys", func(t *testing.T) {
		recs := newHistory(t).
			seen("p2", "b.example:2289").
			seen("p1", "c.example:2289").
			add(streams.Peers, streams.TypePeerKeyLearned, &eventsv1.PeerKeyLearned{PeerId: "p2", PublicKey: []byte{1, 2, 3}}).
			records()
		s := given(t, recs...)
		peers := s.Peers()
		if len(peers) != 2 || peers[0].ServerID != "b.example:2289" || peers[1].ServerID != "c.example:2289" {
			t.Fatalf("peers = %+v, want b then c", peers)
		}
		if !slices.Equal(peers[0].PublicKey, []byte{1, 2, 3}) || peers[1].PublicKey != nil {
			t.Fatalf("keys = %v, %v", peers[0].PublicKey, peers[1].PublicKey)
		}
		if !peers[0].KnowsOurServerID {
			t.Fatal("a peer knows our server ID until we change it")
		}
	})
	t.Run("many peers are listed in server ID order whatever the order met", func(t *testing.T) {
		h := newHistory(t)
		servers := []string{"e", "b", "f", "a", "d", "c"}
		for i, name := range servers {
			h.seen(fmt.Sprintf("p%d", i), name+".example:2289")
		}
		var got []string
		for _, v := range given(t, h.records()...).Peers() {
			got = append(got, strings.TrimSuffix(v.ServerID, ".example:2289"))
		}
		if want := []string{"a", "b", "c", "d", "e", "f"}; !slices.Equal(got, want) {
			t.Fatalf("peers %v, want %v", got, want)
		}
	})
	t.Run("a rename moves the server ID to the former IDs, oldest first", func(t *testing.T) {
		recs := newHistory(t).
			seen("p1", "a.example:2289").
			enqueueN("p1", 2).
			renamed("p1", "a.example:2289", "b.example:2289").
			renamed("p1", "b.example:2289", "c.example:2289").
			records()
		s := given(t, recs...)
		for _, id := range []string{"c.example:2289", "b.example:2289", "a.example:2289"} {
			v, ok := s.Peer(id)
			if !ok {
				t.Fatalf("Peer(%s) not found", id)
			}
			if v.PeerID != "p1" || v.ServerID != "c.example:2289" || !slices.Equal(v.FormerServerIDs, []string{"a.example:2289", "b.example:2289"}) {
				t.Fatalf("Peer(%s) = %+v", id, v)
			}
			if v.Head != 2 {
				t.Fatalf("the outbox stays with the peer across renames: head %d", v.Head)
			}
		}
		if _, ok := s.Peer("d.example:2289"); ok {
			t.Fatal("found an unknown server ID")
		}
	})
	t.Run("a current server ID wins over another peer's former one", func(t *testing.T) {
		recs := newHistory(t).
			seen("p1", "a.example:2289").
			renamed("p1", "a.example:2289", "b.example:2289").
			seen("p2", "a.example:2289").
			records()
		if v, _ := given(t, recs...).Peer("a.example:2289"); v.PeerID != "p2" {
			t.Fatalf("Peer(a) = %s, want p2", v.PeerID)
		}
	})
	t.Run("our own rename is unknown to peers until they are notified", func(t *testing.T) {
		recs := newHistory(t).
			seen("p1", "a.example:2289").
			seen("p2", "b.example:2289").
			add(streams.Peers, streams.TypeOwnServerIDChanged, &eventsv1.OwnServerIdChanged{OldServerId: "us.example:2289", NewServerId: "we.example:2289"}).
			add(streams.Peers, streams.TypePeerNotifiedOfNewID, &eventsv1.PeerNotifiedOfNewId{PeerId: "p1", NewServerId: "we.example:2289"}).
			seen("p3", "c.example:2289").
			records()
		s := given(t, recs...)
		want := map[string]bool{"p1": true, "p2": false, "p3": true}
		for _, v := range s.Peers() {
			if v.KnowsOurServerID != want[v.PeerID] {
				t.Errorf("%s KnowsOurServerID = %v, want %v", v.PeerID, v.KnowsOurServerID, want[v.PeerID])
			}
		}
		if s.OwnServerID() != "we.example:2289" {
			t.Errorf("own server ID %q", s.OwnServerID())
		}
	})
	t.Run("a notification of a superseded ID does not count", func(t *testing.T) {
		recs := newHistory(t).
			seen("p1", "a.example:2289").
			add(streams.Peers, streams.TypeOwnServerIDChanged, &eventsv1.OwnServerIdChanged{OldServerId: "x:1", NewServerId: "y:1"}).
			add(streams.Peers, streams.TypeOwnServerIDChanged, &eventsv1.OwnServerIdChanged{OldServerId: "y:1", NewServerId: "z:1"}).
			add(streams.Peers, streams.TypePeerNotifiedOfNewID, &eventsv1.PeerNotifiedOfNewId{PeerId: "p1", NewServerId: "y:1"}).
			records()
		if v, _ := given(t, recs...).Peer("a.example:2289"); v.KnowsOurServerID {
			t.Fatal("the peer was told y:1, but we are z:1 now")
		}
	})
	t.Run("the first record of our ID is not a rename", func(t *testing.T) {
		recs := newHistory(t).
			seen("p1", "a.example:2289").
			add(streams.Peers, streams.TypeOwnServerIDChanged, &eventsv1.OwnServerIdChanged{NewServerId: "x:1"}).
			records()
		if v, _ := given(t, recs...).Peer("a.example:2289"); !v.KnowsOurServerID {
			t.Fatal("recording our first ID made a peer forget it")
		}
	})
	t.Run("renaming back to the ID a peer knows", func(t *testing.T) {
		recs := newHistory(t).
			add(streams.Peers, streams.TypeOwnServerIDChanged, &eventsv1.OwnServerIdChanged{NewServerId: "x:1"}).
			seen("p1", "a.example:2289").
			add(streams.Peers, streams.TypeOwnServerIDChanged, &eventsv1.OwnServerIdChanged{OldServerId: "x:1", NewServerId: "y:1"}).
			add(streams.Peers, streams.TypeOwnServerIDChanged, &eventsv1.OwnServerIdChanged{OldServerId: "y:1", NewServerId: "x:1"}).
			records()
		if v, _ := given(t, recs[:3]...).Peer("a.example:2289"); v.KnowsOurServerID {
			t.Fatal("the peer met us as x:1 and was not told y:1")
		}
		if v, _ := given(t, recs...).Peer("a.example:2289"); !v.KnowsOurServerID {
			t.Fatal("we are x:1 again, as the peer knows us")
		}
	})
}

func TestProjectionDeliveryCursors(t *testing.T) {
	t.Parallel()
	h := newHistory(t).
		seen("p1", "a.example:2289").
		enqueueN("p1", 3).
		delivery("p1", domain.EventPushed{Seq: 0, Attempts: 2}).                                // record 5
		delivery("p1", domain.QueueModeEntered{FromSeq: 1, Attempts: 6, LastError: "refused"}). // record 6
		delivery("p1", domain.PullServed{FromSeq: 1, ToSeq: 2, AwaitsAck: true})                // record 7
	recs := h.records()
	s := given(t, recs...)
	v, _ := s.Peer("a.example:2289")
	want := PeerView{
		PeerID: "p1", ServerID: "a.example:2289", Head: 3, Delivered: 1, HandedOver: 3,
		Mode: domain.ModeQueue, Attempts: 6, LastError: "refused",
		LastPush: recs[4].Created, LastPullServed: recs[6].Created, KnowsOurServerID: true,
	}
	if !reflect.DeepEqual(v, want) {
		t.Fatalf("after a push, queue mode and a pull:\n got %+v\nwant %+v", v, want)
	}
	if v.Pending() != 2 {
		t.Fatalf("pending %d, want 2", v.Pending())
	}

	// When the pull is acknowledged, push mode resumes and a later push
	// succeeds: the last error is cleared.
	more := newHistory(t)
	more.steps = h.steps
	more.delivery("p1", domain.PullAcknowledged{UpToSeq: 2}, domain.PushResumed{FromSeq: 3, Reason: domain.ResumeQueueDrained}).
		enqueueN("p1", 1).
		delivery("p1", domain.EventPushed{Seq: 3, Attempts: 1})
	recs = more.records()
	s = given(t, recs...)
	v, _ = s.Peer("a.example:2289")
	if v.Head != 4 || v.Delivered != 4 || v.Pending() != 0 || v.Mode != domain.ModePush || v.Attempts != 1 || v.LastError != "" || !v.LastPush.Equal(recs[len(recs)-1].Created) {
		t.Fatalf("after the ack and a push: %+v", v)
	}
}

func TestProjectionGuildsAndInvites(t *testing.T) {
	t.Parallel()
	const alice = 42 // a local user
	t.Run("guild additions and removals from each sender", func(t *testing.T) {
		recs := newHistory(t).
			seen("pa", "a.example:2289").
			seen("pb", "b.example:2289").
			received("pa", u64(0), added(alice, 7), added(alice, 8), removed(alice, 7)).
			received("pb", nil, added(alice, 7), added(99, 1)).
			received("pa", u64(3), removed(alice, 1234)). // not in the list: nothing to do
			records()
		s := given(t, recs...)
		want := []GuildRef{{GuildID: 8, ServerID: "a.example:2289"}, {GuildID: 7, ServerID: "b.example:2289"}}
		if got := s.Guilds(alice); !reflect.DeepEqual(got, want) {
			t.Fatalf("Guilds = %+v, want %+v", got, want)
		}
		if got := s.Guilds(7); len(got) != 0 {
			t.Fatalf("a user with no guild has %+v", got)
		}
		if v, _ := s.Peer("a.example:2289"); v.EventsReceived != 4 {
			t.Fatalf("EventsReceived = %d, want 4", v.EventsReceived)
		}
	})
	t.Run("each event of a run counts and takes effect", func(t *testing.T) {
		recs := newHistory(t).
			seen("pa", "a.example:2289").
			received("pa", u64(0), added(alice, 7)).
			receivedRun("pa", 1, added(alice, 8), invited(alice, 5, "inv"), removed(alice, 7)).
			records()
		s := given(t, recs...)
		if got, want := s.Guilds(alice), []GuildRef{{GuildID: 8, ServerID: "a.example:2289"}}; !reflect.DeepEqual(got, want) {
			t.Fatalf("Guilds = %+v, want %+v", got, want)
		}
		if got := s.Invites(alice); len(got) != 1 || got[0].InviteID != "inv" {
			t.Fatalf("Invites = %+v", got)
		}
		if v, _ := s.Peer("a.example:2289"); v.EventsReceived != 4 {
			t.Fatalf("EventsReceived = %d, want 4", v.EventsReceived)
		}
	})
	t.Run("entries follow a renamed sender", func(t *testing.T) {
		recs := newHistory(t).
			seen("pa", "a.example:2289").
			received("pa", u64(0), added(alice, 7), invited(alice, 5, "inv")).
			renamed("pa", "a.example:2289", "a2.example:2289").
			received("pa", u64(2), added(alice, 8)).
			records()
		s := given(t, recs...)
		want := []GuildRef{{GuildID: 7, ServerID: "a2.example:2289"}, {GuildID: 8, ServerID: "a2.example:2289"}}
		if got := s.Guilds(alice); !reflect.DeepEqual(got, want) {
			t.Fatalf("Guilds = %+v, want %+v", got, want)
		}
		if got := s.Invites(alice); len(got) != 1 || got[0].ServerID != "a2.example:2289" {
			t.Fatalf("Invites = %+v", got)
		}
	})
	t.Run("invites received are pending until the local user rejects them", func(t *testing.T) {
		h := newHistory(t).
			seen("pa", "a.example:2289").
			seen("pb", "b.example:2289").
			received("pa", u64(0), invited(alice, 5, "i2"), invited(alice, 6, "i1")).
			received("pb", u64(0), invited(alice, 9, "i1"))
		s := given(t, h.records()...)
		want := []Invite{{InviteID: "i1", InviterID: 6, ServerID: "a.example:2289"}, {InviteID: "i2", InviterID: 5, ServerID: "a.example:2289"}, {InviteID: "i1", InviterID: 9, ServerID: "b.example:2289"}}
		if got := s.Invites(alice); !reflect.DeepEqual(got, want) {
			t.Fatalf("Invites = %+v, want %+v", got, want)
		}
		// Alice rejects a's invite i1: this server sends the rejection to a.
		h.enqueue("pa", rejected(77, alice, "i1"))
		s = given(t, h.records()...)
		want = []Invite{{InviteID: "i2", InviterID: 5, ServerID: "a.example:2289"}, {InviteID: "i1", InviterID: 9, ServerID: "b.example:2289"}}
		if got := s.Invites(alice); !reflect.DeepEqual(got, want) {
			t.Fatalf("after the rejection, Invites = %+v, want %+v", got, want)
		}
	})
	t.Run("a rejection from the invitee's server drops the invite this server sent", func(t *testing.T) {
		h := newHistory(t).
			seen("pa", "a.example:2289").
			seen("pb", "b.example:2289").
			enqueue("pa", invited(5, alice, "s1"), invited(6, alice, "s2")).
			enqueue("pb", invited(5, alice, "s1"))
		s := given(t, h.records()...)
		if got := s.SentInvites(); len(got) != 3 {
			t.Fatalf("SentInvites = %+v, want 3", got)
		}
		// The user of a rejects s1; b's s1 is another invite and stays.
		h.received("pa", u64(0), rejected(3, 5, "s1"))
		s = given(t, h.records()...)
		want := []SentInvite{{InviteID: "s2", InviteeID: 6, InviterID: alice, ServerID: "a.example:2289"}, {InviteID: "s1", InviteeID: 5, InviterID: alice, ServerID: "b.example:2289"}}
		if got := s.SentInvites(); !reflect.DeepEqual(got, want) {
			t.Fatalf("SentInvites = %+v, want %+v", got, want)
		}
	})
}

func TestProjectionReplayIsIdempotent(t *testing.T) {
	t.Parallel()
	recs := mixedHistory(t).records()
	once := given(t, recs...)

	// Given every event applied, when they are all applied again, then
	// nothing changes.
	twice := given(t, recs...)
	apply(t, twice, recs...)
	if same, diff := equalStates(once, twice); !same {
		t.Fatalf("replaying again changed the state: %s", diff)
	}
	// Each record delivered twice in a row (an at-least-once feed) gives
	// the same state too. The second copy has the same position and is
	// skipped before any handler runs, so this checks the position rule
	// only; TestProjectionDuplicatesAtNewPositions checks the handlers.
	doubled := NewState()
	for _, r := range recs {
		apply(t, doubled, r, r)
	}
	if same, diff := equalStates(once, doubled); !same {
		t.Fatalf("duplicated events changed the state: %s", diff)
	}
	if !reflect.DeepEqual(once.Peers(), doubled.Peers()) || !reflect.DeepEqual(once.Guilds(42), doubled.Guilds(42)) {
		t.Fatal("the views differ")
	}
	if pos, _ := once.Position(); pos != streams.Decode(recs[len(recs)-1]).Position {
		t.Fatalf("position %v, want the last record's", pos)
	}
}

// An upstream sender sends no sequence numbers, so when the reply to a push
// is lost and the push is retried, the receiver stores the same event again:
// a new inbox record at a new position, which the position rule does not
// skip. Given a history where every event from such a sender arrives twice
// (other streams written between the copies), then every effect is as if
// each had arrived once; only the inbox is longer.
func TestProjectionDuplicatesAtNewPositions(t *testing.T) {
	t.Parallel()
	events := []*syncv1.Event{
		added(42, 7), added(42, 8), invited(42, 9, "i1"), removed(42, 8),
		rejected(1, 6, "s1"), invited(43, 9, "i2"), added(43, 7), rejected(1, 6, "s2"),
	}
	script := func(copies int) *history {
		h := newHistory(t).
			seen("pa", "a.example:2289").
			seen("pu", "upstream.example:2289").
			enqueue("pu", invited(6, 42, "s1"), invited(6, 42, "s2"))
		for i, ev := range events {
			for range copies {
				h.received("pu", nil, ev)
				h.enqueue("pa", added(uint64(100+i), 1)) // another stream between the copies
			}
		}
		return h
	}
	once := given(t, script(1).records()...)
	twice := given(t, script(2).records()...)
	for _, user := range []uint64{42, 43} {
		if got, want := twice.Guilds(user), once.Guilds(user); !reflect.DeepEqual(got, want) {
			t.Errorf("user %d's guilds: %v, want %v", user, got, want)
		}
		if got, want := twice.Invites(user), once.Invites(user); !reflect.DeepEqual(got, want) {
			t.Errorf("user %d's invites: %v, want %v", user, got, want)
		}
	}
	if got, want := twice.SentInvites(), once.SentInvites(); !reflect.DeepEqual(got, want) {
		t.Errorf("sent invites: %v, want %v", got, want)
	}
	// What the effects must be, so the comparison above cannot pass on
	// two equally wrong states.
	if g := once.Guilds(42); len(g) != 1 || g[0].GuildID != 7 {
		t.Errorf("user 42's guilds: %v, want guild 7 only", g)
	}
	if inv := once.Invites(42); len(inv) != 1 || inv[0].InviteID != "i1" {
		t.Errorf("user 42's invites: %v, want i1 only", inv)
	}
	if sent := once.SentInvites(); len(sent) != 0 {
		t.Errorf("sent invites: %v, want none (both rejected)", sent)
	}
	u, ok := twice.Peer("upstream.example:2289")
	if !ok || u.EventsReceived != uint64(2*len(events)) {
		t.Errorf("the upstream sender's inbox: %+v, want %d records", u, 2*len(events))
	}
}

func TestProjectionCheckpointResume(t *testing.T) {
	t.Parallel()
	recs := mixedHistory(t).records()
	full := given(t, recs...)
	for _, cut := range []int{0, 1, len(recs) / 2, len(recs) - 1, len(recs)} {
		// Given a state checkpointed after the first cut records,
		s := given(t, recs[:cut]...)
		path := filepath.Join(t.TempDir(), "projections.checkpoint")
		if err := WriteCheckpoint(path, s); err != nil {
			t.Fatal(err)
		}
		// when it is loaded and fed everything (the head again, as a
		// subscription resumed a little early would),
		resumed, err := ReadCheckpoint(path)
		if err != nil {
			t.Fatal(err)
		}
		apply(t, resumed, recs...)
		// then it equals a full replay.
		if same, diff := equalStates(full, resumed); !same {
			t.Fatalf("cut %d: resumed state differs from a replay: %s", cut, diff)
		}
		if !reflect.DeepEqual(full.Peers(), resumed.Peers()) || !reflect.DeepEqual(full.Invites(42), resumed.Invites(42)) ||
			!reflect.DeepEqual(full.SentInvites(), resumed.SentInvites()) {
			t.Fatalf("cut %d: the views differ", cut)
		}
	}
}

func TestProjectionCheckpointFormat(t *testing.T) {
	t.Parallel()
	t.Run("the empty state has no position", func(t *testing.T) {
		data, err := MarshalCheckpoint(NewState())
		if err != nil {
			t.Fatal(err)
		}
		s, err := UnmarshalCheckpoint(data)
		if err != nil {
			t.Fatal(err)
		}
		// The first event at position zero (as EventStoreDB may give) is
		// still applied.
		recs := newHistory(t).seen("p1", "a:1").records()
		recs[0].Position = eventstore.Position{}
		apply(t, s, recs...)
		if len(s.Peers()) != 1 {
			t.Fatal("the event at position zero was skipped")
		}
	})
	t.Run("another version is refused", func(t *testing.T) {
		if _, err := UnmarshalCheckpoint([]byte(`{"version": 99, "position": null, "state": {}}`)); err == nil {
			t.Fatal("read a checkpoint of version 99")
		}
	})
}

func TestProjectionUnknownAndUnreadableRecords(t *testing.T) {
	t.Parallel()
	recs := newHistory(t).
		seen("p1", "a.example:2289").
		raw(streams.Delivery("p1"), "EventTeleported", []byte(`{"seq":"1"}`)).
		raw(streams.Peers, "PeerBefriended", []byte(`{}`)).
		raw("someone-elses-stream", "Whatever", []byte(`{}`)).
		raw(streams.Delivery("p1"), streams.TypeEventPushed, []byte(`not json`)).
		enqueueN("p1", 1).
		received("p1", u64(0), added(1, 2)).
		raw(streams.Inbox("p1"), streams.TypeEventsReceived, []byte(`not json`)).
		records()
	s := NewState()
	var errs int
	for _, r := range recs {
		if err := s.Apply(streams.Decode(r)); err != nil {
			errs++
		}
	}
	if s.UnknownRecords() != 2 {
		t.Fatalf("UnknownRecords = %d, want 2", s.UnknownRecords())
	}
	if errs != 2 {
		t.Fatalf("%d errors, want 2 for the unreadable records", errs)
	}
	// The unreadable inbox record still counts: as one record, and one
	// event of however many it holds.
	if v, _ := s.Peer("a.example:2289"); v.EventsReceived != 2 || s.peers["p1"].in.Count != 2 {
		t.Fatalf("EventsReceived %d and inbox length %d after an unreadable inbox record, want 2 and 2", v.EventsReceived, s.peers["p1"].in.Count)
	}
	if v, _ := s.Peer("a.example:2289"); v.Head != 1 || s.pos != streams.Decode(recs[len(recs)-1]).Position {
		t.Fatalf("the records after them were not applied: %+v at %v", v, s.pos)
	}
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

// The peers stream is folded by the registry's own fold: a rename of a
// peer never registered is refused (the registry would not start on it)
// and invents no peer; the audit reports the record.
func TestProjectionRefusesARenameOfAPeerNeverRegistered(t *testing.T) {
	t.Parallel()
	h := newHistory(t).seen("pa", "a.example:2289").renamed("px", "b.example:2289", "b2.example:2289")
	recs := h.records()
	s := NewState()
	if err := s.Apply(streams.Decode(recs[0])); err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(streams.Decode(recs[1])); !errors.Is(err, domain.ErrUnregisteredPeer) {
		t.Fatalf("Apply = %v, want ErrUnregisteredPeer", err)
	}
	if peers := s.Peers(); len(peers) != 1 || peers[0].PeerID != "pa" {
		t.Fatalf("peers %+v, want pa alone", peers)
	}
	rep := audit(t, h.store(), AuditOptions{})
	wantViolations(t, rep, Violation{Stream: streams.Peers, Revision: 1, Rule: RuleRecordReadable})
}

// A peer's owner is the replica of its last owner record, and a checkpoint
// keeps it.
func TestPeerOwnerFromOwnerRecords(t *testing.T) {
	t.Parallel()
	h := newHistory(t).seen("pb", "b.example:2289").enqueueN("pb", 2).
		delivery("pb", domain.OwnerTermStarted{Term: 1, Replica: "r1"}, domain.EventPushed{Seq: 0},
			domain.OwnerTermStarted{Term: 2, Replica: "r2", Previous: "r1"})
	s := given(t, h.records()...)
	v, ok := s.Peer("b.example:2289")
	if !ok || v.Owner != "r2" || v.OwnerTerm != 2 || v.Delivered != 1 {
		t.Fatalf("peer %+v; want owner r2 in term 2, one event delivered", v)
	}
	b, err := MarshalCheckpoint(s)
	if err != nil {
		t.Fatal(err)
	}
	back, err := UnmarshalCheckpoint(b)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := back.Peer("b.example:2289"); v.Owner != "r2" || v.OwnerTerm != 2 {
		t.Fatalf("from the checkpoint: peer %+v; want owner r2 in term 2", v)
	}
}
