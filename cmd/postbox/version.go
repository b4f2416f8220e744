package main

import (
	"runtime/debug"
	"strings"
)

// buildVersion is the main module's version and VCS revision as the Go
// toolchain recorded them: `go build` in a checkout stamps both (e.g.
// "v1.2.0 rev 42866ae1c0de"; "+dirty" for uncommitted changes), `go run`
// and `go test` only "(devel)".
func buildVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "(devel)"
	}
	return versionOf(info)
}

func versionOf(info *debug.BuildInfo) string {
	v := info.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = "+dirty"
			}
		}
	}
	if rev == "" || strings.Contains(v, rev[:min(12, len(rev))]) {
		return v // a pseudo-version names its revision already
	}
	return v + " rev " + rev[:min(12, len(rev))] + modified
}
