package delivery

import (
	"hash/fnv"
	"io"
	"math/rand/v2"
	"strconv"
)

// jitterOf is the jitter in [0, 1) of one retry's delay: a function of the
// engine's random seed and of what is retried (the loop, its attempt and
// whose it is: say, the third push of sequence number 7 to a peer), not of
// which goroutine drew first. Retries still spread across peers and
// servers, and a run that meets the same failures waits the same delays,
// which is what lets a simulation seed replay (README "Simulation").
func (e *Engine) jitterOf(loop string, attempt uint64, of ...string) float64 {
	h := fnv.New64a()
	_, _ = io.WriteString(h, loop)
	for _, s := range of {
		_, _ = io.WriteString(h, "\x00"+s)
	}
	_, _ = io.WriteString(h, "\x00"+strconv.FormatUint(attempt, 10))
	return rand.New(rand.NewPCG(e.jitterSeed, h.Sum64())).Float64()
}
