package twofiles

// High reports whether x is above 100.
func High(x int) bool { return x > 100 }
