//go:build !unix

package main

import "os/exec"

// ownGroup: without process groups, only the go command is killed; the
// test binary's own -timeout ends it.
func ownGroup(*exec.Cmd) {}
