package projections

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/harmony-postbox/postbox/domain"
)

// The checkpoint file holds one JSON document: a format version, the
// position of the last event applied (null before any), and the whole state
// at that position, so a restart resumes the subscription after the position
// instead of replaying every stream:
//
//	{
//	  "version": 1,
//	  "database_id": "0123456789abcdef0123456789abcdef",
//	  "position": {"commit": 1234, "prepare": 1234},
//	  "state": {
//	    "own_server_id": "new.example:2289",
//	    "unknown_records": 0,
//	    "peers": [{
//	      "peer_id": "p0123456789abcdef", "server_id": "b.example:2289",
//	      "former_server_ids": ["a.example:2289"], "public_key": "<base64>",
//	      "head": 10, "delivered": 8, "handed_over": 9, "mode": "queue",
//	      "pulled_since_queue": true, "attempts": 6,
//	      "last_push": "2025-01-02T03:04:05.000000006Z",
//	      "last_pull_served": "2025-01-02T03:04:06Z", "last_error": "refused",
//	      "events_received": 4, "inbox_records": 2, "last_sender_seq": 3, "knows_us_as": "old.example:2289"
//	    }],
//	    "guilds": [{"user_id": 42, "guild_id": 7, "peer_id": "p0123456789abcdef"}],
//	    "invites": [{"user_id": 42, "peer_id": "p0123456789abcdef", "invite_id": "x", "inviter_id": 9}],
//	    "sent_invites": [{"peer_id": "p0123456789abcdef", "invite_id": "y", "invitee_id": 5, "inviter_id": 42}]
//	  }
//	}
//
// Lists are sorted (peers by peer ID; the rest by peer, user and ID), so
// one state always encodes to the same bytes: that is how Audit compares a
// checkpoint with a replay. Fields absent or empty are omitted; a reader
// treats them as zero. A file of another version is not read: the state is
// rebuilt from the start instead, which is always correct, only slower; so
// is a checkpoint of another database (or of none recorded): positions mean
// something only in the database they come from.
const checkpointVersion = 1

type checkpointFile struct {
	Version int `json:"version"`
	// DatabaseID is the identity of the store the position belongs to.
	DatabaseID string    `json:"database_id,omitempty"`
	Position   *position `json:"position"`
	State      snapshot  `json:"state"`
}

type position struct {
	Commit  uint64 `json:"commit"`
	Prepare uint64 `json:"prepare"`
}

type snapshot struct {
	OwnServerID    string           `json:"own_server_id,omitempty"`
	UnknownRecords uint64           `json:"unknown_records,omitempty"`
	Peers          []peerSnapshot   `json:"peers,omitempty"`
	Guilds         []guildSnapshot  `json:"guilds,omitempty"`
	Invites        []inviteSnapshot `json:"invites,omitempty"`
	SentInvites    []sentSnapshot   `json:"sent_invites,omitempty"`
}

type peerSnapshot struct {
	PeerID           string        `json:"peer_id"`
	ServerID         string        `json:"server_id,omitempty"`
	FormerServerIDs  []string      `json:"former_server_ids,omitempty"`
	PublicKey        []byte        `json:"public_key,omitempty"`
	Head             uint64        `json:"head,omitempty"`
	Delivered        uint64        `json:"delivered,omitempty"`
	HandedOver       uint64        `json:"handed_over,omitempty"`
	Skipped          uint64        `json:"skipped,omitempty"`
	LastSkip         *skipSnapshot `json:"last_skip,omitempty"`
	Epoch            uint64        `json:"epoch,omitempty"`
	EpochFrom        uint64        `json:"epoch_from,omitempty"`
	PastEpochs       []uint64      `json:"past_epochs,omitempty"`
	Given            *uint64       `json:"given,omitempty"`
	EpochsStarted    uint32        `json:"epochs_started,omitempty"`
	ReceiverRewinds  uint32        `json:"receiver_rewinds,omitempty"`
	Mode             string        `json:"mode"`
	PulledSinceQueue bool          `json:"pulled_since_queue,omitempty"`
	Attempts         uint32        `json:"attempts,omitempty"`
	LastPush         time.Time     `json:"last_push,omitzero"`
	LastPullServed   time.Time     `json:"last_pull_served,omitzero"`
	LastError        string        `json:"last_error,omitempty"`
	EventsReceived   uint64        `json:"events_received,omitempty"`
	InboxRecords     uint64        `json:"inbox_records,omitempty"` // absent before runs: events_received then`
	LastSenderSeq    *uint64       `json:"last_sender_seq,omitempty"`
	LastSenderEpoch  uint64        `json:"last_sender_epoch,omitempty"`
	KnowsUsAs        string        `json:"knows_us_as,omitempty"`
	Owner            string        `json:"owner,omitempty"`
	OwnerTerm        uint64        `json:"owner_term,omitempty"`
}

type skipSnapshot struct {
	FromSeq    uint64 `json:"from_seq"`
	ThroughSeq uint64 `json:"through_seq"`
	Reason     string `json:"reason"`
}

type guildSnapshot struct {
	UserID  uint64 `json:"user_id"`
	GuildID uint64 `json:"guild_id"`
	PeerID  string `json:"peer_id"`
}

type inviteSnapshot struct {
	UserID    uint64 `json:"user_id"`
	PeerID    string `json:"peer_id"`
	InviteID  string `json:"invite_id"`
	InviterID uint64 `json:"inviter_id"`
}

type sentSnapshot struct {
	PeerID    string `json:"peer_id"`
	InviteID  string `json:"invite_id"`
	InviteeID uint64 `json:"invitee_id"`
	InviterID uint64 `json:"inviter_id"`
}

func (s *State) snapshot() checkpointFile {
	f := checkpointFile{Version: checkpointVersion, DatabaseID: s.databaseID, State: snapshot{OwnServerID: s.OwnServerID(), UnknownRecords: s.unknown}}
	if s.applied {
		f.Position = &position{Commit: s.pos.Commit, Prepare: s.pos.Prepare}
	}
	for _, id := range s.peerIDs() {
		v := s.view(id)
		entry, _ := s.registry.Peer(id)
		var p peerState
		if ps := s.peers[id]; ps != nil {
			p = *ps
		}
		ps := peerSnapshot{
			PeerID: v.PeerID, ServerID: v.ServerID,
			FormerServerIDs: v.FormerServerIDs, PublicKey: v.PublicKey,
			Head: p.out.Head, Delivered: p.out.Delivered, HandedOver: p.out.HandedOver,
			Mode: p.out.Mode.String(), PulledSinceQueue: p.out.PulledSinceQueue,
			Attempts: p.attempts, LastPush: p.lastPush, LastPullServed: p.lastPull, LastError: p.lastError,
			EventsReceived: p.received, InboxRecords: p.in.Count, KnowsUsAs: entry.KnowsUsAs.String(), Skipped: p.out.Skipped,
			Owner: p.out.Owner.Replica, OwnerTerm: p.out.Owner.Term,
		}
		if s := p.lastSkip; s != nil {
			ps.LastSkip = &skipSnapshot{FromSeq: s.FromSeq, ThroughSeq: s.ThroughSeq, Reason: s.Reason}
		}
		ps.LastSenderEpoch = p.in.Epoch
		ps.Epoch, ps.EpochFrom, ps.PastEpochs = p.out.Epoch, p.out.EpochFrom, slices.Clone(p.out.PastEpochs)
		ps.EpochsStarted, ps.ReceiverRewinds = p.epochs, p.rewinds
		if given, has := p.out.LastGiven(); has {
			ps.Given = &given
		}
		if seq, has := p.in.Ack(); has {
			ps.LastSenderSeq = &seq
		}
		f.State.Peers = append(f.State.Peers, ps)
	}
	slices.SortFunc(f.State.Peers, func(a, b peerSnapshot) int { return cmp.Compare(a.PeerID, b.PeerID) })
	for u, g := range s.guilds {
		for k := range g {
			f.State.Guilds = append(f.State.Guilds, guildSnapshot{UserID: u, GuildID: k.guild, PeerID: string(k.peer)})
		}
	}
	slices.SortFunc(f.State.Guilds, func(a, b guildSnapshot) int {
		return cmp.Or(cmp.Compare(a.PeerID, b.PeerID), cmp.Compare(a.UserID, b.UserID), cmp.Compare(a.GuildID, b.GuildID))
	})
	for u, inv := range s.invites {
		for k, inviter := range inv {
			f.State.Invites = append(f.State.Invites, inviteSnapshot{UserID: u, PeerID: string(k.peer), InviteID: k.invite, InviterID: inviter})
		}
	}
	slices.SortFunc(f.State.Invites, func(a, b inviteSnapshot) int {
		return cmp.Or(cmp.Compare(a.PeerID, b.PeerID), cmp.Compare(a.UserID, b.UserID), cmp.Compare(a.InviteID, b.InviteID))
	})
	for k, v := range s.sent {
		f.State.SentInvites = append(f.State.SentInvites, sentSnapshot{PeerID: string(k.peer), InviteID: k.invite, InviteeID: v.invitee, InviterID: v.inviter})
	}
	slices.SortFunc(f.State.SentInvites, func(a, b sentSnapshot) int {
		return cmp.Or(cmp.Compare(a.PeerID, b.PeerID), cmp.Compare(a.InviteID, b.InviteID))
	})
	return f
}

func stateFromSnapshot(f checkpointFile) (*State, error) {
	s := NewState()
	if f.Position != nil {
		s.pos = domain.Position{Commit: f.Position.Commit, Prepare: f.Position.Prepare}
		s.applied = true
	}
	s.unknown, s.databaseID = f.State.UnknownRecords, f.DatabaseID
	for _, ps := range f.State.Peers {
		var mode domain.DeliveryMode
		switch ps.Mode {
		case domain.ModePush.String():
			mode = domain.ModePush
		case domain.ModeQueue.String():
			mode = domain.ModeQueue
		default:
			return nil, fmt.Errorf("peer %s: unknown mode %q", ps.PeerID, ps.Mode)
		}
		if err := s.restorePeer(ps); err != nil {
			return nil, fmt.Errorf("peer %s: %w", ps.PeerID, err)
		}
		p := &peerState{
			out: domain.Outbox{Head: ps.Head, Delivered: ps.Delivered, HandedOver: ps.HandedOver,
				Mode: mode, PulledSinceQueue: ps.PulledSinceQueue, Skipped: ps.Skipped,
				Epoch: ps.Epoch, EpochFrom: ps.EpochFrom, PastEpochs: ps.PastEpochs,
				Owner: domain.OwnerTerm{Term: ps.OwnerTerm, Replica: ps.Owner}},
			in:     domain.Inbox{Count: cmp.Or(ps.InboxRecords, ps.EventsReceived), Epoch: ps.LastSenderEpoch},
			epochs: ps.EpochsStarted, rewinds: ps.ReceiverRewinds, received: ps.EventsReceived,
			attempts: ps.Attempts, lastPush: ps.LastPush.UTC(), lastPull: ps.LastPullServed.UTC(), lastError: ps.LastError,
		}
		if ps.LastSenderSeq != nil {
			p.in.LastSeq, p.in.HasSeq = *ps.LastSenderSeq, true
		}
		if ps.Given != nil {
			p.out.Given, p.out.HasGiven = *ps.Given, true
		}
		if s := ps.LastSkip; s != nil {
			p.lastSkip = &domain.EventsSkipped{FromSeq: s.FromSeq, ThroughSeq: s.ThroughSeq, Reason: s.Reason}
		}
		s.peers[domain.PeerID(ps.PeerID)] = p
	}
	if f.State.OwnServerID != "" {
		own, err := domain.ParseServerID(f.State.OwnServerID)
		if err != nil {
			return nil, fmt.Errorf("own server ID: %w", err)
		}
		// Recorded last, so it moves no peer's KnowsUsAs; a change of this
		// server's ID is never refused.
		_ = s.registry.Apply(domain.OwnServerIDChanged{New: own}, time.Time{})
	}
	for _, g := range f.State.Guilds {
		m := s.guilds[g.UserID]
		if m == nil {
			m = map[guildKey]struct{}{}
			s.guilds[g.UserID] = m
		}
		m[guildKey{g.GuildID, domain.PeerID(g.PeerID)}] = struct{}{}
	}
	for _, inv := range f.State.Invites {
		m := s.invites[inv.UserID]
		if m == nil {
			m = map[inviteKey]uint64{}
			s.invites[inv.UserID] = m
		}
		m[inviteKey{domain.PeerID(inv.PeerID), inv.InviteID}] = inv.InviterID
	}
	for _, si := range f.State.SentInvites {
		s.sent[inviteKey{domain.PeerID(si.PeerID), si.InviteID}] = sentInvite{invitee: si.InviteeID, inviter: si.InviterID}
	}
	return s, nil
}

// MarshalCheckpoint encodes s in the checkpoint format.
func MarshalCheckpoint(s *State) ([]byte, error) {
	return marshalSnapshot(s.snapshot())
}

func marshalSnapshot(f checkpointFile) ([]byte, error) {
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode checkpoint: %w", err)
	}
	return append(b, '\n'), nil
}

// UnmarshalCheckpoint decodes a state in the checkpoint format.
func UnmarshalCheckpoint(data []byte) (*State, error) {
	var f checkpointFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("decode checkpoint: %w", err)
	}
	if f.Version != checkpointVersion {
		return nil, fmt.Errorf("%w: checkpoint version %d, this build reads %d", ErrCheckpointVersion, f.Version, checkpointVersion)
	}
	s, err := stateFromSnapshot(f)
	if err != nil {
		return nil, fmt.Errorf("decode checkpoint: %w", err)
	}
	return s, nil
}

// ErrCheckpointVersion: the checkpoint was written in another format.
var ErrCheckpointVersion = errors.New("unsupported checkpoint version")

// Snapshot is a state's checkpoint, taken at once; encoding it can wait
// (a follower takes it under its lock and encodes it outside).
type Snapshot struct{ f checkpointFile }

// Snapshot takes the state's checkpoint.
func (s *State) Snapshot() Snapshot { return Snapshot{s.snapshot()} }

// Marshal encodes the snapshot in the checkpoint format.
func (s Snapshot) Marshal() ([]byte, error) { return marshalSnapshot(s.f) }

// restorePeer rebuilds a peer's registry entry from its checkpoint: its
// registration under its first ID, its renames, its key. What the
// projections do not show (the keys of former IDs, when this server took
// each of its IDs) is not in a checkpoint.
func (s *State) restorePeer(ps peerSnapshot) error {
	if ps.ServerID == "" {
		return nil // known only from its per-peer streams
	}
	ids := append(slices.Clone(ps.FormerServerIDs), ps.ServerID)
	parsed := make([]domain.ServerID, len(ids))
	for i, raw := range ids {
		id, err := domain.ParseServerID(raw)
		if err != nil {
			return err
		}
		parsed[i] = id
	}
	var ours domain.ServerID
	if ps.KnowsUsAs != "" {
		var err error
		if ours, err = domain.ParseServerID(ps.KnowsUsAs); err != nil {
			return err
		}
	}
	peer := domain.PeerID(ps.PeerID)
	events := []domain.PeerEvent{domain.PeerRegistered{Peer: peer, ServerID: parsed[0], OurServerID: ours}}
	for i := 1; i < len(parsed); i++ {
		events = append(events, domain.PeerRenamed{Peer: peer, Old: parsed[i-1], New: parsed[i]})
	}
	if ps.PublicKey != nil {
		events = append(events, domain.PeerKeyLearned{Peer: peer, Key: ps.PublicKey})
	}
	for _, e := range events {
		// About the peer registered first: never refused.
		_ = s.registry.Apply(e, time.Time{})
	}
	return nil
}

// Equal compares two states as their checkpoints show them (the database
// identity aside), and describes the first difference found.
func Equal(a, b *State) (same bool, diff string) { return equalStates(a, b) }

// equalStates compares two states through their canonical encoding and
// describes the first difference found, for Audit's report.
func equalStates(a, b *State) (bool, string) {
	fa, fb := a.snapshot(), b.snapshot()
	// Not compared: a live state learns the ID before it replays the
	// record holding it. Audit compares it at the end.
	fa.DatabaseID, fb.DatabaseID = "", ""
	ja, _ := marshalSnapshot(fa)
	jb, _ := marshalSnapshot(fb)
	if bytes.Equal(ja, jb) {
		return true, ""
	}
	return false, describeDiff(fa, fb)
}

func describeDiff(a, b checkpointFile) string {
	posStr := func(p *position) string {
		if p == nil {
			return "none"
		}
		return fmt.Sprintf("%d/%d", p.Commit, p.Prepare)
	}
	if posStr(a.Position) != posStr(b.Position) {
		return fmt.Sprintf("position %s, replay %s", posStr(a.Position), posStr(b.Position))
	}
	peers := map[string][2]*peerSnapshot{}
	for i := range a.State.Peers {
		p := &a.State.Peers[i]
		e := peers[p.PeerID]
		e[0] = p
		peers[p.PeerID] = e
	}
	for i := range b.State.Peers {
		p := &b.State.Peers[i]
		e := peers[p.PeerID]
		e[1] = p
		peers[p.PeerID] = e
	}
	ids := make([]string, 0, len(peers))
	for id := range peers {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		e := peers[id]
		switch {
		case e[0] == nil:
			return fmt.Sprintf("peer %s is missing from the checkpoint", id)
		case e[1] == nil:
			return fmt.Sprintf("peer %s is in the checkpoint but not in the replay", id)
		}
		ja, _ := json.Marshal(e[0])
		jb, _ := json.Marshal(e[1])
		if !bytes.Equal(ja, jb) {
			return fmt.Sprintf("peer %s: checkpoint %s, replay %s", id, ja, jb)
		}
	}
	for _, part := range []struct {
		name string
		a, b any
	}{
		{"own server ID", a.State.OwnServerID, b.State.OwnServerID},
		{"unknown records", a.State.UnknownRecords, b.State.UnknownRecords},
		{"guild lists", a.State.Guilds, b.State.Guilds},
		{"pending invites", a.State.Invites, b.State.Invites},
		{"sent invites", a.State.SentInvites, b.State.SentInvites},
	} {
		ja, _ := json.Marshal(part.a)
		jb, _ := json.Marshal(part.b)
		if !bytes.Equal(ja, jb) {
			return fmt.Sprintf("%s: checkpoint %s, replay %s", part.name, ja, jb)
		}
	}
	return "the states differ"
}
