// Package keyfile stores this server's long-term Ed25519 key the way the
// upstream Rust server does: 64 raw bytes, the seed followed by the public
// key (Go's ed25519.PrivateKey layout), so a key file moves between
// implementations unchanged.
package keyfile

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
)

// PrivateKey is this server's signing key. It prints redacted in logs.
type PrivateKey struct {
	ed25519.PrivateKey
}

// LogValue keeps the key out of logs.
func (PrivateKey) LogValue() slog.Value { return slog.StringValue("[redacted ed25519 key]") }

// String keeps the key out of formatted output.
func (PrivateKey) String() string { return "[redacted ed25519 key]" }

// Public returns the raw 32-byte public key.
func (k PrivateKey) PublicKey() ed25519.PublicKey {
	return k.PrivateKey.Public().(ed25519.PublicKey)
}

// Load reads the key at path.
func Load(path string) (PrivateKey, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return PrivateKey{}, fmt.Errorf("read key file: %w", err)
	}
	return parse(path, raw)
}

func parse(path string, raw []byte) (PrivateKey, error) {
	if len(raw) != ed25519.PrivateKeySize {
		return PrivateKey{}, fmt.Errorf("key file %s: %d bytes, want %d (seed then public key)", path, len(raw), ed25519.PrivateKeySize)
	}
	key := ed25519.NewKeyFromSeed(raw[:ed25519.SeedSize])
	if !bytes.Equal(key[ed25519.SeedSize:], raw[ed25519.SeedSize:]) {
		return PrivateKey{}, fmt.Errorf("key file %s: public half does not match the seed", path)
	}
	return PrivateKey{key}, nil
}

// LoadOrCreate reads the key at path, or generates one from rand and writes
// it (mode 0600) when the file does not exist. created tells which happened.
func LoadOrCreate(path string, rand io.Reader) (key PrivateKey, created bool, err error) {
	key, err = Load(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return key, false, err
	}
	_, priv, err := ed25519.GenerateKey(rand)
	if err != nil {
		return PrivateKey{}, false, fmt.Errorf("generate key: %w", err)
	}
	if err := write(path, priv); err != nil {
		if errors.Is(err, fs.ErrExist) {
			// Another process created it first: use theirs.
			key, err = Load(path)
			return key, false, err
		}
		return PrivateKey{}, false, err
	}
	return PrivateKey{priv}, true, nil
}

// write creates path with the key; it never replaces an existing file, and
// a crash leaves either no key file or a whole one.
func write(path string, key ed25519.PrivateKey) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create key directory: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".key-*")
	if err != nil {
		return fmt.Errorf("create key file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("create key file: %w", err)
	}
	if _, err := tmp.Write(key); err != nil {
		tmp.Close()
		return fmt.Errorf("write key file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync key file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write key file: %w", err)
	}
	// A hard link fails if path exists, unlike rename, so two processes
	// generating at once cannot overwrite each other's key.
	if err := os.Link(tmp.Name(), path); err != nil {
		return fmt.Errorf("install key file: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
