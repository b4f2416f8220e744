package calc

import "testing"

func TestClamp(t *testing.T) {
	// Only the inside and the far outside: the boundaries are left untested.
	for _, c := range []struct{ x, want int }{{-5, 0}, {5, 5}, {50, 10}} {
		if got := Clamp(c.x, 0, 10); got != c.want {
			t.Errorf("Clamp(%d) = %d", c.x, got)
		}
	}
}

func TestBoth(t *testing.T) {
	if Both(true, false) {
		t.Error("Both(true, false)")
	}
}

// Check is not tested at all.
