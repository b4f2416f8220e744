package domain

import "time"

// Clock tells the time. It is injected everywhere so tests control it.
type Clock interface {
	Now() time.Time
}
