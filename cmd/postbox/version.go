package main

import "runtime/debug"

// buildVersion is the main module's version as the Go toolchain recorded it.
func buildVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok || info.Main.Version == "" {
		return "(devel)"
	}
	return info.Main.Version
}
