package main

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
)

var (
	exampleOnce sync.Once
	examplePath string
	exampleErr  error
)

// exampleBinary builds cmd/examplehomeserver once per test run.
func exampleBinary(t *testing.T) string {
	t.Helper()
	exampleOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		examplePath = filepath.Join(binDir, "examplehomeserver")
		out, err := exec.CommandContext(ctx, "go", "build", "-o", examplePath, "../examplehomeserver").CombinedOutput()
		if err != nil {
			exampleErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if exampleErr != nil {
		t.Fatal(exampleErr)
	}
	return examplePath
}

// runExample runs the example homeserver against n's admin listener.
func runExample(t *testing.T, n *e2eNode, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, exampleBinary(t), append([]string{"--admin", n.admin}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("examplehomeserver %s: %v\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.String()
}

// consumedUsers reads the user IDs and positions the example printed.
func consumedUsers(t *testing.T, out string) (users []string, last string) {
	t.Helper()
	for line := range strings.Lines(out) {
		f := strings.Split(strings.TrimSpace(line), "\t")
		if len(f) != 3 {
			t.Fatalf("example printed %q", line)
		}
		_, rest, _ := strings.Cut(f[2], `"userId":"`)
		user, _, _ := strings.Cut(rest, `"`)
		users, last = append(users, user), f[0]
	}
	return users, last
}

// TestADurableConsumerResumesAfterWhatItAcknowledged: the example homeserver
// on B consumes what A's example sent, acknowledging as it goes; B restarts;
// the consumer then gets only the events after its acknowledged position.
// Its position is in B's store, so postbox consumers shows it, and a watch
// under its name starts after it.
func TestADurableConsumerResumesAfterWhatItAcknowledged(t *testing.T) {
	t.Parallel()
	a, b := newE2ENode(t, "A", ""), newE2ENode(t, "B", "")
	a.start()
	b.start()

	runExample(t, a, "send", "--to", b.id, "--users", "1-6")
	users, last := consumedUsers(t, runExample(t, b, "consume", "--consumer", "hs", "--max", "6"))
	if strings.Join(users, ",") != "1,2,3,4,5,6" {
		t.Fatalf("first run consumed users %v, want 1..6 in order", users)
	}

	b.kill()
	b.start()
	runExample(t, a, "send", "--to", b.id, "--users", "7-9")
	users, _ = consumedUsers(t, runExample(t, b, "consume", "--consumer", "hs", "--max", "3"))
	if strings.Join(users, ",") != "7,8,9" {
		t.Fatalf("after B restarted the consumer got users %v, want only 7,8,9", users)
	}

	out, errOut, code := runCLI(t, "consumers", "--json", "--admin", b.admin)
	var c adminv1.Consumer
	if code != 0 || protojson.Unmarshal([]byte(strings.TrimSpace(out)), &c) != nil || c.GetName() != "hs" || c.GetIdle() {
		t.Fatalf("postbox consumers --json: exit %d, %q %s", code, out, errOut)
	}
	// The CLI's watch under the consumer's name starts after its position:
	// nothing is left, and rewinding it by hand is refused (positions only
	// move forward).
	if evs := opWatchE2E(t, b, "--consumer", "hs"); len(evs) != 0 {
		t.Fatalf("watch --consumer hs printed %d events, want none left", len(evs))
	}
	if out, _, code := runCLI(t, "ack", "--consumer", "hs", last, "--admin", b.admin); code != 0 || !strings.Contains(out, "already acknowledged") {
		t.Fatalf("postbox ack of an earlier position: exit %d, %q", code, out)
	}
	// 0, which watch gives the events of a first run, moves nothing.
	if out, _, code := runCLI(t, "ack", "--consumer", "hs", "0", "--admin", b.admin); code != 0 || !strings.Contains(out, fmt.Sprintf("0 acknowledges nothing; hs is at %d\n", c.GetPosition())) {
		t.Fatalf("postbox ack 0: exit %d, %q", code, out)
	}
	if _, errOut, code := runCLI(t, "ack", "--consumer", "hs", "999999", "--admin", b.admin); code != 1 || !strings.Contains(errOut, "not the position of an event") {
		t.Fatalf("postbox ack past the store's end: exit %d, %q; want 1 naming the position", code, errOut)
	}
	if _, errOut, code := runCLI(t, "watch", "--consumer", "hs", "--after", "3", "--admin", b.admin); code != 1 || !strings.Contains(errOut, "after and consumer together") {
		t.Fatalf("watch --consumer with --after: exit %d, %q", code, errOut)
	}

	// Deleted, the consumer starts from the first event again.
	if out, _, code := runCLI(t, "consumers", "delete", "hs", "--admin", b.admin); code != 0 || !strings.Contains(out, "deleted") {
		t.Fatalf("postbox consumers delete hs: exit %d, %q", code, out)
	}
	if evs := opWatchE2E(t, b, "--consumer", "hs"); len(evs) != 9 {
		t.Fatalf("watch --consumer hs after delete printed %d events, want all 9", len(evs))
	}
}

// opWatchE2E runs `postbox watch --json` against n and decodes its lines.
func opWatchE2E(t *testing.T, n *e2eNode, args ...string) []*adminv1.ReceivedEvent {
	t.Helper()
	out, errOut, code := runCLI(t, append([]string{"watch", "--json", "--admin", n.admin}, args...)...)
	if code != 0 {
		t.Fatalf("postbox watch %q: exit %d\n%s", args, code, errOut)
	}
	var evs []*adminv1.ReceivedEvent
	for line := range strings.Lines(out) {
		ev := &adminv1.ReceivedEvent{}
		if err := protojson.Unmarshal([]byte(line), ev); err != nil {
			t.Fatalf("postbox watch printed %q: %v", line, err)
		}
		evs = append(evs, ev)
	}
	return evs
}
