package peerclient

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptrace"
	"sync"
	"time"
)

// Timeouts bound one call to a peer, so a peer that accepts connections and
// never answers costs a few seconds per attempt (and reaches queue mode in
// about 15 s with the default retries), while a healthy peer on a slow link
// still gets the time its request needs to travel.
type Timeouts struct {
	// Dial bounds connecting, TLSHandshake the handshake after it.
	Dial         time.Duration
	TLSHandshake time.Duration
	// Answer is how long the peer has to start its answer once the
	// connection is there, plus the time the request takes to send at
	// MinRate bytes per second (the slowest link a healthy peer is assumed
	// to have). Reading the answer's body is bounded by the caller.
	Answer  time.Duration
	MinRate int64
	// WorkAnswer is added for Pull and NotifyNewId, whose receiver has
	// work to do before it answers: read and record a reply of up to
	// 3 MiB, or fetch the new ID's key. Pushes do without it, so a silent
	// peer reaches queue mode quickly.
	WorkAnswer time.Duration
}

// DefaultTimeouts: 3 s to connect, 2 s for TLS, and an answer within 2 s
// plus the request's size at 64 KiB/s (a 1 MiB push gets 18 s; a Pull or
// NotifyNewId 5 s more). A peer that never answers fails a push attempt
// after about 2 s; with one attempt and 5 retries (backoff 0.1 s doubling)
// that is queue mode after 13 to 15 s.
func DefaultTimeouts() Timeouts {
	return Timeouts{
		Dial:         3 * time.Second,
		TLSHandshake: 2 * time.Second,
		Answer:       2 * time.Second,
		MinRate:      64 << 10,
		WorkAnswer:   5 * time.Second,
	}
}

func (t Timeouts) orDefault() Timeouts {
	d := DefaultTimeouts()
	if t.Dial <= 0 {
		t.Dial = d.Dial
	}
	if t.TLSHandshake <= 0 {
		t.TLSHandshake = d.TLSHandshake
	}
	if t.Answer <= 0 {
		t.Answer = d.Answer
	}
	if t.MinRate <= 0 {
		t.MinRate = d.MinRate
	}
	if t.WorkAnswer <= 0 {
		t.WorkAnswer = d.WorkAnswer
	}
	return t
}

// AnswerWithin is how long a peer has, once connected, to start answering
// a request of requestBytes.
func (t Timeouts) AnswerWithin(requestBytes int) time.Duration {
	t = t.orDefault()
	return t.Answer + time.Duration(float64(requestBytes)/float64(t.MinRate)*float64(time.Second))
}

// CallBound is the longest a call of requestBytes can take before it has an
// answer: connect, handshake and AnswerWithin. A caller's own deadline
// should not be shorter, or it would cut healthy slow peers first.
func (t Timeouts) CallBound(requestBytes int) time.Duration {
	t = t.orDefault()
	return t.Dial + t.TLSHandshake + t.AnswerWithin(requestBytes)
}

// ErrNoAnswer is returned when a peer did not start answering in time.
var ErrNoAnswer = errors.New("the peer did not answer in time")

// answerDeadline returns a context that is cancelled with ErrNoAnswer if
// the answer has not started AnswerWithin after a connection was had. The
// clock starts at the connection (dial and handshake have their own
// bounds) and stops at the answer's first byte (a Pull reply may be large
// and is bounded by the caller).
func (t Timeouts) answerDeadline(ctx context.Context, requestBytes int, work bool) (context.Context, func()) {
	within := t.AnswerWithin(requestBytes)
	if work {
		within += t.orDefault().WorkAnswer
	}
	ctx, cancel := context.WithCancelCause(ctx)
	var (
		mu    sync.Mutex
		timer *time.Timer
		done  bool
	)
	stopTimer := func() {
		mu.Lock()
		defer mu.Unlock()
		done = true
		if timer != nil {
			timer.Stop()
		}
	}
	trace := &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) {
			mu.Lock()
			defer mu.Unlock()
			if timer == nil && !done {
				timer = time.AfterFunc(within, func() { cancel(fmt.Errorf("%w (%s)", ErrNoAnswer, within)) })
			}
		},
		GotFirstResponseByte: stopTimer,
	}
	return httptrace.WithClientTrace(ctx, trace), func() {
		stopTimer()
		cancel(nil)
	}
}

// noAnswer names ErrNoAnswer as the reason a call failed, when it was.
func noAnswer(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); errors.Is(cause, ErrNoAnswer) && !errors.Is(err, ErrNoAnswer) {
		return fmt.Errorf("%w: %w", cause, err)
	}
	return err
}
