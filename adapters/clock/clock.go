// Package clock is the real clock behind domain.Clock.
package clock

import "time"

// System reads the machine's clock.
type System struct{}

// Now returns the current time.
func (System) Now() time.Time { return time.Now() }
