package domain

import (
	"errors"
	"time"
)

// PushResult is a receiver's answer to a push.
type PushResult struct {
	// Through is the last event of the push the receiver took: the first
	// one's sequence number, unless a Postbox receiver took the following
	// events too.
	Through uint64
	// BatchBytes and BatchEvents are the largest push, in request bytes
	// and in events, the receiver takes; 0 (an upstream receiver): one
	// event per push.
	BatchBytes  uint64
	BatchEvents uint32
	// Answer is a continuity-checking receiver's account (nil for others);
	// when it refused the push, nothing of it was applied.
	Answer *PushAnswer
}

// PullBatch is a Pull reply, served or received: events in order, the
// first at FirstSeq. E is the transport's event message, which the rules
// never read.
type PullBatch[E any] struct {
	Events []E
	// FirstSeq is the first event's sequence number; HasSeq is false when
	// the sender gave none (an upstream server).
	FirstSeq uint64
	HasSeq   bool
	// Epoch is the epoch the sequence numbers count in; LastID the outbox
	// ID of the last event, if the sender gave it (continuity extension).
	Epoch  uint64
	LastID []byte
	// Held is what the replying server holds of the caller's own events
	// (nil: it did not say, an upstream server).
	Held *Held
}

// Held is what a continuity-checking server holds of a peer's events, as
// its Pull replies to that peer say: the peer's epoch they count in (0:
// none at all) and the last one applied there (nil: none).
type Held struct {
	Epoch uint64
	Last  *EventRef
}

// RemoteError is a peer's refusal of a call this server made. Reason is
// the sentinel the peer's answer stands for (nil when this server does not
// know it), so errors.Is(err, ErrTokenReplayed) tells what the peer meant;
// but it is the peer's answer about itself, not this server's: it must
// never reach this server's own callers as if this server had said it (a
// peer that does not know us is no peer unknown here). Cause is the
// transport's error, which says it in full.
type RemoteError struct {
	Reason error
	Cause  error
	// Busy: the peer refused for now, at its budget; RetryAfter is the
	// wait it asked for (0: it did not say).
	Busy       bool
	RetryAfter time.Duration
}

func (e *RemoteError) Error() string {
	if e.Cause != nil {
		return e.Cause.Error()
	}
	if e.Reason != nil {
		return "the peer refused: " + e.Reason.Error()
	}
	return "the peer refused the call"
}

// Unwrap makes errors.Is and errors.As see both the reason and the
// transport's error.
func (e *RemoteError) Unwrap() []error {
	var out []error
	for _, err := range []error{e.Reason, e.Cause} {
		if err != nil {
			out = append(out, err)
		}
	}
	return out
}

// PeerSaid reports whether err is a peer's refusal for reason: never
// this server's own error of that kind.
func PeerSaid(err, reason error) bool {
	var remote *RemoteError
	return errors.As(err, &remote) && errors.Is(remote.Reason, reason)
}

// PeerBusy reports whether err is a peer's refusal for now, at its budget,
// and the wait it asked for (0: it did not say).
func PeerBusy(err error) (time.Duration, bool) {
	var remote *RemoteError
	if !errors.As(err, &remote) || !remote.Busy {
		return 0, false
	}
	return remote.RetryAfter, true
}
