package streams

import (
	"fmt"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/domain"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
)

// ReplicasPrefix starts the streams replicas of this server append their
// heartbeats to, when several share one event store: one stream per hour
// (ReplicasPeriod), so that streams of past hours can be deleted whole and
// the store keeps about an hour of heartbeats.
const ReplicasPrefix = "replicas-"

// ReplicasPeriod is the span of heartbeat times one replicas stream holds.
const ReplicasPeriod = time.Hour

// ReplicasPeriodOf returns the period holding time t.
func ReplicasPeriodOf(t time.Time) int64 { return t.Unix() / int64(ReplicasPeriod/time.Second) }

// Replicas is the stream of the heartbeats written in period (a UNIX hour).
func Replicas(period int64) string { return fmt.Sprintf("%s%d", ReplicasPrefix, period) }

// Type names of the records replicas write.
const (
	TypeReplicaHeartbeat = "ReplicaHeartbeat"
	// TypeOwnerTermStarted goes into delivery-<peer>, where only replicas
	// write it; the delivery fold reads it as domain.OwnerTermStarted.
	TypeOwnerTermStarted = "OwnerTermStarted"
)

// Heartbeat is one replica heartbeat record.
type Heartbeat struct {
	domain.ReplicaHeartbeat
	Instance       []byte
	ServerID       string
	KeyFingerprint []byte
}

// EncodeHeartbeat encodes a replica heartbeat.
func (c *Codec) EncodeHeartbeat(h Heartbeat) (eventstore.EventData, error) {
	return c.Encode(TypeReplicaHeartbeat, &eventsv1.ReplicaHeartbeat{
		Replica:        h.Replica,
		Instance:       h.Instance,
		ServerId:       h.ServerID,
		KeyFingerprint: h.KeyFingerprint,
		AtUnixMs:       h.At.UnixMilli(),
		LeaseMs:        uint64(h.Lease / time.Millisecond),
		Leaving:        h.Leaving,
	})
}

// DecodeHeartbeat reads a replica heartbeat.
func DecodeHeartbeat(r eventstore.RecordedEvent) (Heartbeat, error) {
	if r.Type != TypeReplicaHeartbeat {
		return Heartbeat{}, fmt.Errorf("%s@%d: replicas record of type %q", r.Stream, r.Revision, r.Type)
	}
	var m eventsv1.ReplicaHeartbeat
	if err := decode(r, &m); err != nil {
		return Heartbeat{}, err
	}
	if m.GetReplica() == "" {
		return Heartbeat{}, fmt.Errorf("%s@%d: heartbeat without a replica name", r.Stream, r.Revision)
	}
	return Heartbeat{
		ReplicaHeartbeat: domain.ReplicaHeartbeat{
			Replica: m.GetReplica(),
			At:      time.UnixMilli(m.GetAtUnixMs()),
			Lease:   time.Duration(min(m.GetLeaseMs(), uint64(time.Duration(1<<63-1)/time.Millisecond))) * time.Millisecond,
			Leaving: m.GetLeaving(),
		},
		Instance:       m.GetInstance(),
		ServerID:       m.GetServerId(),
		KeyFingerprint: m.GetKeyFingerprint(),
	}, nil
}

// EncodeOwnerTerm encodes the record of a peer changing hands.
func (c *Codec) EncodeOwnerTerm(next domain.OwnerTerm, previous string) (eventstore.EventData, error) {
	typ, m := deliveryMessage(domain.OwnerTermStarted{Term: next.Term, Replica: next.Replica, Previous: previous})
	return c.Encode(typ, m)
}

// DecodeOwnerTerm reads the record of a peer changing hands.
func DecodeOwnerTerm(r eventstore.RecordedEvent) (domain.OwnerTerm, error) {
	if r.Type != TypeOwnerTermStarted {
		return domain.OwnerTerm{}, fmt.Errorf("%s@%d: owner record of type %q", r.Stream, r.Revision, r.Type)
	}
	e, err := decodeOwnerTermStarted(r)
	if err != nil {
		return domain.OwnerTerm{}, err
	}
	return e.Owner(), nil
}

func decodeOwnerTermStarted(r eventstore.RecordedEvent) (domain.OwnerTermStarted, error) {
	var m eventsv1.OwnerTermStarted
	if err := decode(r, &m); err != nil {
		return domain.OwnerTermStarted{}, err
	}
	if m.GetTerm() == 0 || m.GetReplica() == "" {
		return domain.OwnerTermStarted{}, fmt.Errorf("%s@%d: owner record without a term or a replica", r.Stream, r.Revision)
	}
	return domain.OwnerTermStarted{Term: m.GetTerm(), Replica: m.GetReplica(), Previous: m.GetPreviousReplica()}, nil
}

// NoncesPrefix starts the streams of accepted token nonces, one per
// expiry minute and shard.
const NoncesPrefix = "nonces-"

// TypeNonceAccepted is the record of an accepted token nonce.
const TypeNonceAccepted = "NonceAccepted"

// Nonces is the stream of the nonces of tokens that expire in slot (a
// UNIX minute), in shard.
func Nonces(slot int64, shard int) string { return fmt.Sprintf("%s%d-%02d", NoncesPrefix, slot, shard) }

// NonceAccepted is one accepted nonce.
type NonceAccepted struct {
	ServerID string
	Nonce    []byte
	Expiry   time.Time
}

// EncodeNonce encodes an accepted nonce.
func (c *Codec) EncodeNonce(n NonceAccepted) (eventstore.EventData, error) {
	return c.Encode(TypeNonceAccepted, &eventsv1.NonceAccepted{ServerId: n.ServerID, Nonce: n.Nonce, ExpiryUnix: n.Expiry.Unix()})
}

// DecodeNonce reads an accepted nonce.
func DecodeNonce(r eventstore.RecordedEvent) (NonceAccepted, error) {
	if r.Type != TypeNonceAccepted {
		return NonceAccepted{}, fmt.Errorf("%s@%d: nonce record of type %q", r.Stream, r.Revision, r.Type)
	}
	var m eventsv1.NonceAccepted
	if err := decode(r, &m); err != nil {
		return NonceAccepted{}, err
	}
	return NonceAccepted{ServerID: m.GetServerId(), Nonce: m.GetNonce(), Expiry: time.Unix(m.GetExpiryUnix(), 0)}, nil
}

// PullingPrefix starts the streams where replicas say they are pulling a
// peer (on taking it over), one per peer.
const PullingPrefix = "pulling-"

// Pulling is the stream of the pulls of peer that replicas announce.
func Pulling(peer PeerID) string { return PullingPrefix + string(peer) }

// TypePullUnderWay is the record of a replica's pull of a peer starting or
// ending.
const TypePullUnderWay = "PullUnderWay"

// PullUnderWay says that Replica pulls the peer until Until at the latest,
// or, if Ended, that its pull is over.
type PullUnderWay struct {
	Replica string
	Until   time.Time
	Ended   bool
}

// EncodePullUnderWay encodes a pull's start or end.
func (c *Codec) EncodePullUnderWay(u PullUnderWay) (eventstore.EventData, error) {
	return c.Encode(TypePullUnderWay, &eventsv1.PullUnderWay{Replica: u.Replica, UntilUnixMs: u.Until.UnixMilli(), Ended: u.Ended})
}

// DecodePullUnderWay reads a pull's start or end.
func DecodePullUnderWay(r eventstore.RecordedEvent) (PullUnderWay, error) {
	if r.Type != TypePullUnderWay {
		return PullUnderWay{}, fmt.Errorf("%s@%d: pull record of type %q", r.Stream, r.Revision, r.Type)
	}
	var m eventsv1.PullUnderWay
	if err := decode(r, &m); err != nil {
		return PullUnderWay{}, err
	}
	return PullUnderWay{Replica: m.GetReplica(), Until: time.UnixMilli(m.GetUntilUnixMs()), Ended: m.GetEnded()}, nil
}
