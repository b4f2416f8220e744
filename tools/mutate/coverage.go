package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// coverage says which of a package's tests run each line of its code, from
// one coverage profile per test. A mutant then runs only the tests that
// reach its line, and one that no test reaches survives without a run: for
// a package whose tests take seconds (the delivery engine's), that is most
// of a mutant's time.
type coverage struct {
	blocks map[string][]coverBlock  // by absolute file path
	took   map[string]time.Duration // each test's own run
}

// limitFor is the time tests may take as a mutant's run: twice their own
// runs (added up, though some run in parallel) plus 5 s, within max.
// A mutant that hangs one short test then costs seconds, not the whole
// package's allowance.
func (c *coverage) limitFor(tests []string, max time.Duration) time.Duration {
	var sum time.Duration
	for _, t := range tests {
		sum += c.took[t]
	}
	return min(max, 2*sum+5*time.Second)
}

// coverBlock is one block of a coverage profile and the tests that ran it.
type coverBlock struct {
	start, end position
	tests      map[string]bool
}

// position in a file: line, then column.
type position struct{ line, col int }

func (p position) before(q position) bool {
	return p.line < q.line || p.line == q.line && p.col < q.col
}

// testsFor returns the tests that run the code at line and col of file:
// those of the blocks holding it. known is false when no block holds it
// (code outside function bodies; a case expression, which the switch
// evaluates before the case's own block): then every test must run.
func (c *coverage) testsFor(file string, line, col int) (tests []string, known bool) {
	if abs, err := filepath.Abs(file); err == nil {
		file = abs
	}
	at := position{line, col}
	set := map[string]bool{}
	for _, b := range c.blocks[file] {
		if !at.before(b.start) && !b.end.before(at) {
			known = true
			for t := range b.tests {
				set[t] = true
			}
		}
	}
	for t := range set {
		tests = append(tests, t)
	}
	return tests, known
}

// runPattern is the -run pattern of exactly these top-level tests.
func runPattern(tests []string) string {
	quoted := make([]string, len(tests))
	for i, t := range tests {
		quoted[i] = regexp.QuoteMeta(t)
	}
	return "^(" + strings.Join(quoted, "|") + ")$"
}

// measureCoverage builds pkg's tests once with coverage and runs each test
// alone with its own profile. Any failure (a test that fails alone, a
// profile that does not parse) returns an error: the caller then runs
// every test for every mutant, as without coverage.
func measureCoverage(ctx context.Context, work, dir, pkg string, jobs int, race bool, limit time.Duration) (*coverage, error) {
	importPath, err := goList(ctx, pkg, "{{.ImportPath}}")
	if err != nil {
		return nil, err
	}
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(work, "cover.test")
	args := []string{"test", "-c", "-vet=off", "-cover", "-covermode=set", "-o", bin}
	if race {
		args = append(args, "-race")
	}
	if out, err := exec.CommandContext(ctx, "go", append(args, pkg)...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build with coverage: %w\n%s", err, out)
	}
	list := exec.CommandContext(ctx, bin, "-test.list", ".*")
	list.Dir = absDir
	out, err := list.Output()
	if err != nil {
		return nil, fmt.Errorf("list tests: %w", err)
	}
	var tests []string
	for _, name := range strings.Fields(string(out)) {
		if strings.HasPrefix(name, "Benchmark") || strings.HasPrefix(name, "ok") {
			continue // go test runs no benchmarks; "ok" ends the list
		}
		tests = append(tests, name)
	}

	profiles := filepath.Join(work, "cover")
	if err := os.MkdirAll(profiles, 0o755); err != nil {
		return nil, err
	}
	cov := &coverage{blocks: map[string][]coverBlock{}, took: map[string]time.Duration{}}
	index := map[string]map[[2]position]int{} // file -> block -> index in cov.blocks[file]
	var mu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, max(jobs, 1))
	var wg sync.WaitGroup
	for i, test := range tests {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			profile := filepath.Join(profiles, strconv.Itoa(i))
			// A timing test can fail by chance on a busy machine: it gets
			// three tries before the coverage is given up.
			var err error
			var took time.Duration
			for try := 0; try < 3; try++ {
				start := time.Now()
				err = runForProfile(ctx, work, bin, absDir, test, profile, limit)
				took = time.Since(start)
				if err == nil || ctx.Err() != nil {
					break
				}
			}
			var blocks []profileBlock
			if err == nil {
				blocks, err = readProfile(profile, importPath, absDir)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = fmt.Errorf("%s alone: %w", test, err)
				}
				return
			}
			cov.took[test] = took
			for _, b := range blocks {
				at := [2]position{b.start, b.end}
				if index[b.file] == nil {
					index[b.file] = map[[2]position]int{}
				}
				k, ok := index[b.file][at]
				if !ok {
					k = len(cov.blocks[b.file])
					index[b.file][at] = k
					cov.blocks[b.file] = append(cov.blocks[b.file], coverBlock{start: b.start, end: b.end, tests: map[string]bool{}})
				}
				if b.ran {
					cov.blocks[b.file][k].tests[test] = true
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	return cov, nil
}

// runForProfile runs one test of the coverage binary, with a temporary
// directory of its own under work.
func runForProfile(ctx context.Context, work, bin, dir, test, profile string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-test.run", runPattern([]string{test}), "-test.count=1", "-test.coverprofile="+profile)
	cmd.Dir = dir
	ownGroup(cmd)
	cmd.WaitDelay = 5 * time.Second
	remove, err := ownTmp(cmd, work)
	if err != nil {
		return err
	}
	defer remove()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%w\n%s", err, lastLines(out, 20))
	}
	return nil
}

type profileBlock struct {
	file       string
	start, end position
	ran        bool
}

// readProfile reads a coverage profile's blocks of the package's own files
// ("import/path/file.go:12.3,14.2 2 1"), as absolute paths.
func readProfile(path, importPath, dir string) ([]profileBlock, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []profileBlock
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "mode:") || line == "" {
			continue
		}
		colon := strings.LastIndex(line, ":")
		fields := strings.Fields(line[colon+1:])
		if colon < 0 || len(fields) != 3 {
			return nil, fmt.Errorf("coverage profile line %q", line)
		}
		file := line[:colon]
		if filepath.ToSlash(filepath.Dir(file)) != importPath {
			continue
		}
		from, to, ok := strings.Cut(fields[0], ",")
		start, err1 := parsePosition(from)
		end, err2 := parsePosition(to)
		count, err3 := strconv.Atoi(fields[2])
		if !ok || errors.Join(err1, err2, err3) != nil {
			return nil, fmt.Errorf("coverage profile line %q", line)
		}
		out = append(out, profileBlock{file: filepath.Join(dir, filepath.Base(file)), start: start, end: end, ran: count > 0})
	}
	return out, sc.Err()
}

// parsePosition parses "line.col".
func parsePosition(s string) (position, error) {
	l, c, ok := strings.Cut(s, ".")
	line, err1 := strconv.Atoi(l)
	col, err2 := strconv.Atoi(c)
	if !ok || errors.Join(err1, err2) != nil {
		return position{}, fmt.Errorf("position %q", s)
	}
	return position{line, col}, nil
}

func goList(ctx context.Context, pkg, format string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "list", "-f", format, pkg).Output()
	if err != nil {
		return "", fmt.Errorf("go list %s: %w", pkg, err)
	}
	return strings.TrimSpace(string(out)), nil
}

func lastLines(b []byte, n int) string {
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	return string(bytes.Join(lines[max(0, len(lines)-n):], []byte("\n")))
}
