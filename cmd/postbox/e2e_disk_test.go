package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDeliveryResumesAfterAFullDisk: B's data directory is on a small
// tmpfs that fills up. B refuses A's pushes (nothing half written), reports
// NOT_SERVING and postbox_store_disk_full 1, and stays up; once there is
// room, A's retries deliver every event A acknowledged, once and in order,
// without restarting B. Then the same with B restarted on the full disk,
// where it says at once that it cannot store anything.
func TestDeliveryResumesAfterAFullDisk(t *testing.T) {
	e2eSetup(t)
	mnt := e2eMountTmpfs(t, 24<<20)
	a := newE2ENode(t, "A", "", "--push-retries", "2", "--probe-interval", "200ms")
	b := newE2ENode(t, "B", "")
	b.dataDir = filepath.Join(mnt, "data")
	a.start()
	b.start()
	sent := newE2ELedger()
	a.send(b, sent, 0)
	b.waitInboxLen(a, 1, 10*time.Second)
	b.waitServing(15 * time.Second)

	// The disk fills up: A's events for B cannot be stored there.
	filler := e2eFill(t, mnt)
	a.sendMany(b, sent, e2eUsers(1, 20))
	b.waitHealth(false, 15*time.Second)
	if m := b.metrics(); !strings.Contains(m, "\npostbox_store_disk_full 1\n") {
		t.Errorf("B's /metrics on a full disk lacks postbox_store_disk_full 1")
	}
	// The operator is told why B cannot take an event.
	_, errOut, code := runCLI(t, "send", "--admin", b.admin, "--to", a.id, "--event", `{"userAddedToGuild":{"userId":"1","guildId":"7"}}`)
	if code == 0 || !strings.Contains(errOut, "disk full") {
		t.Errorf("postbox send on a full disk: exit %d, %q; want a failure naming the full disk", code, errOut)
	}
	// Room again: delivery resumes in the same process.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	a.sendMany(b, sent, e2eUsers(21, 10))
	b.waitInboxLen(a, sent.len(), 30*time.Second)
	b.waitHealth(true, 10*time.Second)
	if m := b.metrics(); !strings.Contains(m, "\npostbox_store_disk_full 0\n") {
		t.Errorf("B's /metrics with room again lacks postbox_store_disk_full 0")
	}
	if log := b.lastRunLog(); b.runs != 1 || !strings.Contains(log, "writes succeed again after a full disk") {
		t.Errorf("B did not recover in the same process (%d runs):\n%s", b.runs, b.logTail(4000))
	}

	// Full again, and B restarted on the full disk: it starts, says at
	// once that it cannot store anything, and refuses A's retries.
	filler = e2eFill(t, mnt)
	b.kill()
	a.sendMany(b, sent, e2eUsers(31, 10))
	b.start()
	b.waitHealth(false, 5*time.Second)
	e2eWait(t, 15*time.Second, "B to refuse an append for want of space", func() (bool, string) {
		return strings.Contains(b.lastRunLog(), "disk full, nothing was stored"), "not yet"
	})
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	a.sendMany(b, sent, e2eUsers(41, 10))
	b.waitInboxLen(a, sent.len(), 30*time.Second)
	b.waitHealth(true, 10*time.Second)
	b.checkInbox(a, sent)
	if log := b.logTail(1 << 20); strings.Contains(log, "exiting") {
		t.Errorf("B exited on a full disk:\n%s", log)
	}
	e2eAudit(t, a, b)
}

// waitHealth waits until n's health is SERVING (serving) or anything else
// that it answers.
func (n *e2eNode) waitHealth(serving bool, within time.Duration) {
	n.t.Helper()
	e2eWait(n.t, within, fmt.Sprintf("%s health serving=%v", n.name, serving), func() (bool, string) {
		ctx, cancel := context.WithTimeout(n.t.Context(), 2*time.Second)
		defer cancel()
		s, err := n.health(ctx)
		if err != nil {
			return false, err.Error()
		}
		return e2eServing(s) == serving, "status " + s
	})
}

// metrics is n's /metrics page.
func (n *e2eNode) metrics() string {
	n.t.Helper()
	res, err := n.http.Get("http://" + n.admin + "/metrics")
	if err != nil {
		n.t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != http.StatusOK {
		n.t.Fatalf("/metrics: HTTP %d, %v", res.StatusCode, err)
	}
	return string(body)
}

// e2eMountTmpfs mounts a tmpfs of size bytes, unmounted in t.Cleanup; it
// skips the test where that is not possible (not root, no mount(8), a
// container without the capability).
func e2eMountTmpfs(t *testing.T, size int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs", dir).CombinedOutput()
	if err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		// Lazily: a process the test failed to stop may still hold files.
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// e2eFill writes a file into dir until its filesystem has no room left,
// and returns the file's path.
func e2eFill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for n := len(buf); n >= 512; {
		if _, err := f.Write(buf[:n]); err != nil {
			n /= 2
		}
	}
	return path
}

// TestStorageFailureExits: the store's OnFatal in the server ends the
// process with status 74, after an error-level line naming the cause, so
// the supervisor restarts it (run in a child process: it exits).
func TestStorageFailureExits(t *testing.T) {
	if os.Getenv("POSTBOX_TEST_STORAGE_FAILURE") == "1" {
		logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
		exitOnStorageFailure(logger)(errors.New("commit: disk I/O error (1034)"))
		return
	}
	t.Parallel()
	cmd := exec.Command(os.Args[0], "-test.run=^TestStorageFailureExits$")
	cmd.Env = append(os.Environ(), "POSTBOX_TEST_STORAGE_FAILURE=1")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != exitStorageFailed {
		t.Fatalf("got %v, want exit status %d:\n%s", err, exitStorageFailed, out)
	}
	if log := string(out); !strings.Contains(log, "level=ERROR") || !strings.Contains(log, "disk I/O error (1034)") || !strings.Contains(log, "restart") {
		t.Errorf("the log does not say why the process exits:\n%s", log)
	}
}

// TestSenderFullDisk: A's own disk fills while it sends to B. Sends that
// could not be stored are refused, with the reason; every send A
// acknowledged reaches B once and in order, with no gap in A's sequence
// numbers, once A has room again, without a restart.
func TestSenderFullDisk(t *testing.T) {
	e2eSetup(t)
	mnt := e2eMountTmpfs(t, 24<<20)
	a := newE2ENode(t, "A", "")
	a.dataDir = filepath.Join(mnt, "data")
	b := newE2ENode(t, "B", "")
	a.start()
	b.start()
	sent := newE2ELedger()
	a.sendMany(b, sent, e2eUsers(0, 10))
	b.waitInboxLen(a, 10, 10*time.Second)

	// A fills up while sends keep coming.
	stop, done := make(chan struct{}), make(chan error, 1)
	var acked, refused int
	go func() {
		for user := uint64(10); ; user++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			seq, err := a.trySend(t.Context(), b, user)
			if err != nil {
				if !strings.Contains(err.Error(), "disk full") {
					done <- fmt.Errorf("send %d on a full disk: %w, want it refused for the full disk", user, err)
					return
				}
				refused++
				continue
			}
			if err := sent.record(seq, user); err != nil {
				done <- err
				return
			}
			acked++
		}
	}()
	time.Sleep(50 * time.Millisecond)
	filler := e2eFill(t, mnt)
	e2eWait(t, 10*time.Second, "a send refused", func() (bool, string) {
		return strings.Contains(a.lastRunLog(), "disk full"), "none yet"
	})
	time.Sleep(200 * time.Millisecond)
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Logf("while the disk filled: %d sends acknowledged, %d refused", acked, refused)
	if refused == 0 {
		t.Fatal("no send was refused on a full disk")
	}
	a.waitHealth(false, 10*time.Second)

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	a.waitHealth(true, 10*time.Second)
	a.sendMany(b, sent, e2eUsers(100, 10))
	b.waitInboxLen(a, sent.len(), 30*time.Second)
	b.checkInbox(a, sent)
	if a.runs != 1 {
		t.Errorf("A ran %d times", a.runs)
	}
	e2eAudit(t, a, b)
}
