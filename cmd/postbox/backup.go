package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
)

// runBackup copies a data directory's embedded store, consistent as of
// one moment, while the server runs or not, and the server's key, into a
// new directory that is a data directory itself: restoring is starting a
// server on it (README, "Backup and restore").
func runBackup(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	flags := newFlagSet("backup", "DIR", stdout)
	dataDir := flags.String("data-dir", "./postbox-data", "data directory of the store to back up (opened read-only: works while the server runs)")
	keyFile := flags.String("key-file", "", "the server's key file, copied into the backup (default: key.ed25519 in the data directory)")
	store := flags.String("store", "", "refused unless empty: EventStoreDB has its own backups")
	if _, err := parseCommand(flags, args, getenv, 1); err != nil {
		return err
	}
	if *store != "" {
		return flagError("store", *store, "postbox backup copies the embedded store; back EventStoreDB up with its own tools", `""`)
	}
	target := flags.Arg(0)
	src, err := embedded.OpenReadOnly(ctx, *dataDir, embedded.Options{})
	if err != nil {
		return exitError{code: 1, err: fmt.Errorf("backup: %w", err)}
	}
	defer src.Close()
	head, err := src.Backup(ctx, target)
	if errors.Is(err, embedded.ErrBackupTarget) {
		return exitError{code: 2, err: fmt.Errorf("backup: %w; name a new or empty directory", err)}
	}
	if err != nil {
		return exitError{code: 1, err: err}
	}
	key := *keyFile
	if key == "" {
		key = filepath.Join(*dataDir, "key.ed25519")
	}
	if err := copyPrivate(key, filepath.Join(target, "key.ed25519")); errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(stderr, "postbox backup: no key file at %s: the backup holds the store only (a server started on it needs the key, --key-file)\n", key)
	} else if err != nil {
		return exitError{code: 1, err: fmt.Errorf("backup: copy the key: %w", err)}
	}
	fmt.Fprintf(stdout, "backed up %s into %s: every event up to position %d, and the key\nrestore: stop the server, then serve with --data-dir %s (or move it into place); peers notice the rollback and reconcile\n",
		*dataDir, target, head, target)
	return nil
}

// copyPrivate copies the file at from to a new file at to, mode 0600.
func copyPrivate(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}
