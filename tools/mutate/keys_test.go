package main

import (
	"bytes"
	"strings"
	"testing"
)

// The same change made twice in one function has two keys, so listing the
// first as equivalent does not hide the second; and an entry for a change
// no mutant makes any more is reported.
func TestRepeatedChangesHaveKeysOfTheirOwn(t *testing.T) {
	t.Chdir("testdata/example")
	var out bytes.Buffer
	if err := run(t.Context(), []string{"-jobs", "2", "-equivalents", "equivalent.txt", "./twice"}, &out); err != nil {
		t.Fatal(err)
	}
	report := out.String()
	for _, want := range []string{
		"equivalent.txt lists a change no mutant makes any more: twice\tCount\tcall-deleted\tgone()\t(deleted)",
		"SURVIVED      twice/twice.go:14: x >= 0",
		"equivalent.txt key: twice\tCount\tcomparison#2\tx > 0\tx >= 0",
		"./twice: score 0.0%: 0 killed, 1 survived, 1 equivalent",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q:\n%s", want, report)
		}
	}
	if strings.Contains(report, "twice/twice.go:9:") {
		t.Errorf("the listed first change is reported as a survivor:\n%s", report)
	}
}
