package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBackupOfARunningServerRestores: `postbox backup` copies A's store
// while A serves; the copy passes the audit. A goes on delivering, then its
// data directory is replaced by the backup, as the README says to restore
// one: A starts as itself, its peer B's account shows the rollback, and
// every event A sends afterwards reaches B once, in order, after all those
// B had.
func TestBackupOfARunningServerRestores(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("runs postbox processes")
	}
	a, b := newE2ENode(t, "A", ""), newE2ENode(t, "B", "")
	a.start()
	b.start()
	a.sendUsers(b, usersFrom(0, 50))
	b.waitInboxUsers(a, usersFrom(0, 50), 20*time.Second)
	a.waitPeerDelivered(b, 50)

	dir := filepath.Join(t.TempDir(), "backup")
	out, errOut, code := runCLI(t, "backup", "--data-dir", a.dataDir, dir)
	if code != 0 || !strings.Contains(out, "backed up") {
		t.Fatalf("postbox backup of a running server: exit %d\n%s\n%s", code, out, errOut)
	}
	if out, errOut, code := runCLI(t, "audit", "--data-dir", dir); code != 0 {
		t.Fatalf("postbox audit of the backup: exit %d\n%s\n%s", code, out, errOut)
	}
	if _, errOut, code := runCLI(t, "backup", "--data-dir", a.dataDir, dir); code != 2 || !strings.Contains(errOut, "empty directory") {
		t.Errorf("a backup into a used directory: exit %d, %q; want 2, and why", code, errOut)
	}
	if key, err := os.Stat(filepath.Join(dir, "key.ed25519")); err != nil || key.Mode().Perm() != 0o600 {
		t.Errorf("the backup's key: %v, %v; want it, mode 0600", key, err)
	}

	a.sendUsers(b, usersFrom(50, 50))
	b.waitInboxUsers(a, usersFrom(0, 100), 20*time.Second)

	a.kill()
	a.restore(dir)
	a.start() // as itself: the backup holds its key and its ID
	a.sendUsers(b, usersFrom(1000, 65))
	b.waitInboxUsers(a, append(usersFrom(0, 100), usersFrom(1000, 65)...), 30*time.Second)
	a.waitPeerDelivered(b, 115)
	a.checkRollbackReported(b)
	e2eAudit(t, a, b)
}
