package main

import (
	"os"
	"os/exec"
)

// ownTmp gives cmd a temporary directory of its own under root (the run's
// work directory) and returns what removes it once cmd has ended. A mutant
// whose tests hang is killed before their t.TempDir cleanups run, and a
// killed go command leaves its build directory behind: without this, both
// stayed in /tmp, hundreds of them after a long run.
func ownTmp(cmd *exec.Cmd, root string) (remove func(), err error) {
	dir, err := os.MkdirTemp(root, "tmp-")
	if err != nil {
		return nil, err
	}
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	// TMPDIR for Unix, TMP for Windows: what os.TempDir reads.
	cmd.Env = append(cmd.Env, "TMPDIR="+dir, "TMP="+dir)
	return func() { os.RemoveAll(dir) }, nil
}
