package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"regexp"
	"strings"
)

// newFlagSet returns a flag set whose flags fall back to POSTBOX_*
// variables. operands names the arguments after the flags, for the help
// ("ID"); -h prints the help on help (standard output: it was asked for).
func newFlagSet(name, operands string, help io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("postbox "+name, flag.ContinueOnError)
	fs.SetOutput(help)
	fs.Usage = func() {
		line := "postbox " + name + " [flags]"
		if operands != "" {
			line += " " + operands
		}
		fmt.Fprintf(help, "Usage: %s\n\nEvery flag falls back to POSTBOX_<FLAG>, e.g. --data-dir to POSTBOX_DATA_DIR.\n", line)
		if operands != "" {
			fmt.Fprintf(help, "\nArguments:\n  %s\n", operandHelp[operands])
		}
		fmt.Fprintln(help, "\nFlags:")
		fs.PrintDefaults()
	}
	return fs
}

// operandHelp explains each command's arguments in its help.
var operandHelp = map[string]string{
	"ID":     "ID    the peer's server ID, host:port (current or former), as postbox peers shows it",
	"NEW_ID": "NEW_ID    this server's new server ID, host:port (e.g. chat.example.com:2289)",
	"DIR":    "DIR    the directory to write the copy into; created if missing, and must be empty",
	"USER":   "USER    a user ID of this server, a whole number such as 42",
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
// arguments after its flags (fs.Args() holds them). A mistake is reported
// once, by the caller, naming the flag, the value and an example.
func parseCommand(fs *flag.FlagSet, args []string, getenv func(string) string, nargs int) (map[string]bool, error) {
	out, usage := fs.Output(), fs.Usage
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := parseInterspersed(fs, args)
	fs.SetOutput(out)
	fs.Usage = usage
	if errors.Is(err, flag.ErrHelp) {
		fs.Usage()
		return nil, exitError{code: 0}
	}
	if err != nil {
		return nil, exitError{code: 2, err: explainParseError(fs, err)}
	}
	if fs.NArg() != nargs {
		if nargs == 0 {
			return nil, usageError(fs, fmt.Errorf("unexpected arguments: %q", fs.Args()))
		}
		return nil, usageError(fs, fmt.Errorf("want %d argument(s) after the flags, got %q", nargs, fs.Args()))
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
				envErr = fmt.Errorf("%s=%q (the fallback of --%s): %w; e.g. %s=%s", envName(f.Name), v, f.Name, err, envName(f.Name), flagExample(f))
			}
			given[f.Name] = true
		}
	})
	if envErr != nil {
		return nil, exitError{code: 2, err: envErr}
	}
	return given, nil
}

// parseInterspersed parses flags given before, between or after the
// operands (`ack 17 --consumer hs` as well as `ack --consumer hs 17`), as
// people type them; after "--" everything is an operand.
func parseInterspersed(fs *flag.FlagSet, args []string) error {
	var operands []string
	for {
		if err := fs.Parse(args); err != nil {
			return err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			operands = append(operands, rest...)
			break
		}
		operands = append(operands, rest[0])
		args = rest[1:]
	}
	// Parsing "--" and the operands leaves them as fs.Args(), and the flags
	// as they were set.
	return fs.Parse(append([]string{"--"}, operands...))
}

// usageError is a mistake on a command line: exit status 2, with where to
// find the flags.
func usageError(fs *flag.FlagSet, err error) error {
	return exitError{code: 2, err: fmt.Errorf("%w (%s -h lists the flags)", err, fs.Name())}
}

// flagError refuses a flag's value, naming the flag, the value and an
// example of a good one.
func flagError(name string, value any, why, example string) error {
	return exitError{code: 2, err: fmt.Errorf("--%s %v: %s; e.g. --%s %s", name, value, why, name, example)}
}

var (
	badValue    = regexp.MustCompile(`^invalid (?:boolean )?value ("(?:[^"\\]|\\.)*") for (?:flag )?-([^:\s]+): (.*)$`)
	missingArg  = regexp.MustCompile(`^flag needs an argument: -+(\S+)$`)
	unknownFlag = regexp.MustCompile(`^flag provided but not defined: -+(\S+)$`)
)

// explainParseError rewrites the flag package's error in the words of
// this command line: --flag, the value, and an example.
func explainParseError(fs *flag.FlagSet, err error) error {
	msg := err.Error()
	if m := badValue.FindStringSubmatch(msg); m != nil {
		if f := fs.Lookup(m[2]); f != nil {
			why := m[3]
			if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
				why = "want true or false"
			} else if why == "parse error" {
				why = "not a whole number"
			}
			return fmt.Errorf("--%s %s: %s; e.g. --%s %s", f.Name, m[1], why, f.Name, flagExample(f))
		}
	}
	if m := missingArg.FindStringSubmatch(msg); m != nil {
		if f := fs.Lookup(m[1]); f != nil {
			return fmt.Errorf("--%s needs a value, e.g. --%s %s", f.Name, f.Name, flagExample(f))
		}
	}
	if m := unknownFlag.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("unknown flag --%s (%s -h lists the flags)", m[1], fs.Name())
	}
	return fmt.Errorf("%w (%s -h lists the flags)", err, fs.Name())
}

// examples are values to show for flags whose default is no example.
var examples = map[string]string{
	"admin-token":         "s3cret",
	"allow-peer-networks": "10.0.0.0/8,127.0.0.0/8",
	"allow-peers":         "chat.example.com,*.example.org",
	"block-peers":         "spam.example.com",
	"consumer":            "homeserver",
	"data-dir":            "/var/lib/postbox",
	"event":               `'{"userAddedToGuild":{"userId":"42","guildId":"7"}}'`,
	"event-file":          "event.json",
	"key-file":            "/etc/postbox/key.ed25519",
	"peer-ca":             "/etc/postbox/ca.pem",
	"reason":              `"the peer refuses this event"`,
	"replica":             "pod-1",
	"store":               "esdb://127.0.0.1:2113?tls=false",
	"through":             "41",
	"tls-cert":            "/etc/postbox/cert.pem",
	"tls-key":             "/etc/postbox/key.pem",
	"to":                  "chat.example.com:2289",
	"server-id":           "chat.example.com:2289",
}

// flagExample is a good value for f: its own example, else its default.
func flagExample(f *flag.Flag) string {
	if ex, ok := examples[f.Name]; ok {
		return ex
	}
	if f.DefValue != "" {
		return f.DefValue
	}
	name, _ := flag.UnquoteUsage(f)
	return strings.ToUpper(name)
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
