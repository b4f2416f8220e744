// Package noncestore records the nonces of accepted federation tokens in
// the event store (domain.NonceRecorder), so that replicas sharing one
// store accept each nonce once: a token one replica accepted is refused by
// every other, as well as by itself after a restart.
//
// Nonces go to streams by the minute their tokens expire in and by a shard
// of the nonce ("nonces-<minute>-<shard>"), each appended at its expected
// revision. A replica keeps what it has read of each live stream; an append
// that finds the stream moved on reads what others added, checks the nonce
// against it, and tries again. So accepting a token costs one append (one
// round trip to the store) when no other replica wrote to that shard since,
// and a read and a second append when one did. Streams of minutes whose
// tokens have all expired are deleted, so the store keeps a few minutes of
// nonces.
package noncestore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// Store is what the ledger needs of the event store.
type Store interface {
	Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error)
	ReadStream(ctx context.Context, stream string, from uint64, limit int) ([]eventstore.RecordedEvent, error)
	Delete(ctx context.Context, stream string, expected eventstore.ExpectedRevision) error
}

// ErrReplayed: the nonce was accepted before, here or by another replica.
var ErrReplayed = errors.New("nonce accepted before")

const (
	// shards spreads one minute's nonces over streams, so that replicas
	// (and concurrent calls in one) rarely append to the same one.
	shards = 16
	// slotWidth is the span of expiry times one stream holds.
	slotWidth = time.Minute
	// keepSlots is how many minutes past a slot's end its stream is kept:
	// the replicas' clocks may disagree by that much before one deletes a
	// stream another still appends to (which then refuses the token,
	// failing safe).
	keepSlots = 2
	// attempts bounds the appends for one nonce while others keep landing
	// in its stream first.
	attempts = 8
	readPage = 512
)

// Ledger is the store-backed record. It is safe for concurrent use.
type Ledger struct {
	store   Store
	codec   *streams.Codec
	now     func() time.Time
	log     *slog.Logger
	timeout time.Duration

	mu      sync.Mutex
	streams map[string]*slotStream
	sweptAt int64 // the last slot swept
}

// slotStream is what this replica knows of one nonces stream.
type slotStream struct {
	slot int64
	mu   sync.Mutex // one append at a time: each needs the last revision
	read bool       // whether any record was read or written
	last uint64     // the revision of the last one
	seen map[nonceKey]struct{}
}

type nonceKey struct {
	server string
	nonce  [domain.NonceSize]byte
}

var _ domain.NonceRecorder = (*Ledger)(nil)

// Open returns a ledger on store. Like noncefile.Open it returns the
// nonces to refuse from the start, for domain.Verifier.PersistNonces: none,
// since the ledger asks the store about each nonce as it records it.
// timeout bounds each store call (RecordNonce has no context of its own).
func Open(store Store, codec *streams.Codec, now func() time.Time, timeout time.Duration, logger *slog.Logger) (*Ledger, map[[domain.NonceSize]byte]time.Time) {
	return &Ledger{
		store: store, codec: codec, now: now, log: logger, timeout: timeout,
		streams: make(map[string]*slotStream),
	}, map[[domain.NonceSize]byte]time.Time{}
}

// RecordNonce records nonce from server, valid until expiry, if no replica
// recorded it before; otherwise, or if the store cannot be reached, it
// returns an error and the token is refused.
func (l *Ledger) RecordNonce(server domain.ServerID, nonce []byte, expiry time.Time) error {
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
	defer cancel()
	l.sweep(ctx)

	k := nonceKey{server: server.String()}
	copy(k.nonce[:], nonce)
	slot := expiry.Unix() / int64(slotWidth/time.Second)
	name := streams.Nonces(slot, int(k.nonce[0])%shards)
	s := l.stream(name, slot)
	ev, err := l.codec.EncodeNonce(streams.NonceAccepted{ServerID: k.server, Nonce: k.nonce[:], Expiry: expiry})
	if err != nil {
		return err
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	for range attempts {
		if _, ok := s.seen[k]; ok {
			return fmt.Errorf("nonce from %s: %w", server, ErrReplayed)
		}
		expected := eventstore.NoStream()
		if s.read {
			expected = eventstore.Exact(s.last)
		}
		res, err := l.store.Append(ctx, name, expected, ev)
		if err == nil {
			s.read, s.last = true, res.NextExpectedRevision
			s.seen[k] = struct{}{}
			return nil
		}
		if !errors.Is(err, eventstore.ErrWrongExpectedRevision) {
			l.log.Error("nonce ledger: cannot record a nonce; its token is refused", "stream", name, "err", err)
			return fmt.Errorf("record nonce: %w", err)
		}
		// Another replica wrote first: learn what it wrote.
		if err := l.catchUp(ctx, name, s); err != nil {
			l.log.Error("nonce ledger: cannot read nonces; a token is refused", "stream", name, "err", err)
			return fmt.Errorf("record nonce: %w", err)
		}
	}
	return fmt.Errorf("record nonce: %d appends to %s met newer records", attempts, name)
}

// stream returns what is known of the stream name, creating it.
func (l *Ledger) stream(name string, slot int64) *slotStream {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.streams[name]
	if !ok {
		s = &slotStream{slot: slot, seen: make(map[nonceKey]struct{})}
		l.streams[name] = s
	}
	return s
}

// catchUp reads the records appended to s since it was last read.
func (l *Ledger) catchUp(ctx context.Context, name string, s *slotStream) error {
	for {
		from := uint64(0)
		if s.read {
			from = s.last + 1
		}
		recs, err := l.store.ReadStream(ctx, name, from, readPage)
		if err != nil && !errors.Is(err, eventstore.ErrStreamNotFound) {
			return err
		}
		for _, r := range recs {
			n, err := streams.DecodeNonce(r)
			if err != nil {
				return err
			}
			k := nonceKey{server: n.ServerID}
			copy(k.nonce[:], n.Nonce)
			s.seen[k] = struct{}{}
			s.read, s.last = true, r.Revision
		}
		if len(recs) < readPage {
			return nil
		}
	}
}

// sweep forgets, and deletes from the store, the streams this replica
// wrote or read whose tokens have all expired, at most once a slot. Every
// replica sweeps; a stream deleted already is no error. (A stream that
// only a replica which then died wrote to stays in the store.)
func (l *Ledger) sweep(ctx context.Context) {
	now := l.now().Unix() / int64(slotWidth/time.Second)
	l.mu.Lock()
	if now <= l.sweptAt {
		l.mu.Unlock()
		return
	}
	l.sweptAt = now
	var old []string
	for name, s := range l.streams {
		if s.slot < now-keepSlots {
			old = append(old, name)
			delete(l.streams, name)
		}
	}
	l.mu.Unlock()
	for _, name := range old {
		err := l.store.Delete(ctx, name, eventstore.Any())
		if err != nil && !errors.Is(err, eventstore.ErrStreamDeleted) && !errors.Is(err, eventstore.ErrStreamNotFound) {
			l.log.Warn("nonce ledger: cannot delete an expired nonces stream", "stream", name, "err", err)
		}
	}
}
