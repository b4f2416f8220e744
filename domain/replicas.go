package domain

import (
	"bytes"
	"crypto/sha256"
	"slices"
	"time"
)

// Several replicas of one server can share one event store. Each peer's
// outbound delivery is then run by one live replica at a time: the replicas
// agree on who is live from the heartbeats they write to the store, and on
// who owns a peer by rendezvous hashing over the live ones, so no record per
// peer is needed while nothing changes. A peer's term grows by one each
// time its owner changes, and is recorded only then.

// ReplicaHeartbeat is what a replica last said of itself.
type ReplicaHeartbeat struct {
	Replica string
	// At is the replica's clock when it wrote the heartbeat. Replicas
	// compare it with their own clocks, so their clocks must agree to well
	// within Lease (what NTP gives).
	At time.Time
	// Lease is how long after At the replica counts as live. It travels in
	// the heartbeat, so that replicas run with different settings still
	// agree on who is live.
	Lease time.Duration
	// Leaving says the replica stopped: it is not live from At on, and its
	// peers go to the others at once.
	Leaving bool
}

// LiveAt reports whether the replica counts as live at now: it has not
// left, and its heartbeat is at most Lease old.
func (h ReplicaHeartbeat) LiveAt(now time.Time) bool {
	return !h.Leaving && !now.After(h.At.Add(h.Lease))
}

// Expiry is when the replica stops counting as live unless it writes
// another heartbeat.
func (h ReplicaHeartbeat) Expiry() time.Time { return h.At.Add(h.Lease) }

// ReplicaSet folds heartbeats into each replica's latest. The zero value is
// empty and ready.
type ReplicaSet struct {
	latest map[string]ReplicaHeartbeat
}

// Apply records h unless the set holds a later heartbeat of that replica:
// heartbeats read out of order never bring an old state back.
func (s *ReplicaSet) Apply(h ReplicaHeartbeat) {
	if prev, ok := s.latest[h.Replica]; ok && h.At.Before(prev.At) {
		return
	}
	if s.latest == nil {
		s.latest = make(map[string]ReplicaHeartbeat)
	}
	s.latest[h.Replica] = h
}

// Latest returns the latest heartbeat of replica.
func (s *ReplicaSet) Latest(replica string) (ReplicaHeartbeat, bool) {
	h, ok := s.latest[replica]
	return h, ok
}

// Live returns the replicas live at now, sorted by name.
func (s *ReplicaSet) Live(now time.Time) []string {
	var live []string
	for name, h := range s.latest {
		if h.LiveAt(now) {
			live = append(live, name)
		}
	}
	slices.Sort(live)
	return live
}

// NextExpiry returns the earliest time after now at which a replica live
// at now stops being live: when the live set next changes if no heartbeat
// arrives. ok is false when no replica is live.
func (s *ReplicaSet) NextExpiry(now time.Time) (next time.Time, ok bool) {
	for _, h := range s.latest {
		if !h.LiveAt(now) {
			continue
		}
		if e := h.Expiry(); !ok || e.Before(next) {
			next, ok = e, true
		}
	}
	return next, ok
}

// PeerOwner returns the replica among live that runs peer's delivery, by
// rendezvous (highest random weight) hashing: every replica computes the
// same answer from the same live set, a replica that leaves hands on only
// its own peers, spread over the others, and one that joins takes about
// 1/n of every other's. ok is false when live is empty.
//
// The weight is SHA-256 over the replica name, a zero byte and the peer, so
// it is the same on every machine and in every build: changing it would
// move peers between replicas of different builds.
func PeerOwner(peer string, live []string) (owner string, ok bool) {
	if len(live) == 0 {
		return "", false
	}
	owner, best := live[0], rendezvousWeight(live[0], peer)
	for _, r := range live[1:] {
		if w := rendezvousWeight(r, peer); bytes.Compare(w[:], best[:]) > 0 {
			owner, best = r, w
		}
	}
	return owner, true
}

func rendezvousWeight(replica, peer string) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(replica))
	h.Write([]byte{0})
	h.Write([]byte(peer))
	var w [sha256.Size]byte
	h.Sum(w[:0])
	return w
}

// OwnerTerm names the replica that runs a peer's delivery and the term it
// runs it under. The zero value is the state before any replica owned the
// peer (a single process runs under term 0).
type OwnerTerm struct {
	Term    uint64
	Replica string
}

// HandOver returns the term under which replica runs the peer from now on:
// the current one if it holds it already, else the next, which must be
// recorded (changed) before replica acts on the peer.
func (t OwnerTerm) HandOver(replica string) (next OwnerTerm, changed bool) {
	if t.Replica == replica {
		return t, false
	}
	return OwnerTerm{Term: t.Term + 1, Replica: replica}, true
}

// Apply folds a recorded term into t: a later term replaces t, an earlier
// or equal one (a record read twice) changes nothing.
func (t OwnerTerm) Apply(rec OwnerTerm) OwnerTerm {
	if rec.Term > t.Term {
		return rec
	}
	return t
}
