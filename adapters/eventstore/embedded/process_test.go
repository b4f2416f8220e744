package embedded_test

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
)

// The tests below run this test binary again as a child process: the
// environment variable childRole tells TestMain which part it plays.
const (
	childRole   = "POSTBOX_EMBEDDED_TEST_CHILD"
	childDir    = "POSTBOX_EMBEDDED_TEST_DIR"
	childStream = "POSTBOX_EMBEDDED_TEST_STREAM"
	childWant   = "POSTBOX_EMBEDDED_TEST_WANT"
	childParent = "POSTBOX_EMBEDDED_TEST_PARENT"

	// A child never outlives this, even if its parent dies without
	// killing it.
	childLifetime = 60 * time.Second
)

func TestMain(m *testing.M) {
	if role := os.Getenv(childRole); role != "" {
		os.Exit(runChild(role))
	}
	os.Exit(m.Run())
}

func runChild(role string) int {
	ctx, cancel := context.WithTimeout(context.Background(), childLifetime)
	defer cancel()
	var err error
	switch role {
	case "writer":
		err = childWriter(ctx, os.Getenv(childDir))
	case "reader":
		err = childReader(ctx)
	default:
		err = fmt.Errorf("unknown child role %q", role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	return 0
}

// startChild runs this test binary as a child playing role, with its stdout
// read line by line.
func startChild(t *testing.T, role string, env ...string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{childRole + "=" + role}, env...)...)
	cmd.Stderr = &testWriter{t: t}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd, bufio.NewScanner(out)
}

type testWriter struct{ t *testing.T }

func (w *testWriter) Write(p []byte) (int, error) {
	w.t.Logf("child stderr: %s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// crashEvent is the body of the crash test's events: enough to check,
// after the crash, that each append is whole.
type crashEvent struct {
	Append string `json:"append"` // unique per append
	Index  int    `json:"index"`
	Size   int    `json:"size"`
}

const (
	crashWriters = 6 // each on its own stream, with Exact
	crashShared  = 2 // on one stream, with Any
)

// childWriter appends forever from several goroutines and prints each
// acknowledged append as "ACK <stream> <last revision> <events>".
func childWriter(ctx context.Context, dir string) error {
	s, err := embedded.Open(ctx, dir, embedded.Options{})
	if err != nil {
		return err
	}
	var out sync.Mutex
	ack := func(stream string, rev uint64, n int) {
		out.Lock()
		defer out.Unlock()
		// Unbuffered: a line the parent reads was acknowledged before the kill.
		fmt.Fprintf(os.Stdout, "ACK %s %d %d\n", stream, rev, n)
	}
	errc := make(chan error, crashWriters+crashShared)
	for g := range crashWriters + crashShared {
		go func() {
			stream, shared := fmt.Sprintf("crash-%d", g), g >= crashWriters
			if shared {
				stream = "crash-shared"
			}
			next := uint64(0)
			if last, err := s.ReadStreamBackward(ctx, stream, 1); err == nil {
				next = last[0].Revision + 1
			} else if !errors.Is(err, eventstore.ErrStreamNotFound) {
				errc <- err
				return
			}
			for i := 0; ; i++ {
				events := crashEvents(1 + (g+i)%4)
				expected := eventstore.Any()
				if !shared {
					expected = eventstore.NoStream()
					if next > 0 {
						expected = eventstore.Exact(next - 1)
					}
				}
				res, err := s.Append(ctx, stream, expected, events...)
				if err != nil {
					errc <- err
					return
				}
				ack(stream, res.NextExpectedRevision, len(events))
				next = res.NextExpectedRevision + 1
			}
		}()
	}
	return <-errc
}

func crashEvents(n int) []eventstore.EventData {
	id := newID()
	out := make([]eventstore.EventData, n)
	for i := range out {
		body, _ := json.Marshal(crashEvent{Append: hex.EncodeToString(id[:]), Index: i, Size: n})
		out[i] = eventstore.EventData{ID: newID(), Type: "Crash", Data: body}
	}
	return out
}

// TestCrashKeepsEveryAcknowledgedAppendWhole kills a writing child process
// with SIGKILL, mid-append, a few times over, and checks after each kill that
// every acknowledged append is stored, streams have no gaps, and no append
// is stored in part.
func TestCrashKeepsEveryAcknowledgedAppendWhole(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	t.Parallel()
	dir := t.TempDir()
	acked := map[string]uint64{} // stream -> highest acknowledged revision
	deadline := time.Now().Add(40 * time.Second)
	for round := range 3 {
		if time.Now().After(deadline) {
			t.Logf("stopping after %d rounds, out of time", round)
			break
		}
		cmd, lines := startChild(t, "writer", childDir+"="+dir)
		n := 0
		killAt := 200 + 150*round
		var killed bool
		for lines.Scan() {
			stream, rev, ok := parseAck(lines.Text())
			if !ok {
				t.Fatalf("child printed %q", lines.Text())
			}
			acked[stream] = max(acked[stream], rev)
			n++
			if n == 50 && round == 0 {
				checkLiveDirFromOutside(t, dir, cmd.Process.Pid, stream, rev)
			}
			if n == killAt && !killed {
				// Appends are in flight all the time: the kill lands mid-append.
				if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				killed = true
			}
			// Lines the child wrote before it died were acknowledged too.
		}
		err := cmd.Wait()
		if !killed {
			t.Fatalf("round %d: child ended after %d acknowledgements: %v", round, n, err)
		}
		t.Logf("round %d: killed after %d acknowledgements (%v)", round, n, err)
		checkCrashedDir(t, dir, acked)
	}
}

func parseAck(line string) (stream string, rev uint64, ok bool) {
	f := strings.Fields(line)
	if len(f) != 4 || f[0] != "ACK" {
		return "", 0, false
	}
	rev, err := strconv.ParseUint(f[2], 10, 64)
	return f[1], rev, err == nil
}

// checkLiveDirFromOutside checks, while the child writes, that the lock
// names the child and that a read-only store sees an acknowledged append.
func checkLiveDirFromOutside(t *testing.T, dir string, pid int, stream string, rev uint64) {
	t.Helper()
	_, err := embedded.Open(t.Context(), dir, embedded.Options{})
	if !errors.Is(err, embedded.ErrLocked) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", pid)) {
		t.Errorf("Open of the child's directory: got %v, want ErrLocked naming pid %d", err, pid)
	}
	r, err := embedded.OpenReadOnly(t.Context(), dir, embedded.Options{})
	if err != nil {
		t.Fatalf("OpenReadOnly while the child writes: %v", err)
	}
	defer r.Close()
	got, err := r.ReadStream(t.Context(), stream, rev, 1)
	if err != nil || len(got) != 1 {
		t.Errorf("read-only store does not see acknowledged %s@%d: %d events, %v", stream, rev, len(got), err)
	}
}

func checkCrashedDir(t *testing.T, dir string, acked map[string]uint64) {
	t.Helper()
	ctx := t.Context()
	s, err := embedded.Open(ctx, dir, embedded.Options{})
	if err != nil {
		t.Fatalf("reopen after the crash: %v", err)
	}
	defer s.Close()

	total := 0
	for stream, ackedRev := range acked {
		var events []eventstore.RecordedEvent
		for from := uint64(0); ; {
			page, err := s.ReadStream(ctx, stream, from, 1000)
			if err != nil {
				t.Fatalf("read %s: %v", stream, err)
			}
			if len(page) == 0 {
				break
			}
			events = append(events, page...)
			from = page[len(page)-1].Revision + 1
		}
		total += len(events)
		if n := uint64(len(events)); n == 0 || n-1 < ackedRev {
			t.Errorf("%s: %d events stored, but revision %d was acknowledged", stream, n, ackedRev)
		}
		for i := 0; i < len(events); {
			var first crashEvent
			if err := json.Unmarshal(events[i].Data, &first); err != nil {
				t.Fatalf("%s@%d: %v", stream, events[i].Revision, err)
			}
			for k := range first.Size {
				if i+k >= len(events) {
					t.Fatalf("%s: append %s stored in part: %d of %d events", stream, first.Append, k, first.Size)
				}
				e := events[i+k]
				var got crashEvent
				if err := json.Unmarshal(e.Data, &got); err != nil {
					t.Fatalf("%s@%d: %v", stream, e.Revision, err)
				}
				if e.Revision != uint64(i+k) {
					t.Fatalf("%s: event %d has revision %d: a gap", stream, i+k, e.Revision)
				}
				if got.Append != first.Append || got.Index != k {
					t.Fatalf("%s@%d: event %d of append %s, want event %d of %s", stream, e.Revision, got.Index, got.Append, k, first.Append)
				}
			}
			i += first.Size
		}
	}

	// The global order holds every event once, rising.
	sub, err := s.Subscribe(ctx, eventstore.Filter{StreamPrefix: "crash-"}, eventstore.FromStart())
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	var last uint64
	for n := 0; ; n++ {
		item := recvItem(t, sub)
		if item.CaughtUp {
			if n != total {
				t.Errorf("subscription caught up after %d events, streams hold %d", n, total)
			}
			break
		}
		if item.Event.Position.Commit <= last {
			t.Fatalf("position %d after %d", item.Event.Position.Commit, last)
		}
		last = item.Event.Position.Commit
	}
}

// childReader checks, from another process, that the parent holds the lock,
// then follows a stream through a read-only store: it prints "CAUGHTUP <n>"
// and "SAW <n>" once it has seen the wanted number of events.
func childReader(ctx context.Context) error {
	dir, stream := os.Getenv(childDir), os.Getenv(childStream)
	want, err := strconv.Atoi(os.Getenv(childWant))
	if err != nil {
		return err
	}
	_, err = embedded.Open(ctx, dir, embedded.Options{})
	if !errors.Is(err, embedded.ErrLocked) || !strings.Contains(err.Error(), "pid "+os.Getenv(childParent)+" ") {
		return fmt.Errorf("Open of the parent's directory: got %v, want ErrLocked naming pid %s", err, os.Getenv(childParent))
	}
	fmt.Println("LOCKED")
	s, err := embedded.OpenReadOnly(ctx, dir, embedded.Options{PollInterval: 10 * time.Millisecond})
	if err != nil {
		return err
	}
	defer s.Close()
	sub, err := s.Subscribe(ctx, eventstore.Filter{StreamPrefix: stream}, eventstore.FromStart())
	if err != nil {
		return err
	}
	defer sub.Close()
	for n := 0; n < want; {
		item, err := sub.Recv(ctx)
		if err != nil {
			return err
		}
		if item.CaughtUp {
			fmt.Println("CAUGHTUP", n)
			continue
		}
		if item.Event.Revision != uint64(n) {
			return fmt.Errorf("got %s@%d, want revision %d", item.Event.Stream, item.Event.Revision, n)
		}
		n++
	}
	fmt.Println("SAW", want)
	return nil
}

func TestReaderInAnotherProcessFollowsTheWriter(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	t.Parallel()
	dir := t.TempDir()
	s := openStore(t, dir)
	defer s.Close()
	appendN(t, s, "xproc", 0, 10)

	cmd, lines := startChild(t, "reader",
		childDir+"="+dir, childStream+"=xproc", childWant+"=20", childParent+"="+strconv.Itoa(os.Getpid()))
	expectLine := func(want string) {
		t.Helper()
		if !lines.Scan() {
			t.Fatalf("child ended before printing %q: %v", want, lines.Err())
		}
		if got := lines.Text(); got != want {
			t.Fatalf("child printed %q, want %q", got, want)
		}
	}
	expectLine("LOCKED")
	expectLine("CAUGHTUP 10")
	appendN(t, s, "xproc", 10, 10)
	expectLine("SAW 20")
	for lines.Scan() {
		t.Errorf("child printed %q after it was done", lines.Text())
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
}
