package twice

import "testing"

// The boundary (zero) is tested for neither loop.
func TestCount(t *testing.T) {
	if got := Count([]int{-1, 2}, []int{3, -4}); got != 2 {
		t.Fatalf("Count = %d, want 2", got)
	}
}
