//go:build !race

package embedded_test

// raceDetector: see race_test.go.
const raceDetector = false
