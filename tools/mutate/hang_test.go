//go:build unix

package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A mutant that makes the tests hang is counted as timed out, and its test
// binary (a child of go test) is killed with it, not left running.
func TestAHungMutantIsKilledWholly(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	t.Setenv("MUTATE_TEST_PIDFILE", pidFile)
	t.Chdir("testdata/example")
	var out bytes.Buffer
	if err := run(t.Context(), []string{"-jobs", "1", "-timeout", "5s", "-equivalents", "equivalent.txt", "./hang"}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "0 killed, 0 survived, 0 equivalent, 1 timed out") {
		t.Fatalf("report:\n%s", out.String())
	}
	b, err := os.ReadFile(pidFile) // written last by the hung mutant's binary
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(string(b))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("the hung test binary (pid %d) still runs", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Each mutant's tests (and each coverage run) have a temporary directory of
// their own, removed after them: a hung mutant, killed, leaves neither its
// tests' t.TempDir nor the go command's build directory behind.
func TestAHungMutantLeavesNoTemporaryFiles(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	t.Chdir("testdata/example")
	var out bytes.Buffer
	// Compiled each on its own (through go test) and through the schemata.
	for _, schemata := range []string{"-schemata=false", "-schemata=true"} {
		if err := run(t.Context(), []string{"-jobs", "1", "-timeout", "5s", schemata, "-equivalents", "equivalent.txt", "./hang"}, &out); err != nil {
			t.Fatal(err)
		}
	}
	if n := strings.Count(out.String(), "0 killed, 0 survived, 0 equivalent, 1 timed out"); n != 2 {
		t.Fatalf("report:\n%s", out.String())
	}
	left, err := os.ReadDir(tmp)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range left {
		t.Errorf("left in TMPDIR: %s", e.Name())
	}
}
