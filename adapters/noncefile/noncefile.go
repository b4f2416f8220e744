// Package noncefile records the nonces of accepted federation tokens in the
// data directory, so that a restarted server refuses them until they expire
// (domain.NonceRecorder).
package noncefile

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/harmony-postbox/postbox/domain"
)

// The file is a ring of fixed records: the nonce's expiry (UNIX seconds,
// big-endian; 0 for a free slot), 8 bytes of a hash of the sender's server
// ID, and the nonce. 32 bytes, so that no record straddles a page: one
// write(2) of a record is then whole after a kill -9 (the kernel copies a
// page at a time, and a fatal signal may cut a write between pages).
const (
	recordSize     = 32
	initialRecords = 4096 // 128 KiB
)

// File is the record. It is safe for concurrent use.
type File struct {
	mu     sync.Mutex
	f      *os.File
	log    *slog.Logger
	now    func() time.Time
	expiry []int64 // each slot's expiry, as on disk
	next   int     // the slot the next record goes to
	rec    [recordSize]byte
}

var _ domain.NonceRecorder = (*File)(nil)

// Open opens, or creates, the record at path and returns the nonces in it
// that have not expired: what domain.Verifier.PersistNonces takes. It
// rewrites the file with those first, and reserves the space of the ring on
// disk, so that recording needs no new space while it does not outgrow it:
// a full disk must not stop federation.
func Open(path string, now func() time.Time, logger *slog.Logger) (*File, map[[domain.NonceSize]byte]time.Time, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, nil, fmt.Errorf("nonce record: %w", err)
	}
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("nonce record: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("nonce record: %w", err)
	}
	t := now().Unix()
	live := make(map[[domain.NonceSize]byte]time.Time)
	var kept []byte
	for off := 0; off+recordSize <= len(data); off += recordSize {
		r := data[off : off+recordSize]
		exp := int64(binary.BigEndian.Uint64(r))
		if exp <= t {
			continue
		}
		var n [domain.NonceSize]byte
		copy(n[:], r[16:])
		live[n] = time.Unix(exp, 0)
		kept = append(kept, r...)
	}
	slots := max(initialRecords, len(data)/recordSize)
	for slots < 2*len(kept)/recordSize {
		slots *= 2
	}
	file := &File{f: f, log: logger, now: now, expiry: make([]int64, slots)}
	buf := make([]byte, max(len(data), slots*recordSize))
	copy(buf, kept)
	for i := range len(kept) / recordSize {
		file.expiry[i] = int64(binary.BigEndian.Uint64(kept[i*recordSize:]))
	}
	file.next = len(kept) / recordSize
	// One write: a kill -9 in the middle of it loses nothing but free
	// slots (see recordSize), and a record it did not reach is still there.
	if _, err := f.WriteAt(buf, 0); err != nil {
		// On a full disk the server must still start: the live records
		// come first and were written over themselves; recording fails
		// (and refuses tokens with a nonce) until there is room.
		logger.Error("nonce record: cannot write it", "path", path, "err", err)
	}
	if err := reserve(f, int64(len(buf))); err != nil {
		logger.Warn("nonce record: cannot reserve its space on disk", "path", path, "err", err)
	}
	return file, live, nil
}

// reserve allocates the file's blocks, where the filesystem supports it.
func reserve(f *os.File, size int64) error {
	err := unix.Fallocate(int(f.Fd()), 0, 0, size)
	if errors.Is(err, unix.EOPNOTSUPP) {
		return nil // the zeros written are allocated already
	}
	return err
}

// RecordNonce writes the nonce into the next free slot, growing the ring
// when the oldest slot is still live.
func (f *File) RecordNonce(server domain.ServerID, nonce []byte, expiry time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if now := f.now().Unix(); f.expiry[f.next] > now {
		f.next = f.freeSlot(now)
	}
	if f.next < 0 {
		if err := f.grow(); err != nil {
			f.log.Error("nonce record: cannot grow; tokens with a nonce are refused until it can", "err", err)
			return fmt.Errorf("nonce record: %w", err)
		}
	}
	h := sha256.Sum256([]byte(server.String()))
	binary.BigEndian.PutUint64(f.rec[:8], uint64(expiry.Unix()))
	copy(f.rec[8:16], h[:8])
	copy(f.rec[16:], nonce)
	if _, err := f.f.WriteAt(f.rec[:], int64(f.next)*recordSize); err != nil {
		f.log.Error("nonce record: write failed; tokens with a nonce are refused until it works again", "err", err)
		return fmt.Errorf("nonce record: %w", err)
	}
	f.expiry[f.next] = expiry.Unix()
	f.next = (f.next + 1) % len(f.expiry)
	return nil
}

// freeSlot returns the first slot from next on whose nonce has expired, or
// -1 if every one is live.
func (f *File) freeSlot(now int64) int {
	for i := range len(f.expiry) {
		j := (f.next + i) % len(f.expiry)
		if f.expiry[j] <= now {
			return j
		}
	}
	return -1
}

// grow doubles the ring: the new slots follow the old ones on disk, and
// the next record goes to the first of them. Slots are found free by their
// expiry, so the ring's order does not matter to Open.
func (f *File) grow() error {
	n := len(f.expiry)
	if err := reserve(f.f, int64(2*n)*recordSize); err != nil {
		return err
	}
	if _, err := f.f.WriteAt(make([]byte, n*recordSize), int64(n)*recordSize); err != nil {
		return err
	}
	f.expiry = append(f.expiry, make([]int64, n)...)
	f.next = n
	return nil
}

// Close closes the file.
func (f *File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.f.Close()
}
