package embedded_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
)

// TestBackupOfALiveStoreIsAConsistentPrefix: a backup taken through a
// read-only store while another store appends holds every event committed
// before it, a whole prefix of each stream and nothing torn, and opens as
// a data directory; a target that holds files is refused.
func TestBackupOfALiveStoreIsAConsistentPrefix(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := embedded.Open(t.Context(), dir, embedded.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	before := appendN(t, s, "s", 0, 200)

	ro, err := embedded.OpenReadOnly(t.Context(), dir, embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()

	// Appends go on during the backup.
	const more = 2000
	done := make(chan error, 1)
	go func() {
		_, err := tryAppendN(t.Context(), s, "s", 200, more)
		done <- err
	}()
	target := filepath.Join(t.TempDir(), "backup")
	head, err := ro.Backup(t.Context(), target)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	if fi, err := os.Stat(target); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("backup directory: %v, %v; want mode 0700", fi, err)
	}
	if fi, err := os.Stat(filepath.Join(target, "events.db")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("backup database: %v, %v; want mode 0600", fi, err)
	}
	copied, err := embedded.OpenReadOnly(t.Context(), target, embedded.Options{})
	if err != nil {
		t.Fatalf("the backup does not open as a data directory: %v", err)
	}
	defer copied.Close()
	got, err := copied.ReadStream(t.Context(), "s", 0, 200+more+1)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) < len(before) || len(got) > 200+more {
		t.Fatalf("the backup holds %d events, want at least the %d appended before it", len(got), len(before))
	}
	t.Logf("the backup holds %d of %d events", len(got), 200+more)
	orig, err := s.ReadStream(t.Context(), "s", 0, len(got))
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range got {
		if e.Revision != uint64(i) || e.ID != orig[i].ID || !bytes.Equal(e.Data, orig[i].Data) || e.Position != orig[i].Position {
			t.Fatalf("event %d of the backup is %+v, want %+v", i, e, orig[i])
		}
	}
	if last := got[len(got)-1].Position.Commit; head != last {
		t.Errorf("Backup reported head %d, the copy's last event is at %d", head, last)
	}

	// A writable store takes the copy too.
	w, err := embedded.Open(t.Context(), target, embedded.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Open on the backup: %v", err)
	}
	appendN(t, w, "s", uint64(len(got)), 1)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	// Never into a directory that holds something.
	if _, err := s.Backup(t.Context(), target); !errors.Is(err, embedded.ErrBackupTarget) {
		t.Errorf("a backup into a used directory: %v, want ErrBackupTarget", err)
	}
}
