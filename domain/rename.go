package domain

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// PeerDirectory is what the rename rules need to know of the peer registry.
type PeerDirectory interface {
	// Resolve finds the peer that id names, by its current or a former
	// server ID: the peer's stable ID and its current server ID.
	Resolve(id ServerID) (peer string, current ServerID, found bool)
}

// PeerRename is an accepted rename of a peer.
type PeerRename struct {
	Peer     string
	Old, New ServerID
	// AlreadyDone: the same rename was announced before (a retry) or names
	// the ID the peer already has; nothing is to be recorded.
	AlreadyDone bool
}

// DecidePeerRename applies PROTOCOL.md §6 to a NotifyNewId from caller (the
// authenticated, old server ID) announcing newID. That newID serves the
// same key is for the caller to check afterwards, since it takes a fetch.
func DecidePeerRename(dir PeerDirectory, caller, newID ServerID) (PeerRename, error) {
	peer, current, ok := dir.Resolve(caller)
	if !ok {
		return PeerRename{}, fmt.Errorf("%w: %s", ErrUnknownPeer, caller)
	}
	if current != caller {
		if current == newID {
			return PeerRename{Peer: peer, Old: caller, New: newID, AlreadyDone: true}, nil
		}
		return PeerRename{}, fmt.Errorf("%w: %s is now %s", ErrPeerRenamed, caller, current)
	}
	if newID == caller {
		return PeerRename{Peer: peer, Old: caller, New: newID, AlreadyDone: true}, nil
	}
	if owner, _, found := dir.Resolve(newID); found && owner != peer {
		return PeerRename{}, fmt.Errorf("%w: %s", ErrIDTaken, newID)
	}
	return PeerRename{Peer: peer, Old: caller, New: newID}, nil
}

// CheckCaller refuses a Pull or Push under a server ID that was renamed:
// the peer must use its new ID. found is false for a server that is not a
// peer at all.
func CheckCaller(dir PeerDirectory, caller ServerID) (peer string, found bool, err error) {
	peer, current, found := dir.Resolve(caller)
	if found && current != caller {
		return "", true, fmt.Errorf("%w: %s is now %s", ErrPeerRenamed, caller, current)
	}
	return peer, found, nil
}

// DecideOwnRename decides an operator's rename of this server to newID
// (postbox rename, or --server-id with --rename at start): the record to
// append, none if newID is the current ID, or ErrIDTaken if a peer has
// newID or had it before a rename.
func DecideOwnRename(peers *Peers, newID ServerID) ([]PeerEvent, error) {
	if own, _ := peers.OwnID(); newID == own {
		return nil, nil
	}
	if _, _, taken := peers.Resolve(newID); taken {
		return nil, fmt.Errorf("%w: %s is a peer's ID", ErrIDTaken, newID)
	}
	return peers.ChangeOwnID(newID), nil
}

// StartupID is what the server ID given at start does to the one stored.
type StartupID int

// What a start does with its server ID.
const (
	// StartFirst: no ID is stored yet; the given one is recorded.
	StartFirst StartupID = iota + 1
	// StartStored: the stored ID stays (it is the one given, or none was
	// given).
	StartStored
	// StartFormer: the given ID is a former ID of this server; the stored
	// one stays (a command line written before a rename must not silently
	// rename it back), with a warning.
	StartFormer
	// StartRename: the given ID renames the server; peers are told.
	StartRename
)

// ErrRenameNotAllowed: the server ID given at start is new to this server,
// and renaming it at start was not asked for.
var ErrRenameNotAllowed = errors.New("the given server ID would rename this server")

// DecideStartupID settles the server ID given at start (given says it was
// given, not defaulted; allowRename is --rename) against the one stored in
// the peers stream: what to do, and the records to append (StartFirst and
// StartRename). A rename to an ID a peer has, or had, is ErrIDTaken; one
// not allowed is ErrRenameNotAllowed.
func DecideStartupID(peers *Peers, id ServerID, given, allowRename bool) (StartupID, []PeerEvent, error) {
	stored, ok := peers.OwnID()
	switch {
	case !ok:
		return StartFirst, peers.ChangeOwnID(id), nil
	case stored == id, !given:
		return StartStored, nil, nil
	case slices.ContainsFunc(peers.OwnIDs(), func(e OwnID) bool { return e.ID == id }):
		return StartFormer, nil, nil
	case !allowRename:
		return 0, nil, ErrRenameNotAllowed
	}
	records, err := DecideOwnRename(peers, id)
	if err != nil {
		return 0, nil, err
	}
	return StartRename, records, nil
}

// NoticesDue lists the peers that must be told this server's current ID:
// those that know it by another (PROTOCOL.md §6).
func NoticesDue(peers *Peers) []PeerEntry {
	var out []PeerEntry
	for _, p := range peers.List() {
		if !peers.KnowsOurID(p.ID) {
			out = append(out, p)
		}
	}
	return out
}

// IdentityFromHistory is this server's identity from the IDs it has had,
// oldest first (at least one): each former one is an accepted audience
// until grace after the rename that left it.
func IdentityFromHistory(ids []OwnID, grace time.Duration) *Identity {
	identity := NewIdentity(ids[0].ID, grace)
	for _, next := range ids[1:] {
		identity.Rename(next.ID, next.Since)
	}
	return identity
}
