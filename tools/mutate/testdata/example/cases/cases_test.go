package cases

import "testing"

func TestName(t *testing.T) {
	if got := Name(5); got != "a number" {
		t.Errorf("Name(5) = %q", got)
	}
}
