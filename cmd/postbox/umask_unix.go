//go:build unix

package main

import "syscall"

// privateFiles makes every file and directory this process creates
// readable by its own user only (0600, 0700), whoever creates it: the
// event store, SQLite's journal files, checkpoints, nonces, backups.
func privateFiles() { syscall.Umask(0o077) }
