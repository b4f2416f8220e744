package domain

import "time"

// Clock tells the time. It is injected everywhere so tests control it.
type Clock interface {
	Now() time.Time
}

// Timers is a Clock that also runs work after a delay on the same time,
// for the delivery engine's timers and waits.
type Timers interface {
	Clock
	// AfterFunc calls f in its own goroutine once d has passed, unless
	// the returned timer is stopped first.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a pending AfterFunc; Stop and Reset are time.Timer's.
type Timer interface {
	Stop() bool
	Reset(d time.Duration) bool
}
