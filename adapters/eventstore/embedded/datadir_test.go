package embedded_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
)

func TestSecondOpenFailsAtOnceNamingTheHolder(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openStore(t, dir)

	start := time.Now()
	_, err := embedded.Open(t.Context(), dir, embedded.Options{})
	if elapsed := time.Since(start); elapsed > time.Second {
		t.Errorf("second Open took %v; it must fail at once", elapsed)
	}
	if !errors.Is(err, embedded.ErrLocked) {
		t.Fatalf("second Open: got %v, want ErrLocked", err)
	}
	host, _ := os.Hostname()
	for _, want := range []string{fmt.Sprintf("pid %d", os.Getpid()), "host " + host, dir} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openStore(t, dir)
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestUnknownFormatIsRefused(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		version string // "" writes no VERSION file
		db      bool   // leave a database file behind
		mention string
	}{
		{name: "newer version", version: "3\n", mention: "format version 3"},
		{name: "not a number", version: "postbox\n", mention: `"postbox"`},
		{name: "database without version", db: true, mention: "no VERSION file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			if tc.version != "" {
				writeFile(t, filepath.Join(dir, "VERSION"), tc.version)
			}
			if tc.db {
				writeFile(t, filepath.Join(dir, "events.db"), "")
			}
			_, err := embedded.Open(t.Context(), dir, embedded.Options{})
			if !errors.Is(err, embedded.ErrUnsupportedFormat) {
				t.Fatalf("Open: got %v, want ErrUnsupportedFormat", err)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("Open error %q does not mention %q", err, tc.mention)
			}
			_, err = embedded.OpenReadOnly(t.Context(), dir, embedded.Options{})
			if !errors.Is(err, embedded.ErrUnsupportedFormat) {
				t.Errorf("OpenReadOnly: got %v, want ErrUnsupportedFormat", err)
			}
			// The refusal must not have taken the lock for good.
			if tc.version == "3\n" {
				writeFile(t, filepath.Join(dir, "VERSION"), fmt.Sprintf("%d\n", embedded.FormatVersion))
				if err := openStore(t, dir).Close(); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func TestOpenWritesFormatVersion(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "data", "nested")
	if err := openStore(t, dir).Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "VERSION"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(string(b)), fmt.Sprint(embedded.FormatVersion); got != want {
		t.Errorf("VERSION holds %q, want %q", got, want)
	}
}

func TestOpenReadOnlyRefusesMissingDirectory(t *testing.T) {
	t.Parallel()
	_, err := embedded.OpenReadOnly(t.Context(), t.TempDir(), embedded.Options{})
	if err == nil {
		t.Fatal("OpenReadOnly of an empty directory succeeded")
	}
}

func TestOpenReadOnlyWhileWriterRuns(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	w := openStore(t, dir)
	t.Cleanup(func() { w.Close() })
	ctx := t.Context()
	first := appendN(t, w, "ro-s", 0, 3)

	r, err := embedded.OpenReadOnly(ctx, dir, embedded.Options{PollInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })

	got, err := r.ReadStream(ctx, "ro-s", 0, 10)
	if err != nil || len(got) != 3 {
		t.Fatalf("read-only ReadStream: %d events, %v", len(got), err)
	}
	if _, err := r.Append(ctx, "ro-s", eventstore.Any(), first[0]); !errors.Is(err, embedded.ErrReadOnly) {
		t.Errorf("Append on a read-only store: got %v, want ErrReadOnly", err)
	}
	if err := r.Delete(ctx, "ro-s", eventstore.Any()); !errors.Is(err, embedded.ErrReadOnly) {
		t.Errorf("Delete on a read-only store: got %v, want ErrReadOnly", err)
	}

	sub, err := r.Subscribe(ctx, eventstore.Filter{StreamPrefix: "ro-"}, eventstore.FromStart())
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for i := range 3 {
		if e := recvEvent(t, sub); e.Revision != uint64(i) {
			t.Fatalf("catch-up event %d has revision %d", i, e.Revision)
		}
	}
	if item := recvItem(t, sub); !item.CaughtUp {
		t.Fatal("want CaughtUp after the history")
	}
	// Live events come by polling.
	appendN(t, w, "ro-s", 3, 2)
	for i := 3; i < 5; i++ {
		if e := recvEvent(t, sub); e.Revision != uint64(i) {
			t.Fatalf("live event has revision %d, want %d", e.Revision, i)
		}
	}
	// The writer's Close does not disturb the reader.
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got, err := r.ReadStream(ctx, "ro-s", 0, 10); err != nil || len(got) != 5 {
		t.Fatalf("read after the writer closed: %d events, %v", len(got), err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
