package domain

import "fmt"

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
