// Package calc is a small package for the mutation tool's own test.
package calc

import "errors"

// Clamp keeps x within lo..hi.
func Clamp(x, lo, hi int) int {
	if x < lo {
		return lo
	}
	if x > hi {
		return hi
	}
	return x
}

// Both reports whether a and b hold.
func Both(a, b bool) bool { return a && b }

var errNegative = errors.New("negative")

// Check refuses negative numbers.
func Check(x int) error {
	err := errNegative
	if x < 0 {
		return err
	}
	return nil
}
