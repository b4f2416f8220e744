//go:build race

package embedded_test

// raceDetector: the race detector slows SQLite (C translated to Go) about
// tenfold, so the tests that write large histories write smaller ones.
const raceDetector = true
