package twofiles

import "testing"

func TestLowAndHigh(t *testing.T) {
	if !Low(9) || Low(10) || !High(101) || High(100) {
		t.Fatal("wrong")
	}
}
