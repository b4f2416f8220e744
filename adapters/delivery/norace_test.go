//go:build !race

package delivery

// raceDetector: see race_test.go.
const raceDetector = false
