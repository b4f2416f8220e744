package embedded

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// ErrBackupTarget refuses a backup into a directory that holds files.
var ErrBackupTarget = errors.New("backup target is not an empty directory")

// Backup writes a consistent copy of the store into dir (created 0700 if
// missing; it must be empty), as a data directory that Open takes: the
// database as of one moment, and its format version. It works on a store
// opened for writing or read-only, in this process or while another one
// writes: SQLite's VACUUM INTO reads the database in one read transaction
// (a WAL snapshot), so appends go on meanwhile, and those committed after
// it began are not in the copy. It returns the position of the last event
// copied.
func (s *Store) Backup(ctx context.Context, dir string) (uint64, error) {
	if err := emptyDir(dir); err != nil {
		return 0, err
	}
	tmp := filepath.Join(dir, dbFile+".partial")
	if err := s.vacuumInto(ctx, tmp); err != nil {
		_ = os.Remove(tmp)
		return 0, fmt.Errorf("back up %s: %w", s.dir, s.closedErr(err))
	}
	err := syncFile(tmp)
	if err == nil {
		err = os.Chmod(tmp, 0o600)
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, dbFile))
	}
	if err == nil {
		// The copy has the layout of the source, which a read-only store
		// of an older directory leaves as it was.
		err = writeVersion(dir, s.version)
	}
	if err != nil {
		return 0, fmt.Errorf("back up %s into %s: %w", s.dir, dir, err)
	}
	// Read the copy as a data directory: it must open, and say how far it
	// goes.
	copied, err := OpenReadOnly(ctx, dir, Options{})
	if err != nil {
		return 0, fmt.Errorf("check the backup in %s: %w", dir, err)
	}
	head := copied.head.Load()
	if err := copied.Close(); err != nil {
		return 0, err
	}
	return head, nil
}

// vacuumInto copies the database into path on one of the store's reader
// connections: the copy is one statement, in one read transaction. The
// connection opened the file read-only (mode=ro), so the source cannot be
// written whatever runs on it; query_only, which also refuses writing the
// copy, is lifted for the statement.
func (s *Store) vacuumInto(ctx context.Context, path string) error {
	conn, err := s.rdb.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "PRAGMA query_only = 0"); err != nil {
		return err
	}
	_, err = conn.ExecContext(ctx, "VACUUM INTO ?", path)
	// Back to how every reader connection is, before the pool has it again.
	if _, rerr := conn.ExecContext(context.WithoutCancel(ctx), "PRAGMA query_only = 1"); rerr != nil {
		_ = conn.Raw(func(any) error { return driver.ErrBadConn }) // never reused
		err = errors.Join(err, rerr)
	}
	return err
}

// emptyDir makes dir if it is missing and refuses it if it holds anything.
func emptyDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("backup target: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("backup target: %w", err)
	}
	if len(entries) > 0 {
		return fmt.Errorf("%s holds %s and more: %w", dir, entries[0].Name(), ErrBackupTarget)
	}
	return nil
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
