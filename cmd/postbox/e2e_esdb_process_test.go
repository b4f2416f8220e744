package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

var (
	standinOnce sync.Once
	standinPath string
	standinErr  error
)

// standinBinary builds cmd/esdbstandin once per test run.
func standinBinary(t *testing.T) string {
	t.Helper()
	standinOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		standinPath = filepath.Join(binDir, "esdbstandin")
		out, err := exec.CommandContext(ctx, "go", "build", "-o", standinPath, "../esdbstandin").CombinedOutput()
		if err != nil {
			standinErr = fmt.Errorf("go build ../esdbstandin: %w\n%s", err, out)
		}
	})
	if standinErr != nil {
		t.Fatal(standinErr)
	}
	return standinPath
}

// startStandin runs the EventStoreDB stand-in as its own process, modelling
// profile, on a free loopback port, and returns the connection string it
// prints. It is stopped when the test ends.
func startStandin(t *testing.T, profile string) string {
	t.Helper()
	cmd := exec.Command(standinBinary(t), "--listen", "127.0.0.1:0", "--profile", profile)
	cmd.Env = cleanEnv()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	conn := make(chan string, 1)
	go func() {
		defer close(done)
		defer func() { _ = cmd.Wait() }()
		lines := bufio.NewScanner(out)
		for lines.Scan() {
			if _, after, ok := strings.Cut(lines.Text(), "connect with "); ok {
				conn <- after
			}
		}
	}()
	select {
	case c := <-conn:
		return c
	case <-done:
		t.Fatal("esdbstandin exited before it served")
	case <-time.After(30 * time.Second):
		t.Fatal("esdbstandin did not say where it listens")
	}
	return ""
}

// bigEvent is an invite of about size bytes, told apart by its user ID.
func bigEvent(userID uint64, size int) *syncv1.Event {
	return &syncv1.Event{Kind: &syncv1.Event_UserInvited_{UserInvited: &syncv1.Event_UserInvited{
		UserId: userID, InviterId: 1, InviteId: strings.Repeat("i", size),
	}}}
}

// sendEvents sends event(u) for every u in users through n's admin API
// from workers goroutines, recording each sequence number.
func (n *e2eNode) sendEvents(to *e2eNode, l *e2eLedger, users []uint64, workers int, event func(uint64) *syncv1.Event) {
	n.t.Helper()
	next := make(chan uint64)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for u := range next {
				ctx, cancel := context.WithTimeout(n.t.Context(), 30*time.Second)
				res, err := n.admins.Send(ctx, connect.NewRequest(&adminv1.SendRequest{To: to.id, Event: event(u)}))
				cancel()
				if err == nil {
					err = l.record(res.Msg.GetSeq(), u)
				}
				if err != nil {
					errs <- fmt.Errorf("send %d from %s to %s: %w", u, n.name, to.name, err)
					for range next {
					}
					return
				}
			}
		})
	}
	for _, u := range users {
		next <- u
	}
	close(next)
	wg.Wait()
	close(errs)
	for err := range errs {
		n.t.Fatal(err)
	}
}

// watchUsers returns the user IDs of every event n has received, in order,
// of either kind the tests send.
func watchUsers(t *testing.T, n *e2eNode) []uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	stream, err := n.admins.Watch(ctx, connect.NewRequest(&adminv1.WatchRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	var users []uint64
	for stream.Receive() {
		if ev := stream.Msg().GetEvent().GetEvent(); ev != nil {
			users = append(users, ev.GetUserAddedToGuild().GetUserId()+ev.GetUserInvited().GetUserId())
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	return users
}

// backlogSize is the queued backlog of TestSeparateProcessesOnEventStoreDB:
// POSTBOX_E2E_ESDB_BACKLOG events if set, else the full 20000
// (about 20 s under -race on two cores; a smaller number makes a quicker
// local run).
func backlogSize(t *testing.T) uint64 {
	if v := os.Getenv("POSTBOX_E2E_ESDB_BACKLOG"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n == 0 {
			t.Fatalf("POSTBOX_E2E_ESDB_BACKLOG=%q: want a positive number", v)
		}
		return n
	}
	return 20000
}

// TestSeparateProcessesOnEventStoreDB runs everything as its own process:
// two postbox servers, each on its own EventStoreDB stand-in process
// (cmd/esdbstandin, a test double) modelling 24.10 with its default 1 MiB
// appends. A push of 256 events of 10 KiB each (2.5 MiB, in pushes of up
// to 1 MiB, each stored in appends under 1 MiB) is delivered; then a
// backlog queued while the receiver is down (backlogSize events of 400
// bytes) is drained by its startup Pull (replies of up to 3 MiB), every
// event once and in order; and `postbox audit --store` passes on both
// stores.
func TestSeparateProcessesOnEventStoreDB(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	t.Parallel()
	storeA, storeB := startStandin(t, "24.10"), startStandin(t, "24.10")
	a := newE2ENode(t, "A", "", "--store", storeA, "--push-retries", "0", "--resume-probe=false")
	b := newE2ENode(t, "B", "", "--store", storeB)
	a.start()
	b.start()

	// One event first, so that B announces it takes several per push.
	ledger := newE2ELedger()
	a.sendEvents(b, ledger, []uint64{1}, 1, e2eEvent)
	e2eWait(t, 20*time.Second, "B to receive the first event", func() (bool, string) {
		got := watchUsers(t, b)
		return len(got) == 1, fmt.Sprint(got)
	})
	const big = 256
	a.sendEvents(b, ledger, e2eUsers(2, big), 32, func(u uint64) *syncv1.Event { return bigEvent(u, 10<<10) })
	e2eWait(t, 30*time.Second, "B to receive the events of 10 KiB", func() (bool, string) {
		got := watchUsers(t, b)
		return len(got) == 1+big, fmt.Sprint(len(got))
	})

	b.kill()
	backlog := backlogSize(t)
	start := time.Now()
	// Events of 400 bytes: even the default backlog is more than one
	// append holds, and the full one more than one Pull reply.
	a.sendEvents(b, ledger, e2eUsers(2+big, backlog), 32, func(u uint64) *syncv1.Event { return bigEvent(u, 400) })
	t.Logf("queued %d events in %v", backlog, time.Since(start).Round(time.Millisecond))
	start = time.Now()
	b.start()
	want := 1 + big + int(backlog)
	e2eWait(t, 120*time.Second, "B to pull its backlog at startup", func() (bool, string) {
		got := watchUsers(t, b)
		return len(got) == want, fmt.Sprint(len(got))
	})
	t.Logf("drained by Pull in %v", time.Since(start).Round(time.Millisecond))
	got, wantUsers := watchUsers(t, b), ledger.want(t)
	if len(got) != len(wantUsers) {
		t.Fatalf("B received %d events, want %d", len(got), len(wantUsers))
	}
	for i := range got {
		if got[i] != wantUsers[i] {
			t.Fatalf("B's event %d is user %d, want %d: not once and in order", i, got[i], wantUsers[i])
		}
	}
	for name, store := range map[string]string{"A": storeA, "B": storeB} {
		if out, errOut, code := runCLI(t, "audit", "--store", store); code != 0 {
			t.Fatalf("audit --store of %s: exit %d\n%s\n%s", name, code, out, errOut)
		}
	}
}
