package streams

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/domain"
)

// Snapshots are folds written back into the store, so that a start reads
// the latest one plus the records after it instead of a stream's whole
// history, and so that a stream can be truncated behind one. They are a
// cache of what the records say: one that cannot be trusted is ignored and
// the records are folded instead. Their streams start with "snapshot-",
// which no Postbox stream kind matches, so projections and the audit's
// rules pass over them as another application's streams.
const (
	SnapshotPrefix         = "snapshot-"
	DeliverySnapshotPrefix = SnapshotPrefix + DeliveryPrefix
	TypeSnapshot           = "Snapshot"
	// SnapshotFormat is the format this build writes and reads; a snapshot
	// of another format is ignored (an older one lacks fields the fold has
	// now: format 2 added the owner's term to delivery snapshots, format 3
	// the highest owner term seen to inbox snapshots).
	SnapshotFormat = 3
)

// DeliverySnapshot is the stream of snapshots of peer's delivery stream.
func DeliverySnapshot(peer PeerID) string { return DeliverySnapshotPrefix + string(peer) }

// SnapshotHeader says what a snapshot covers: the records of Stream
// before revision Revision, in the database DatabaseID.
type SnapshotHeader struct {
	Format     int    `json:"format"`
	DatabaseID string `json:"database_id"`
	Stream     string `json:"stream"`
	Revision   uint64 `json:"revision"`
}

// OutboxSnapshot is a delivery stream's fold (domain.Outbox) with its
// header. JSON with explicit names: a snapshot is never the only copy of
// anything the records lost, so its format can change with a version bump.
type OutboxSnapshot struct {
	SnapshotHeader
	Head             uint64   `json:"head"`
	Delivered        uint64   `json:"delivered"`
	Mode             int      `json:"mode"`
	HandedOver       uint64   `json:"handed_over"`
	PulledSinceQueue bool     `json:"pulled_since_queue"`
	Skipped          uint64   `json:"skipped"`
	Epoch            uint64   `json:"epoch"`
	EpochFrom        uint64   `json:"epoch_from"`
	PastEpochs       []uint64 `json:"past_epochs,omitempty"`
	Given            uint64   `json:"given"`
	HasGiven         bool     `json:"has_given"`
	OwnerTerm        uint64   `json:"owner_term,omitempty"`
	OwnerReplica     string   `json:"owner_replica,omitempty"`
}

// NewOutboxSnapshot records o as the fold of stream's records before rev.
func NewOutboxSnapshot(databaseID, stream string, rev uint64, o domain.Outbox) OutboxSnapshot {
	return OutboxSnapshot{
		SnapshotHeader: SnapshotHeader{Format: SnapshotFormat, DatabaseID: databaseID, Stream: stream, Revision: rev},
		Head:           o.Head, Delivered: o.Delivered, Mode: int(o.Mode), HandedOver: o.HandedOver,
		PulledSinceQueue: o.PulledSinceQueue, Skipped: o.Skipped, Epoch: o.Epoch, EpochFrom: o.EpochFrom,
		PastEpochs: o.PastEpochs, Given: o.Given, HasGiven: o.HasGiven,
		OwnerTerm: o.Owner.Term, OwnerReplica: o.Owner.Replica,
	}
}

// Outbox is the fold the snapshot holds.
func (s OutboxSnapshot) Outbox() domain.Outbox {
	return domain.Outbox{
		Head: s.Head, Delivered: s.Delivered, Mode: domain.DeliveryMode(s.Mode), HandedOver: s.HandedOver,
		PulledSinceQueue: s.PulledSinceQueue, Skipped: s.Skipped, Epoch: s.Epoch, EpochFrom: s.EpochFrom,
		PastEpochs: s.PastEpochs, Given: s.Given, HasGiven: s.HasGiven,
		Owner: domain.OwnerTerm{Term: s.OwnerTerm, Replica: s.OwnerReplica},
	}
}

// EncodeSnapshot encodes a snapshot record (any of the snapshot types).
func (c *Codec) EncodeSnapshot(s any) (eventstore.EventData, error) {
	var id eventstore.EventID
	if _, err := io.ReadFull(c.rand, id[:]); err != nil {
		return eventstore.EventData{}, fmt.Errorf("event ID: %w", err)
	}
	id[6] = id[6]&0x0f | 0x40
	id[8] = id[8]&0x3f | 0x80
	data, err := json.Marshal(s)
	if err != nil {
		return eventstore.EventData{}, fmt.Errorf("encode snapshot: %w", err)
	}
	return eventstore.EventData{ID: id, Type: TypeSnapshot, Data: data}, nil
}

// DecodeOutboxSnapshot reads a delivery snapshot record. It checks only
// the encoding; whether the snapshot can be trusted is the reader's call
// (SnapshotHeader.Check).
func DecodeOutboxSnapshot(r eventstore.RecordedEvent) (OutboxSnapshot, error) {
	var s OutboxSnapshot
	if r.Type != TypeSnapshot {
		return s, fmt.Errorf("%s@%d: snapshot record of type %q", r.Stream, r.Revision, r.Type)
	}
	if err := json.Unmarshal(r.Data, &s); err != nil {
		return s, fmt.Errorf("%s@%d: decode snapshot: %w", r.Stream, r.Revision, err)
	}
	return s, nil
}

// Check says why a snapshot read for stream, in database databaseID, whose
// stream holds length records (exists: it has any), cannot be trusted; nil
// if it can.
func (h SnapshotHeader) Check(databaseID, stream string, length uint64, exists bool) error {
	switch {
	case h.Format != SnapshotFormat:
		return fmt.Errorf("snapshot format %d, this build reads %d", h.Format, SnapshotFormat)
	case h.Stream != stream:
		return fmt.Errorf("snapshot of stream %q, not %q", h.Stream, stream)
	case databaseID == "" || h.DatabaseID != databaseID:
		return fmt.Errorf("snapshot of database %q, this is %q", h.DatabaseID, databaseID)
	case !exists:
		return fmt.Errorf("snapshot of %q, which has no records", stream)
	case h.Revision > length:
		return fmt.Errorf("snapshot covers %d records of %q, which holds %d", h.Revision, stream, length)
	}
	return nil
}

// Snapshots of the receiving side, which retention of received events
// (--retain-received) writes before it removes any: each peer's inbox fold,
// and the projections' state.
const (
	InboxSnapshotPrefix = SnapshotPrefix + InboxPrefix
	// ProjectionsSnapshot is the stream of the projections' state, each
	// record the checkpoint format (projections.MarshalCheckpoint), which
	// carries its own version, database and position.
	ProjectionsSnapshot = SnapshotPrefix + "projections"
)

// InboxSnapshot is the stream of snapshots of peer's inbox stream.
func InboxSnapshot(peer PeerID) string { return InboxSnapshotPrefix + string(peer) }

// InboxSnapshotRecord is an inbox stream's fold (domain.Inbox: what drops
// a repeated push) with its header. Its fields mirror domain.Inbox's one
// by one, so that one added to the fold is added here with a format bump.
type InboxSnapshotRecord struct {
	SnapshotHeader
	Count   uint64 `json:"count"`
	LastSeq uint64 `json:"last_seq"`
	HasSeq  bool   `json:"has_seq"`
	LastID  []byte `json:"last_id,omitempty"`
	Epoch   uint64 `json:"epoch"`
	Term    uint64 `json:"term,omitempty"`
}

// NewInboxSnapshot records in as the fold of stream's records before rev.
func NewInboxSnapshot(databaseID, stream string, rev uint64, in domain.Inbox) InboxSnapshotRecord {
	return InboxSnapshotRecord{
		SnapshotHeader: SnapshotHeader{Format: SnapshotFormat, DatabaseID: databaseID, Stream: stream, Revision: rev},
		Count:          in.Count, LastSeq: in.LastSeq, HasSeq: in.HasSeq, LastID: in.LastID, Epoch: in.Epoch, Term: in.Term,
	}
}

// Inbox is the fold the snapshot holds.
func (s InboxSnapshotRecord) Inbox() domain.Inbox {
	return domain.Inbox{Count: s.Count, LastSeq: s.LastSeq, HasSeq: s.HasSeq, LastID: s.LastID, Epoch: s.Epoch, Term: s.Term}
}

// DecodeInboxSnapshot reads an inbox snapshot record; like
// DecodeOutboxSnapshot, it checks only the encoding.
func DecodeInboxSnapshot(r eventstore.RecordedEvent) (InboxSnapshotRecord, error) {
	var s InboxSnapshotRecord
	if r.Type != TypeSnapshot {
		return s, fmt.Errorf("%s@%d: snapshot record of type %q", r.Stream, r.Revision, r.Type)
	}
	if err := json.Unmarshal(r.Data, &s); err != nil {
		return s, fmt.Errorf("%s@%d: decode snapshot: %w", r.Stream, r.Revision, err)
	}
	return s, nil
}

// PeersSnapshot is the stream of snapshots of the peers stream (the
// registry), which retention of delivered events writes before it compacts
// the peers stream.
const PeersSnapshot = SnapshotPrefix + Peers

// PeersSnapshotRecord is the peers stream's fold (domain.Peers, through
// domain.PeersImage) with its header.
type PeersSnapshotRecord struct {
	SnapshotHeader
	Peers   []PeerSnapshotEntry `json:"peers"`
	Servers []ServerSnapshot    `json:"servers"`
	OwnIDs  []OwnIDSnapshot     `json:"own_ids,omitempty"`
}

// PeerSnapshotEntry is one peer (domain.PeerEntry).
type PeerSnapshotEntry struct {
	Peer       string            `json:"peer_id"`
	ServerID   string            `json:"server_id"`
	Former     []string          `json:"former_server_ids,omitempty"`
	Key        []byte            `json:"key,omitempty"`
	FormerKeys map[string][]byte `json:"former_keys,omitempty"`
	KnowsUsAs  string            `json:"knows_us_as,omitempty"`
}

// ServerSnapshot says which peer a server ID (current or former) names.
type ServerSnapshot struct {
	ServerID string `json:"server_id"`
	Peer     string `json:"peer_id"`
}

// OwnIDSnapshot is one of this server's IDs (domain.OwnID).
type OwnIDSnapshot struct {
	ServerID string    `json:"server_id"`
	Since    time.Time `json:"since"`
}

// NewPeersSnapshot records img as the fold of the peers stream's records
// before rev.
func NewPeersSnapshot(databaseID string, rev uint64, img domain.PeersImage) PeersSnapshotRecord {
	s := PeersSnapshotRecord{
		SnapshotHeader: SnapshotHeader{Format: SnapshotFormat, DatabaseID: databaseID, Stream: Peers, Revision: rev},
		Peers:          make([]PeerSnapshotEntry, 0, len(img.Peers)), Servers: make([]ServerSnapshot, 0, len(img.Servers)),
	}
	for _, e := range img.Peers {
		p := PeerSnapshotEntry{Peer: string(e.ID), ServerID: e.ServerID.String(), Key: e.Key}
		if !e.KnowsUsAs.IsZero() {
			p.KnowsUsAs = e.KnowsUsAs.String()
		}
		for _, f := range e.Former {
			p.Former = append(p.Former, f.String())
		}
		for id, key := range e.FormerKeys {
			if p.FormerKeys == nil {
				p.FormerKeys = map[string][]byte{}
			}
			p.FormerKeys[id.String()] = key
		}
		s.Peers = append(s.Peers, p)
	}
	for id, peer := range img.Servers {
		s.Servers = append(s.Servers, ServerSnapshot{ServerID: id.String(), Peer: string(peer)})
	}
	slices.SortFunc(s.Servers, func(a, b ServerSnapshot) int { return strings.Compare(a.ServerID, b.ServerID) })
	for _, o := range img.OwnIDs {
		s.OwnIDs = append(s.OwnIDs, OwnIDSnapshot{ServerID: o.ID.String(), Since: o.Since})
	}
	return s
}

// Image is the fold the snapshot holds; an ID that does not parse makes
// the snapshot unreadable.
func (s PeersSnapshotRecord) Image() (domain.PeersImage, error) {
	img := domain.PeersImage{Servers: make(map[domain.ServerID]domain.PeerID, len(s.Servers))}
	parse := func(what, id string) (domain.ServerID, error) {
		if id == "" {
			return domain.ServerID{}, nil
		}
		parsed, err := domain.ParseServerID(id)
		if err != nil {
			return parsed, fmt.Errorf("peers snapshot: %s: %w", what, err)
		}
		return parsed, nil
	}
	for _, p := range s.Peers {
		e := domain.PeerEntry{ID: domain.PeerID(p.Peer), Key: p.Key}
		var err error
		if e.ServerID, err = parse("server ID", p.ServerID); err != nil {
			return img, err
		}
		if e.KnowsUsAs, err = parse("known as", p.KnowsUsAs); err != nil {
			return img, err
		}
		for _, f := range p.Former {
			id, err := parse("former ID", f)
			if err != nil {
				return img, err
			}
			e.Former = append(e.Former, id)
		}
		for f, key := range p.FormerKeys {
			id, err := parse("former key's ID", f)
			if err != nil {
				return img, err
			}
			if e.FormerKeys == nil {
				e.FormerKeys = map[domain.ServerID]ed25519.PublicKey{}
			}
			e.FormerKeys[id] = key
		}
		img.Peers = append(img.Peers, e)
	}
	for _, sv := range s.Servers {
		id, err := parse("server ID", sv.ServerID)
		if err != nil {
			return img, err
		}
		img.Servers[id] = domain.PeerID(sv.Peer)
	}
	for _, o := range s.OwnIDs {
		id, err := parse("own ID", o.ServerID)
		if err != nil {
			return img, err
		}
		img.OwnIDs = append(img.OwnIDs, domain.OwnID{ID: id, Since: o.Since})
	}
	return img, nil
}

// DecodePeersSnapshot reads a peers snapshot record; like
// DecodeOutboxSnapshot, it checks only the encoding.
func DecodePeersSnapshot(r eventstore.RecordedEvent) (PeersSnapshotRecord, error) {
	var s PeersSnapshotRecord
	if r.Type != TypeSnapshot {
		return s, fmt.Errorf("%s@%d: snapshot record of type %q", r.Stream, r.Revision, r.Type)
	}
	if err := json.Unmarshal(r.Data, &s); err != nil {
		return s, fmt.Errorf("%s@%d: decode snapshot: %w", r.Stream, r.Revision, err)
	}
	return s, nil
}
