// Package hang has a mutant that makes its test hang, for the mutation
// tool's own test.
package hang

import "time"

// Wait waits until ready says so.
func Wait(ready func() bool) {
	for !ready() {
		<-time.After(time.Millisecond)
	}
}
