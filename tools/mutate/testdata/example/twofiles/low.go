// Package twofiles has code in two files, for the mutation tool's own test
// of -files.
package twofiles

// Low reports whether x is below 10.
func Low(x int) bool { return x < 10 }
