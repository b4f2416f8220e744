package domain

import (
	"fmt"
	"time"
)

// A homeserver that retries a Send after a timeout cannot tell whether the
// first one was stored. With an idempotency key, the retry gets the first
// answer and stores nothing, for as long as the key is remembered.

// KeyedSend is the first answer to a Send made with an idempotency key.
type KeyedSend struct {
	Key    string
	Peer   string   // the stable ID of the peer it was sent to
	Digest [32]byte // of the event as sent, to tell a retry from a reuse
	Seq    uint64   // its sequence number in the peer's outbox
	At     time.Time
}

// SendKeys remembers keyed sends for a window, oldest first out.
type SendKeys struct {
	window time.Duration
	byKey  map[string]KeyedSend
	order  []string // keys by At, oldest first (Remember is called in order)
}

// NewSendKeys remembers keys for window.
func NewSendKeys(window time.Duration) *SendKeys {
	return &SendKeys{window: window, byKey: map[string]KeyedSend{}}
}

// Window is how long a key is remembered.
func (k *SendKeys) Window() time.Duration { return k.window }

// Len is how many keys are remembered.
func (k *SendKeys) Len() int { return len(k.byKey) }

// Check looks a key up as of now. A retry (same key, peer and event)
// returns the first answer; the same key with another peer or event is
// refused, since answering it would lose that event.
func (k *SendKeys) Check(key, peer string, digest [32]byte, now time.Time) (seq uint64, found bool, err error) {
	k.Expire(now)
	first, ok := k.byKey[key]
	if !ok {
		return 0, false, nil
	}
	if first.Peer != peer || first.Digest != digest {
		return 0, false, fmt.Errorf("%w: idempotency key %q was used at %s for another event or peer (sequence %d); use a new key for a new event",
			ErrInvalidArgument, key, first.At.UTC().Format(time.RFC3339), first.Seq)
	}
	return first.Seq, true, nil
}

// Remember records a keyed send's answer. Sends are remembered in the order
// they were stored; one already remembered is left as it is.
func (k *SendKeys) Remember(s KeyedSend) {
	if _, ok := k.byKey[s.Key]; ok {
		return
	}
	k.byKey[s.Key] = s
	k.order = append(k.order, s.Key)
}

// Expire forgets the keys older than the window as of now.
func (k *SendKeys) Expire(now time.Time) {
	n := 0
	for n < len(k.order) && now.Sub(k.byKey[k.order[n]].At) > k.window {
		delete(k.byKey, k.order[n])
		n++
	}
	// Resliced, not copied: a copy whenever a key expires would cost every
	// send a pass over every key remembered.
	k.order = k.order[n:]
}

// MaxIdempotencyKeyLen bounds an idempotency key.
const MaxIdempotencyKeyLen = 128

// CheckIdempotencyKey accepts 1 to 128 printable ASCII characters: what a
// homeserver makes of a UUID or its own request ID.
func CheckIdempotencyKey(key string) error {
	if key == "" || len(key) > MaxIdempotencyKeyLen {
		return fmt.Errorf("%w: idempotency key: want 1 to %d characters, e.g. a UUID", ErrInvalidArgument, MaxIdempotencyKeyLen)
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x21 || key[i] > 0x7e {
			return fmt.Errorf("%w: idempotency key %q: only printable ASCII without spaces, e.g. a UUID", ErrInvalidArgument, key)
		}
	}
	return nil
}
