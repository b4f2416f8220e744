package hang

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// TestWait records its process ID where the tool's test says, so that test
// can see the process is gone once the mutant timed out. Its temporary
// directory, never removed when it hangs, shows where the tool has it made.
func TestWait(t *testing.T) {
	if err := os.WriteFile(filepath.Join(t.TempDir(), "left"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if path := os.Getenv("MUTATE_TEST_PIDFILE"); path != "" {
		if err := os.WriteFile(path, []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	Wait(func() bool { return true })
}
