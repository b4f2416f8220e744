package main

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const unitPath = "../../deploy/postbox.service"

// TestSystemdUnit: the unit in deploy/ runs `postbox serve` with settings
// serve accepts, and, where systemd-analyze exists, systemd finds nothing
// to say about it.
func TestSystemdUnit(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	unit := string(raw)
	env := map[string]string{}
	var exec0 string
	for _, line := range strings.Split(unit, "\n") {
		if v, ok := strings.CutPrefix(line, "Environment="); ok {
			k, val, _ := strings.Cut(v, "=")
			env[k] = val
		}
		if v, ok := strings.CutPrefix(line, "ExecStart="); ok {
			exec0 = v
		}
	}
	bin, args, _ := strings.Cut(exec0, " ")
	if args != "serve" || env["POSTBOX_DATA_DIR"] == "" {
		t.Fatalf("ExecStart=%q, environment %v: want serve on a data directory", exec0, env)
	}
	env["POSTBOX_SERVER_ID"] = "chat.example.com:2289" // from /etc/postbox/env
	if _, err := parseServeConfig(nil, io.Discard, envOf(env)); err != nil {
		t.Errorf("serve refuses the unit's settings: %v", err)
	}

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil || testing.Short() {
		t.Skip("no systemd-analyze here")
	}
	// systemd checks that ExecStart names an executable: this build.
	dir := t.TempDir()
	local := filepath.Join(dir, "postbox.service")
	if err := os.WriteFile(local, []byte(strings.ReplaceAll(unit, bin, postboxBinary(t))), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(t.Context(), analyze, "verify", local).CombinedOutput()
	// systemd-analyze exits 0 on unknown keys and bad values, and says so,
	// naming the file (what it says of other units on this host is not
	// this unit's business).
	if err != nil || strings.Contains(string(out), local) {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
