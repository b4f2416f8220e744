// Command mutate measures how well a package's tests notice wrong changes:
// it applies one small change at a time to the package's code (a comparison
// flipped, && for ||, a returned err made nil, a call deleted, a boolean
// flipped, a +1 or -1 dropped, a ! dropped), runs the package's tests on
// the changed code, and reports which changes no test noticed.
//
// The tree is never written: each mutant reaches the compiler through
// `go test -overlay`, so mutants run side by side and an interrupted run
// leaves nothing behind.
//
//	scripts/mutate.sh [-jobs N] [-min-score P] ./domain ./adapters/seqext
//
// Survivors that cannot change behaviour are listed, with the reason, in
// equivalent.txt beside this file; they do not count against the score.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "mutate:", err)
		var below errBelow
		if errors.As(err, &below) {
			os.Exit(1)
		}
		os.Exit(2)
	}
}

type errBelow struct{ msg string }

func (e errBelow) Error() string { return e.msg }

type options struct {
	jobs        int
	minScore    float64
	equivalents string
	timeout     time.Duration
	race        bool
	verbose     bool
	coverage    bool
	schemata    bool
	only        string
	onlyKeys    map[string]bool
	skip        string
	skipKeys    map[string]bool
	files       map[string]bool // base names; nil: every file
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("mutate", flag.ContinueOnError)
	var o options
	fs.IntVar(&o.jobs, "jobs", max(runtime.NumCPU(), 1), "mutants tested at once")
	fs.Float64Var(&o.minScore, "min-score", 0, "fail (exit 1) when a package scores below this percentage")
	fs.StringVar(&o.equivalents, "equivalents", filepath.Join("tools", "mutate", "equivalent.txt"), "the file of survivors known not to change behaviour")
	fs.DurationVar(&o.timeout, "timeout", 0, "time one mutant's tests may take, compiling included (0: 3 times the package's own run, plus 30s)")
	fs.BoolVar(&o.race, "race", false, "run the tests with the race detector (slower)")
	fs.BoolVar(&o.verbose, "v", false, "print every mutant's outcome, not only the survivors")
	fs.BoolVar(&o.schemata, "schemata", true, "build one test binary holding every mutant behind a switch, instead of compiling each mutant")
	fs.StringVar(&o.skip, "skip", "", "do not run the mutants whose keys this file lists (a stopped run's report: to go on where it stopped)")
	fs.StringVar(&o.only, "only", "", "run only the mutants whose keys this file lists, one per line as the report prints them (to check survivors again after new tests)")
	files := fs.String("files", "", "run only the mutants of these source files, comma-separated base names (rename.go,sender.go): a change's own code")
	fs.BoolVar(&o.coverage, "coverage", true, "run each mutant against only the tests that reach its line (measured once per package); a mutant no test reaches survives untested")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("name the packages to mutate, as directories: ./domain ./adapters/seqext")
	}
	equivalents, err := readEquivalents(o.equivalents)
	if err != nil {
		return err
	}
	if o.only != "" {
		if o.onlyKeys, err = readKeys(o.only); err != nil {
			return err
		}
	}
	if o.skip != "" {
		if o.skipKeys, err = readKeys(o.skip); err != nil {
			return err
		}
	}
	if *files != "" {
		o.files = map[string]bool{}
		for _, f := range strings.Split(*files, ",") {
			o.files[strings.TrimSpace(f)] = true
		}
	}
	var below []string
	for _, dir := range fs.Args() {
		res, err := mutatePackage(ctx, dir, o, equivalents, out)
		if err != nil {
			return fmt.Errorf("%s: %w", dir, err)
		}
		if o.minScore > 0 && res.score() < o.minScore {
			below = append(below, fmt.Sprintf("%s scores %.1f%%, below %.1f%%", dir, res.score(), o.minScore))
		}
	}
	if len(below) > 0 {
		return errBelow{strings.Join(below, "; ")}
	}
	return nil
}

// outcome of one mutant.
type outcome int

const (
	killed outcome = iota
	survived
	equivalent
	timedOut
	notCompiling
)

func (o outcome) String() string {
	return [...]string{"killed", "SURVIVED", "equivalent", "timed out", "not compiling"}[o]
}

type result struct {
	counts   [5]int
	duration time.Duration
}

// score is the share of mutants the tests noticed, of those that compile
// and are not equivalent; a mutant that makes the tests hang was noticed.
func (r result) score() float64 {
	noticed := r.counts[killed] + r.counts[timedOut]
	total := noticed + r.counts[survived]
	if total == 0 {
		return 100
	}
	return 100 * float64(noticed) / float64(total)
}

func mutatePackage(ctx context.Context, dir string, o options, eq map[string]bool, out io.Writer) (result, error) {
	start := time.Now()
	pkg := "./" + filepath.ToSlash(filepath.Clean(dir))
	files, err := sourceFiles(dir)
	if err != nil {
		return result{}, err
	}
	var all []mutant
	sources := map[string][]byte{}
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			return result{}, err
		}
		sources[f] = src
		ms, err := mutants(f, src)
		if err != nil {
			return result{}, err
		}
		all = append(all, ms...)
	}
	if len(all) == 0 {
		return result{}, errors.New("no code to mutate")
	}
	// Each mutant's code is made up front, so that the same change made
	// twice in one function gets a key of its own (kind#2, ...).
	code := make([][]byte, len(all))
	codeErr := make([]error, len(all))
	seen, made := map[string]int{}, map[string]bool{}
	for i := range all {
		code[i], codeErr[i] = apply(&all[i], sources[all[i].File])
		k := all[i].key(dir)
		seen[k]++
		if n := seen[k]; n > 1 {
			all[i].Kind = fmt.Sprintf("%s#%d", all[i].Kind, n)
		}
		made[all[i].key(dir)] = true
	}
	// An entry no mutant matches any more is reported, so the file does
	// not keep reasons for code that is gone.
	var stale []string
	prefix := filepath.ToSlash(filepath.Clean(dir)) + "\t"
	for k := range eq {
		if strings.HasPrefix(k, prefix) && !made[k] {
			stale = append(stale, k)
		}
	}
	sort.Strings(stale)
	if o.onlyKeys != nil || o.skipKeys != nil || o.files != nil {
		var keep []int
		for i := range all {
			k := all[i].key(dir)
			if (o.onlyKeys == nil || o.onlyKeys[k]) && !o.skipKeys[k] && (o.files == nil || o.files[filepath.Base(all[i].File)]) {
				keep = append(keep, i)
			}
		}
		fmt.Fprintf(out, "%s: %d of its %d mutants (-only %q, -skip %q, -files %q)\n", pkg, len(keep), len(all), o.only, o.skip, strings.Join(slices.Sorted(maps.Keys(o.files)), ","))
		for n, i := range keep {
			all[n], code[n], codeErr[n] = all[i], code[i], codeErr[i]
		}
		all, code, codeErr = all[:len(keep)], code[:len(keep)], codeErr[:len(keep)]
		if len(all) == 0 {
			return result{}, nil
		}
	}
	for _, k := range stale {
		fmt.Fprintf(out, "%s: equivalent.txt lists a change no mutant makes any more: %s\n", pkg, k)
	}

	work, err := os.MkdirTemp("", "mutate-")
	if err != nil {
		return result{}, err
	}
	defer os.RemoveAll(work)

	// The package's own run, with its code recompiled (a comment added), is
	// the yardstick for each mutant's time limit.
	baseStart := time.Now()
	baseSrc := append(bytes.Clone(sources[files[0]]), []byte("\n// mutate: baseline\n")...)
	if ok, output, err := testWith(ctx, work, "base", pkg, files[0], baseSrc, 0, o.race, ""); err != nil || !ok {
		if err == nil {
			err = fmt.Errorf("the package's tests fail without any mutation:\n%s", output)
		}
		return result{}, err
	}
	limit := o.timeout
	if limit == 0 {
		limit = 3*time.Since(baseStart) + 30*time.Second
	}
	var cov *coverage
	if o.coverage {
		covStart := time.Now()
		cov, err = measureCoverage(ctx, work, dir, pkg, o.jobs, o.race, limit)
		if err != nil {
			fmt.Fprintf(out, "%s: no coverage per test, so every mutant runs every test: %v\n", pkg, err)
		} else {
			fmt.Fprintf(out, "%s: coverage of each test measured in %s\n", pkg, time.Since(covStart).Round(time.Second))
		}
	}
	var schemata string // the test binary holding every mutant, if built
	var checker *typeChecker
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return result{}, err
	}
	if o.schemata {
		bin, err := buildSchemata(ctx, work, dir, pkg, all, sources, o.race)
		if err == nil {
			// With every switch off it must pass, as the package does
			// (three tries, for a timing test on a busy machine).
			var ok bool
			var offStart time.Time
			for try := 0; try < 3 && !ok; try++ {
				offStart = time.Now()
				ok, err = runSchemata(ctx, work, bin, absDir, 0, "", limit)
			}
			if err == nil && !ok {
				err = errors.New("its tests fail with every mutant off")
			}
			if o.timeout == 0 {
				// No compiling in a mutant's time now: a hung one need
				// not wait for a build's allowance.
				limit = 3*time.Since(offStart) + 10*time.Second
			}
		}
		if err != nil {
			fmt.Fprintf(out, "%s: no mutant schemata, so each mutant is compiled on its own: %v\n", pkg, err)
		} else {
			schemata = bin
			if checker, err = newTypeChecker(ctx, pkg, files, sources); err != nil {
				fmt.Fprintf(out, "%s: deleted calls are compiled to see they compile (%v)\n", pkg, err)
			}
		}
	}
	fmt.Fprintf(out, "%s: %d mutants, %d at a time, each limited to %s\n", pkg, len(all), o.jobs, limit.Round(time.Second))

	type done struct {
		m         mutant
		out       outcome
		untouched bool // no test runs the mutant's line
	}
	jobs := make(chan int)
	results := make(chan done)
	var wg sync.WaitGroup
	for w := range o.jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				m := all[i]
				res := notCompiling
				run, untouched, mutantLimit := "", false, limit
				if cov != nil {
					if tests, known := cov.testsFor(m.File, m.Line, m.Col); known {
						run, untouched = runPattern(tests), len(tests) == 0
						if schemata != "" && o.timeout == 0 {
							mutantLimit = cov.limitFor(tests, limit)
						}
					}
				}
				compiles := func() bool {
					if checker != nil {
						return checker.compiles(m.File, code[i])
					}
					ok, err := buildWith(ctx, work, fmt.Sprint("w", w), pkg, m.File, code[i], limit)
					return ok && err == nil
				}
				switch {
				case codeErr[i] != nil:
				case schemata != "" && !m.schema.unwrappable:
					// Only a deleted call or a nil for err can leave code that
					// does not compile (a variable or an import then unused).
					if (strings.HasPrefix(m.Kind, kindCall) || strings.HasPrefix(m.Kind, kindReturnNil)) && !compiles() {
						break
					}
					if untouched {
						res = survived
					} else {
						ok, terr := runSchemata(ctx, work, schemata, absDir, i+1, run, mutantLimit)
						switch {
						case errors.Is(terr, context.DeadlineExceeded):
							res = timedOut
						case terr != nil:
							res = notCompiling
						case ok:
							res = survived
						default:
							res = killed
						}
					}
					if res == survived && eq[m.key(dir)] {
						res = equivalent
					}
				case untouched:
					// No test can notice it; only whether it compiles is left.
					compiles, err := buildWith(ctx, work, fmt.Sprint("w", w), pkg, m.File, code[i], limit)
					switch {
					case err != nil || !compiles:
					case eq[m.key(dir)]:
						res = equivalent
					default:
						res = survived
					}
				default:
					ok, output, terr := testWith(ctx, work, fmt.Sprint("w", w), pkg, m.File, code[i], limit, o.race, run)
					switch {
					case errors.Is(terr, context.DeadlineExceeded):
						res = timedOut
					case terr != nil:
						res = notCompiling
					case ok:
						res = survived
						if eq[m.key(dir)] {
							res = equivalent
						}
					case strings.Contains(output, "[build failed]") || strings.Contains(output, "[setup failed]"):
						res = notCompiling
					default:
						res = killed
					}
				}
				results <- done{m, res, untouched && res == survived}
			}
		}()
	}
	go func() {
		for i := range all {
			jobs <- i
		}
		close(jobs)
		wg.Wait()
		close(results)
	}()

	// Each outcome is printed as it comes, so that a long run (the
	// delivery engine's) shows its survivors even if it is stopped.
	var r result
	for d := range results {
		r.counts[d.out]++
		if d.out == survived || o.verbose {
			rel, _ := filepath.Rel(".", d.m.File)
			note := ""
			if d.untouched {
				note = " (no test runs this code)"
			}
			fmt.Fprintf(out, "%-13s %s:%d: %s%s\n              equivalent.txt key: %s\n", d.out, rel, d.m.Line, d.m.Mutated, note, d.m.key(dir))
		}
	}
	r.duration = time.Since(start)
	fmt.Fprintf(out, "%s: score %.1f%%: %d killed, %d survived, %d equivalent, %d timed out, %d not compiling (%s)\n",
		pkg, r.score(), r.counts[killed], r.counts[survived], r.counts[equivalent], r.counts[timedOut], r.counts[notCompiling],
		r.duration.Round(time.Second))
	return r, nil
}

// testWith runs pkg's tests (those matching run; all when run is empty)
// with file replaced by src. ok is whether they passed; err is set when
// they could not run (or ran out of time).
func testWith(ctx context.Context, work, slot, pkg, file string, src []byte, limit time.Duration, race bool, run string) (ok bool, output string, err error) {
	overlay, err := writeOverlay(filepath.Join(work, slot), file, src)
	if err != nil {
		return false, "", err
	}
	args := []string{"test", "-count=1", "-failfast", "-vet=off", "-overlay=" + overlay}
	if race {
		args = append(args, "-race")
	}
	if run != "" {
		args = append(args, "-run="+run)
	}
	if limit > 0 {
		// The binary's own limit too, should the kill not reach it.
		args = append(args, "-timeout="+limit.String())
	}
	return goWith(ctx, work, limit, append(args, pkg)...)
}

// buildWith reports whether pkg compiles with file replaced by src.
func buildWith(ctx context.Context, work, slot, pkg, file string, src []byte, limit time.Duration) (bool, error) {
	overlay, err := writeOverlay(filepath.Join(work, slot), file, src)
	if err != nil {
		return false, err
	}
	ok, _, err := goWith(ctx, work, limit, "build", "-overlay="+overlay, pkg)
	return ok, err
}

// writeOverlay writes src and an overlay file replacing file with it, in
// dir, and returns the overlay file's path.
func writeOverlay(dir, file string, src []byte) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	abs, err := filepath.Abs(file)
	if err != nil {
		return "", err
	}
	mutantPath := filepath.Join(dir, filepath.Base(file))
	if err := os.WriteFile(mutantPath, src, 0o644); err != nil {
		return "", err
	}
	overlay, err := jsonOverlay(map[string]string{abs: mutantPath})
	if err != nil {
		return "", err
	}
	overlayPath := filepath.Join(dir, "overlay.json")
	return overlayPath, os.WriteFile(overlayPath, overlay, 0o644)
}

// jsonOverlay is the go command's -overlay file replacing each key's file
// by its value's.
func jsonOverlay(replace map[string]string) ([]byte, error) {
	return json.Marshal(map[string]map[string]string{"Replace": replace})
}

// goWith runs the go command within limit (0: none), with a temporary
// directory of its own under work; ok is whether it exited 0.
func goWith(ctx context.Context, work string, limit time.Duration, args ...string) (ok bool, output string, err error) {
	if limit > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, limit)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	ownGroup(cmd)
	cmd.WaitDelay = 5 * time.Second
	remove, err := ownTmp(cmd, work)
	if err != nil {
		return false, "", err
	}
	defer remove()
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	runErr := cmd.Run()
	if ctx.Err() != nil {
		return false, buf.String(), ctx.Err()
	}
	var exit *exec.ExitError
	if runErr != nil && !errors.As(runErr, &exit) {
		return false, buf.String(), runErr
	}
	return runErr == nil, buf.String(), nil
}

// sourceFiles lists the package's own Go files: not tests, not generated.
func sourceFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		path := filepath.Join(dir, name)
		src, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		if bytes.Contains(src, []byte("// Code generated")) {
			continue
		}
		out = append(out, path)
	}
	return out, nil
}

// key names a mutant by what it changes, not by line, so the equivalents
// file survives edits elsewhere in the file. The n-th identical change in
// one function has kind#n (n from 2).
func (m mutant) key(dir string) string {
	return strings.Join([]string{filepath.ToSlash(filepath.Clean(dir)), m.Func, m.Kind, m.Original, m.Mutated}, "\t")
}

// readKeys reads mutant keys, one per line, as the report prints them
// (with or without its "equivalent.txt key:" label); other lines are
// skipped, so a saved report can be given as it is.
func readKeys(path string) (map[string]bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	keys := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		line = strings.TrimSpace(strings.TrimPrefix(line, "equivalent.txt key:"))
		if parts := strings.Split(line, "\t"); len(parts) >= 5 && !strings.HasPrefix(line, "#") {
			keys[strings.Join(parts[:5], "\t")] = true
		}
	}
	return keys, nil
}

// readEquivalents reads lines of six tab-separated fields: dir, Func, kind,
// original, mutated, reason (as the report prints them); # starts a
// comment. A missing file lists nothing.
func readEquivalents(path string) (map[string]bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]bool{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]bool{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		parts := strings.Split(line, "\t")
		if len(parts) != 6 || strings.TrimSpace(parts[5]) == "" {
			return nil, fmt.Errorf("%s:%d: want six tab-separated fields: dir, Func, kind, original, mutated, reason", path, n)
		}
		out[strings.Join(parts[:5], "\t")] = true
	}
	return out, sc.Err()
}
