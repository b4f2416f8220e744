package keyfile

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadOrCreateWritesTheUpstreamLayout(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sub", "key.ed25519")
	key, created, err := LoadOrCreate(path, rand.Reader)
	if err != nil || !created {
		t.Fatalf("LoadOrCreate: created=%v err=%v", created, err)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", info.Mode().Perm())
	}
	raw, _ := os.ReadFile(path)
	if len(raw) != 64 || !bytes.Equal(raw[32:], key.PublicKey()) || !bytes.Equal(raw, key.PrivateKey) {
		t.Fatalf("file is not seed followed by public key")
	}
	again, created, err := LoadOrCreate(path, rand.Reader)
	if err != nil || created || !bytes.Equal(again.PrivateKey, key.PrivateKey) {
		t.Fatalf("second LoadOrCreate replaced the key (created=%v, err=%v)", created, err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
}

func TestLoadRefusesBrokenFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	short := filepath.Join(dir, "short")
	os.WriteFile(short, make([]byte, 63), 0o600)
	if _, err := Load(short); err == nil || !strings.Contains(err.Error(), "63 bytes") {
		t.Fatalf("short file: %v", err)
	}
	mismatched := filepath.Join(dir, "mismatched")
	os.WriteFile(mismatched, make([]byte, 64), 0o600)
	if _, err := Load(mismatched); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("mismatched halves: %v", err)
	}
}

func TestKeyNeverPrints(t *testing.T) {
	t.Parallel()
	key, _, err := LoadOrCreate(filepath.Join(t.TempDir(), "k"), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "key", key)
	out := buf.String() + fmt.Sprint(key) + fmt.Sprintf("%v %s", key, key)
	if strings.Contains(out, fmt.Sprintf("%x", key.PrivateKey[:8])) || !strings.Contains(out, "redacted") {
		t.Fatalf("key material printed: %s", out)
	}
}
