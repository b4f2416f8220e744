package main

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"path/filepath"

	"github.com/harmony-postbox/postbox/adapters/keyfile"
)

func runKeygen(args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := newFlagSet("keygen", "", stdout)
	dataDir := fs.String("data-dir", "./postbox-data", "data directory")
	keyFile := fs.String("key-file", "", "key file (default: key.ed25519 in the data directory)")
	if _, err := parseFlags(fs, args, getenv); err != nil {
		return err
	}
	path := *keyFile
	if path == "" {
		path = filepath.Join(*dataDir, "key.ed25519")
	}
	key, created, err := keyfile.LoadOrCreate(path, rand.Reader)
	if err != nil {
		return err
	}
	verb := "kept existing"
	if created {
		verb = "created"
	}
	// Base64, as every --json (protojson) shows a key.
	fmt.Fprintf(stdout, "%s key %s\npublic key %s\n", verb, path, base64.StdEncoding.EncodeToString(key.PublicKey()))
	return nil
}
