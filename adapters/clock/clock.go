// Package clock is the real clock behind domain.Clock and domain.Timers.
package clock

import (
	"time"

	"github.com/harmony-postbox/postbox/domain"
)

// System reads the machine's clock.
type System struct{}

// Now returns the current time.
func (System) Now() time.Time { return time.Now() }

// AfterFunc runs f in its own goroutine after d.
func (System) AfterFunc(d time.Duration, f func()) domain.Timer { return time.AfterFunc(d, f) }
