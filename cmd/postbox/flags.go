package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// newFlagSet returns a flag set whose flags fall back to POSTBOX_* variables.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("postbox "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage of postbox %s (every flag falls back to POSTBOX_<FLAG>, e.g. --data-dir to POSTBOX_DATA_DIR):\n", name)
		fs.PrintDefaults()
	}
	return fs
}

// envName is the variable a flag falls back to: --server-id → POSTBOX_SERVER_ID.
func envName(flagName string) string {
	return "POSTBOX_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseFlags parses the command line, then gives each flag it did not set
// its environment fallback, and returns the names of the flags given either
// way. A flag on the command line replaces its variable; a list flag does
// not add to it.
func parseFlags(fs *flag.FlagSet, args []string, getenv func(string) string) (map[string]bool, error) {
	return parseCommand(fs, args, getenv, 0)
}

// parseCommand is parseFlags for a command that takes exactly nargs
// arguments after its flags (fs.Args() holds them).
func parseCommand(fs *flag.FlagSet, args []string, getenv func(string) string, nargs int) (map[string]bool, error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, exitError{code: 0}
		}
		return nil, exitError{code: 2, err: err}
	}
	if fs.NArg() != nargs {
		if nargs == 0 {
			return nil, exitError{code: 2, err: fmt.Errorf("unexpected arguments: %q", fs.Args())}
		}
		return nil, exitError{code: 2, err: fmt.Errorf("want %d argument(s) after the flags, got %q", nargs, fs.Args())}
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		if v := getenv(envName(f.Name)); v != "" {
			if err := f.Value.Set(v); err != nil && envErr == nil {
				envErr = fmt.Errorf("%s=%q: %w", envName(f.Name), v, err)
			}
			given[f.Name] = true
		}
	})
	if envErr != nil {
		return nil, exitError{code: 2, err: envErr}
	}
	return given, nil
}

// listFlag is a comma-separated list that may also be repeated.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}
