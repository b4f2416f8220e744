package main

import (
	"bytes"
	"errors"
	"fmt"
	"go/parser"
	"go/token"
	"maps"
	"os"
	"regexp"
	"strings"
	"testing"
)

// The example package's tests leave its boundaries and one function
// untested; the tool must say exactly which changes went unnoticed.
func TestMutateReportsSurvivorsAndScores(t *testing.T) {
	t.Chdir("testdata/example")
	var out bytes.Buffer
	err := run(t.Context(), []string{"-jobs", "2", "-equivalents", "equivalent.txt", "-min-score", "50", "./calc"}, &out)
	report := out.String()
	var below errBelow
	if !errors.As(err, &below) || !strings.Contains(err.Error(), "./calc scores 33.3%") {
		t.Errorf("run = %v; want the package reported below 50%%", err)
	}
	for _, want := range []string{
		"./calc: 5 mutants",
		"SURVIVED      calc/calc.go:11: x >= hi",
		"SURVIVED      calc/calc.go:25: x <= 0",
		"./calc: score 33.3%: 1 killed, 2 survived, 1 equivalent, 0 timed out, 1 not compiling",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q:\n%s", want, report)
		}
	}
	if strings.Contains(report, "x <= lo") {
		t.Errorf("the listed equivalent is reported as a survivor:\n%s", report)
	}
	if strings.Contains(report, "no mutant schemata") || strings.Contains(report, "no coverage") {
		t.Errorf("the run fell back to compiling each mutant:\n%s", report)
	}
	// Check has no test: its mutant survives without a run, and says so;
	// Clamp's boundary is run by TestClamp, which misses it.
	if !strings.Contains(report, "calc/calc.go:25: x <= 0 (no test runs this code)") ||
		strings.Contains(report, "x >= hi (no test runs this code)") {
		t.Errorf("the report does not tell untested lines from tested ones:\n%s", report)
	}
}

// Without coverage and schemata every mutant is compiled on its own and
// runs every test, and the outcomes are the same.
func TestMutateWithoutCoverageGivesTheSameScore(t *testing.T) {
	t.Chdir("testdata/example")
	var out bytes.Buffer
	err := run(t.Context(), []string{"-jobs", "2", "-coverage=false", "-schemata=false", "-equivalents", "equivalent.txt", "./calc"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	report := out.String()
	if !strings.Contains(report, "./calc: score 33.3%: 1 killed, 2 survived, 1 equivalent, 0 timed out, 1 not compiling") ||
		strings.Contains(report, "no test runs") || strings.Contains(report, "coverage of each test") {
		t.Errorf("report:\n%s", report)
	}
}

func TestMutantsOfEachKind(t *testing.T) {
	src := []byte(`package p

func f(a, b bool, x int, g func()) (int, error) {
	var err error
	g()
	if !a || b && x == 1 {
		return x + 1, err
	}
	panic("never deleted")
	return x - 1, nil
}
`)
	ms, err := mutants("p.go", src)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for i := range ms {
		m := ms[i]
		if _, err := apply(&m, src); err != nil {
			t.Fatal(err)
		}
		got = append(got, m.Kind+": "+m.Original+" => "+m.Mutated)
	}
	want := []string{
		"call-deleted: g() => (deleted)",
		"logical: !a || b && x == 1 => !a && (b && x == 1)", // the tree is kept: the printer adds the parentheses
		"not-dropped: !a => a",
		"logical: b && x == 1 => b || x == 1",
		"comparison: x == 1 => x != 1",
		"return-nil: return x + 1, err => return x + 1, nil",
		"plus-minus-1: x + 1 => x",
		"plus-minus-1: x - 1 => x",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("mutants:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestEquivalentsFileMustGiveReasons(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/eq.txt"
	if err := writeFile(path, "calc\tClamp\tcomparison\tx < lo\tx <= lo\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := readEquivalents(path); err == nil || !strings.Contains(err.Error(), "eq.txt:1") {
		t.Errorf("an entry without a reason: %v; want an error naming the line", err)
	}
}

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o644) }

// -only runs the mutants a saved report lists, and no other.
func TestOnlyTheListedMutantsRun(t *testing.T) {
	t.Chdir("testdata/example")
	keys := t.TempDir() + "/survivors"
	report := "SURVIVED      calc/calc.go:11: x >= hi\n              equivalent.txt key: calc\tClamp\tcomparison\tx > hi\tx >= hi\n"
	if err := os.WriteFile(keys, []byte(report), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := run(t.Context(), []string{"-jobs", "1", "-only", keys, "-equivalents", "equivalent.txt", "./calc"}, &out); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); !strings.Contains(got, "1 of its 5 mutants (-only") ||
		!strings.Contains(got, "score 0.0%: 0 killed, 1 survived, 0 equivalent, 0 timed out, 0 not compiling") {
		t.Errorf("report:\n%s", got)
	}
}

// A case expression is evaluated by every test that reaches its switch,
// though the case's own block (on the same line) runs in none: its mutant
// must run, and here a test notices it.
func TestACaseExpressionIsRunByTheTestsOfItsSwitch(t *testing.T) {
	t.Chdir("testdata/example")
	var out bytes.Buffer
	if err := run(t.Context(), []string{"-jobs", "1", "-equivalents", "equivalent.txt", "./cases"}, &out); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); !strings.Contains(got, "./cases: score 100.0%: 1 killed, 0 survived") {
		t.Errorf("report:\n%s", got)
	}
}

// Every site of a file, nested ones too, goes behind its own switch, and
// the result is Go.
func TestSchemataWrapEverySite(t *testing.T) {
	src := []byte(`package p

func f(a, b bool, x int, g func()) (int, error) {
	var err error
	g()
	if !a || b && x == 1 {
		return x + 1, err
	}
	const on = true
	return x - 1, nil
}
`)
	ms, err := mutants("p.go", src)
	if err != nil {
		t.Fatal(err)
	}
	ss := make([]schemaSite, len(ms))
	ids := make([]int, len(ms))
	wrappable := 0
	for i, m := range ms {
		ss[i], ids[i] = m.schema, i+1
		if !m.schema.unwrappable {
			wrappable++
		}
	}
	out, err := schemataSource(src, ss, ids)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parser.ParseFile(token.NewFileSet(), "p.go", out, 0); err != nil {
		t.Fatalf("not Go: %v\n%s", err, out)
	}
	for i, m := range ms {
		switched := regexp.MustCompile(fmt.Sprintf(`_mutate\w+\(%d[,)]`, ids[i])).MatchString(string(out))
		if switched == m.schema.unwrappable {
			t.Errorf("%s %s: behind a switch %v, wrappable %v", m.Kind, m.Original, switched, !m.schema.unwrappable)
		}
	}
	if wrappable != len(ms)-1 || !strings.Contains(string(out), "const on = true") {
		t.Fatalf("%d of %d sites wrappable; the constant's literal must stay as it is:\n%s", wrappable, len(ms), out)
	}
}

// -skip leaves out the mutants a saved report lists, to go on with a
// stopped run.
func TestSkippedMutantsDoNotRun(t *testing.T) {
	t.Chdir("testdata/example")
	keys := t.TempDir() + "/done"
	report := "killed        calc/calc.go:11: x >= hi\n              equivalent.txt key: calc\tClamp\tcomparison\tx > hi\tx >= hi\n"
	if err := os.WriteFile(keys, []byte(report), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	run(t.Context(), []string{"-jobs", "2", "-skip", keys, "-equivalents", "equivalent.txt", "./calc"}, &out)
	if got := out.String(); !strings.Contains(got, "4 of its 5 mutants (-only") || strings.Contains(got, "x >= hi") {
		t.Errorf("report:\n%s", got)
	}
}

// -files runs only the mutants of the files named, whatever the package's
// other files hold.
func TestOnlyTheNamedFilesAreMutated(t *testing.T) {
	t.Chdir("testdata/example")
	var out bytes.Buffer
	if err := run(t.Context(), []string{"-jobs", "1", "-v", "-files", "high.go", "-equivalents", "equivalent.txt", "./twofiles"}, &out); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	if !strings.Contains(got, `-files "high.go"`) || strings.Contains(got, "low.go:") || !strings.Contains(got, "high.go:") {
		t.Errorf("report:\n%s", got)
	}
	if m := regexp.MustCompile(`(\d+) of its (\d+) mutants`).FindStringSubmatch(got); m == nil || m[1] == m[2] || m[1] == "0" {
		t.Errorf("report:\n%s\nwant some of the package's mutants, not all", got)
	}
}

// An off-by-one of a constant made of literals is left out of the switch:
// as the switch's argument it would be an int, which 1<<63 overflows; it is
// compiled on its own instead. One of a variable goes behind the switch.
func TestALiteralConstantStaysOutOfTheSwitch(t *testing.T) {
	src := []byte(`package p

import "time"

func f(x int64) (time.Duration, int64) {
	return time.Duration(1<<63 - 1), x - 1
}
`)
	ms, err := mutants("p.go", src)
	if err != nil {
		t.Fatal(err)
	}
	wrapped := map[string]bool{}
	for i := range ms {
		if ms[i].Kind != kindOffByOne {
			continue
		}
		if _, err := apply(&ms[i], src); err != nil {
			t.Fatal(err)
		}
		wrapped[ms[i].Original] = !ms[i].schema.unwrappable
	}
	if want := map[string]bool{"1<<63 - 1": false, "x - 1": true}; !maps.Equal(wrapped, want) {
		t.Fatalf("off-by-one sites behind the switch: %v, want %v", wrapped, want)
	}
}
