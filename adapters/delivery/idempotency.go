package delivery

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// DefaultIdempotencyWindow is how long a send's idempotency key is
// remembered unless told otherwise: longer than any homeserver retries.
const DefaultIdempotencyWindow = 24 * time.Hour

// sendKeys is the engine's index of keyed sends: the ones stored within
// the window (rebuilt at start from the outboxes) and the ones whose append
// is under way, which a retry waits for rather than append again.
type sendKeys struct {
	ready chan struct{} // closed once rebuilt from the outboxes
	err   error         // why the rebuild failed, set before ready is closed

	mu      sync.Mutex
	keys    *domain.SendKeys
	pending map[string]*keyedAppend
}

// keyedAppend is a keyed send being appended; every caller with its key,
// peer and event gets its answer.
type keyedAppend struct {
	peer   streams.PeerID
	digest [32]byte
	done   chan struct{}
	seq    uint64
	err    error
}

func newSendKeys(window time.Duration) *sendKeys {
	if window <= 0 {
		window = DefaultIdempotencyWindow
	}
	return &sendKeys{ready: make(chan struct{}), keys: domain.NewSendKeys(window), pending: map[string]*keyedAppend{}}
}

// sendDigest tells a retry (same stable peer ID and same event) from
// another send made with the same key. The stable ID keeps a retry a retry
// across a rename of the peer.
func sendDigest(id streams.PeerID, event *syncv1.Event) ([32]byte, error) {
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(event)
	if err != nil {
		return [32]byte{}, fmt.Errorf("%w: the event cannot be encoded: %w", domain.ErrInvalidArgument, err)
	}
	h := sha256.New()
	h.Write([]byte(id))
	h.Write([]byte{0})
	h.Write(body)
	var d [32]byte
	h.Sum(d[:0])
	return d, nil
}

// sendKeyed stores event once per key within the window: a retry waits for
// the first append if it is under way, and gets its answer.
func (e *Engine) sendKeyed(ctx context.Context, to domain.ServerID, event *syncv1.Event, key string) (uint64, error) {
	if err := domain.CheckIdempotencyKey(key); err != nil {
		return 0, err
	}
	if event.GetKind() == nil {
		return 0, fmt.Errorf("%w: the event has no kind set", domain.ErrInvalidArgument)
	}
	if err := e.awaitKeys(ctx); err != nil {
		return 0, err
	}
	id, err := e.registry.Register(ctx, to)
	if err != nil {
		return 0, err
	}
	digest, err := sendDigest(id, event)
	if err != nil {
		return 0, err
	}
	k := e.keys
	k.mu.Lock()
	seq, found, err := k.keys.Check(key, string(id), digest, e.clock.Now())
	if err != nil || found {
		k.mu.Unlock()
		return seq, err
	}
	a, ok := k.pending[key]
	if ok && (a.peer != id || a.digest != digest) {
		k.mu.Unlock()
		return 0, fmt.Errorf("%w: idempotency key %q is in use by a send of another event or to another peer, still being stored; use a new key for a new event",
			domain.ErrInvalidArgument, key)
	}
	if !ok {
		data, err := e.encodeSend(event, key, digest)
		if err != nil {
			k.mu.Unlock()
			return 0, err
		}
		a = &keyedAppend{peer: id, digest: digest, done: make(chan struct{})}
		k.pending[key] = a
		if !e.enterWriter() {
			delete(k.pending, key)
			k.mu.Unlock()
			return 0, errStopped
		}
		// The append goes on if the caller leaves: its outcome must be
		// known before the key is answered again, or a retry would append
		// a second copy.
		go func() {
			defer e.wg.Done()
			seq, err := e.enqueueSend(context.WithoutCancel(ctx), e.peer(id), &outboxSend{data: []eventstore.EventData{data}})
			k.mu.Lock()
			defer k.mu.Unlock()
			a.seq, a.err = seq, err
			if err == nil {
				k.keys.Remember(domain.KeyedSend{Key: key, Peer: string(id), Digest: digest, Seq: seq, At: e.clock.Now()})
			}
			delete(k.pending, key)
			close(a.done)
		}()
	}
	k.mu.Unlock()
	select {
	case <-a.done:
		if a.err != nil {
			return 0, fmt.Errorf("append to outbox of %s: %w", to, a.err)
		}
		return a.seq, nil
	case <-ctx.Done():
		return 0, fmt.Errorf("waiting for the append: %w", ctx.Err())
	}
}

// awaitKeys waits until the index of keyed sends is rebuilt.
func (e *Engine) awaitKeys(ctx context.Context) error {
	select {
	case <-e.keys.ready:
		return e.keys.err
	case <-e.stopped:
		return errStopped
	case <-ctx.Done():
		return fmt.Errorf("waiting for the index of idempotency keys: %w", ctx.Err())
	}
}

// rebuildKeys reads each outbox backwards, from its head to the first
// record older than the window, and remembers the keyed sends it holds.
// It costs a read of every outbox record stored within the window; sends
// without a key do not wait for it, keyed ones do.
func (e *Engine) rebuildKeys(ctx context.Context) {
	start := time.Now()
	now := e.clock.Now()
	var found []domain.KeyedSend
	records := 0
	var err error
	for _, peer := range e.registry.Peers() {
		var n int
		if found, n, err = e.keyedSendsOf(ctx, peer.ID, now.Add(-e.keys.keys.Window()), found); err != nil {
			break
		}
		records += n
	}
	k := e.keys
	k.mu.Lock()
	if err != nil {
		k.err = fmt.Errorf("%w: rebuilding the index of idempotency keys: %w", domain.ErrUnavailable, err)
		e.logger.Error("rebuilding the index of idempotency keys failed: keyed sends are refused until a restart", "err", err)
	} else {
		slices.SortFunc(found, func(a, b domain.KeyedSend) int { return a.At.Compare(b.At) })
		for _, s := range found {
			k.keys.Remember(s)
		}
		e.logger.Info("idempotency keys rebuilt", "keys", len(found), "records_read", records,
			"window", k.keys.Window().String(), "took", time.Since(start).Round(time.Millisecond).String())
	}
	k.mu.Unlock()
	close(k.ready)
}

// keyedSendsOf appends to found the keyed sends of the outbox of id stored
// after since, reading back page by page from the head.
func (e *Engine) keyedSendsOf(ctx context.Context, id streams.PeerID, since time.Time, found []domain.KeyedSend) ([]domain.KeyedSend, int, error) {
	const page = 1024
	head, err := e.outboxLen(ctx, id)
	if err != nil {
		return found, 0, err
	}
	read := 0
	for head > 0 {
		from := head - min(head, page)
		recs, err := e.store.ReadStream(ctx, streams.Outbox(id), from, int(head-from))
		if errors.Is(err, eventstore.ErrStreamNotFound) {
			return found, read, nil
		}
		if err != nil {
			return found, read, fmt.Errorf("read %s: %w", streams.Outbox(id), err)
		}
		read += len(recs)
		for i := len(recs) - 1; i >= 0; i-- {
			r := recs[i]
			if r.Created.Before(since) {
				return found, read, nil
			}
			if !mayHoldKey(r.Data) {
				continue
			}
			key, digest, ok, err := streams.DecodeEnqueuedKey(r)
			if err != nil {
				return found, read, err
			}
			if ok {
				found = append(found, domain.KeyedSend{Key: key, Peer: string(id), Digest: digest, Seq: r.Revision, At: r.Created})
			}
		}
		head = from
	}
	return found, read, nil
}

// mayHoldKey skips decoding the records of sends without a key, which are
// most: their protojson has no idempotencyKey field.
func mayHoldKey(data []byte) bool {
	return len(data) == 0 || data[0] != '{' || bytes.Contains(data, []byte(`"idempotencyKey"`))
}
