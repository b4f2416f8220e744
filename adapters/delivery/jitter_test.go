package delivery

import (
	"bytes"
	"log/slog"
	"testing"
)

// A retry's jitter follows what is retried, not the order in which the
// engine's loops asked for it: two engines with the same random source
// give each retry the same jitter when asked in opposite orders, and
// different retries get different jitters.
func TestRetryJitterFollowsWhatIsRetriedNotTheOrderOfAsking(t *testing.T) {
	t.Parallel()
	newEngine := func() *Engine {
		return New(testConfig(), nil, nil, nil, nil, systemClock{}, slog.New(slog.DiscardHandler), bytes.NewReader(make([]byte, 64)))
	}
	a, b := newEngine(), newEngine()
	first := a.jitterOf("push", 1, "p1", "7")
	second := a.jitterOf("pull", 2, "p2")
	if b.jitterOf("pull", 2, "p2") != second || b.jitterOf("push", 1, "p1", "7") != first {
		t.Fatal("the jitter of a retry depends on the order of asking")
	}
	seen := map[float64]bool{}
	for _, j := range []float64{first, second, a.jitterOf("push", 2, "p1", "7"), a.jitterOf("push", 1, "p2", "7"),
		a.jitterOf("push", 1, "p1", "8"), a.jitterOf("probe", 1, "p1")} {
		if j < 0 || j >= 1 || seen[j] {
			t.Fatalf("jitter %v: out of [0, 1) or the same as another retry's", j)
		}
		seen[j] = true
	}
	other := New(testConfig(), nil, nil, nil, nil, systemClock{}, slog.New(slog.DiscardHandler), bytes.NewReader(bytes.Repeat([]byte{1}, 64)))
	if other.jitterOf("push", 1, "p1", "7") == first {
		t.Fatal("two servers' random sources give the same jitter")
	}
}
