package main

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
)

// TestServerIDOnTheCommandLineNeverRenamesBySurprise: after `postbox
// rename`, a restart with the command line written before it (the old
// --server-id) keeps the new ID and warns; a --server-id this server never
// had is refused without --rename, naming what to do, and leaves the
// stored ID alone.
func TestServerIDOnTheCommandLineNeverRenamesBySurprise(t *testing.T) {
	opSetup(t)
	a := newOpNode(t, "A")
	a.start()
	oldA := a.id
	_, port, _ := strings.Cut(oldA, ":")
	newA := "localhost:" + port
	if out, errOut, code := runCLI(t, "rename", "--admin", a.admin, newA); code != 0 {
		t.Fatalf("postbox rename %s: exit %d, %q\n%s", newA, code, out, errOut)
	}
	a.stop()

	serve := func(ctx context.Context, id string, extra ...string) (*exec.Cmd, *bytes.Buffer) {
		args := append([]string{"serve", "--insecure-peers", "--server-id", id, "--listen", a.listen,
			"--admin-listen", a.admin, "--data-dir", a.dataDir}, extra...)
		cmd := exec.CommandContext(ctx, postboxBinary(t), args...)
		cmd.Env = cleanEnv()
		var log bytes.Buffer
		cmd.Stdout, cmd.Stderr = &log, &log
		return cmd, &log
	}

	// The old command line: the current ID stays, with a warning.
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	cmd, log := serve(ctx, oldA)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	opWait(t, 15*time.Second, "A serving again", func() (bool, string) {
		info, err := a.api.GetServerInfo(ctx, connect.NewRequest(&adminv1.GetServerInfoRequest{}))
		if err != nil {
			return false, err.Error()
		}
		if got := info.Msg.GetServerId(); got != newA {
			t.Fatalf("started with its former ID %s, A is %s; want it to stay %s", oldA, got, newA)
		}
		return true, ""
	})
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Wait()
	if !strings.Contains(log.String(), "former ID of this server") || !strings.Contains(log.String(), "level=WARN") {
		t.Errorf("no warning about the former --server-id:\n%s", log.String())
	}

	// A brand-new ID without --rename: refused, exit 2, the way out named.
	brandNew := loopback(opPort(t))
	cmd, log = serve(ctx, brandNew)
	err := cmd.Run()
	if code := cmd.ProcessState.ExitCode(); code != 2 {
		t.Errorf("a new --server-id without --rename: exit %d (%v), want 2\n%s", code, err, log.String())
	}
	for _, want := range []string{brandNew, newA, "--rename", "postbox rename"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("the refusal does not name %q:\n%s", want, log.String())
		}
	}
	a.id = newA
	a.start() // and the stored ID is still the current one
}

// TestDataDirIsPrivate: what serve creates is its user's alone, and a data
// directory made open to others before is closed.
func TestDataDirIsPrivate(t *testing.T) {
	opSetup(t)
	a := newOpNode(t, "A")
	if err := os.MkdirAll(a.dataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(a.dataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	a.start()
	a.stop()
	var seen int
	err := filepath.WalkDir(a.dataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		want := fs.FileMode(0o600)
		if d.IsDir() {
			want = 0o700
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode().Perm(), want)
		}
		seen++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen < 3 {
		t.Errorf("the data directory holds %d entries, want the store, the key and more", seen)
	}
}
