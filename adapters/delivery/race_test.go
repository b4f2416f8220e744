//go:build race

package delivery

// raceDetector: the race detector slows the embedded store (SQLite, C
// translated to Go) many times over, so the largest tests write less.
const raceDetector = true
