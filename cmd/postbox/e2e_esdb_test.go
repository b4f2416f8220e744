package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb/fakestreams"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
)

// watchAll returns the user IDs of every event n has received, in order,
// through the admin API (which reads whichever store n runs on).
func watchAll(t *testing.T, n *e2eNode) []uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	stream, err := n.admins.Watch(ctx, connect.NewRequest(&adminv1.WatchRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	var users []uint64
	for stream.Receive() {
		if ev := stream.Msg().GetEvent(); ev != nil {
			users = append(users, ev.GetEvent().GetUserAddedToGuild().GetUserId())
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	return users
}

// TestServeOnEventStoreDBProtocol runs two servers with --store esdb://...,
// each on its own in-process test double of the EventStoreDB gRPC API (the
// real client library talks to it; no EventStoreDB server is involved),
// through a push, a queue-mode episode and a startup pull, then audits one
// of them with --store; once per server version the test double models
// and the adapter supports.
func TestServeOnEventStoreDBProtocol(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	t.Parallel()
	for _, profile := range []string{"22.10", "23.10", "24.10", "24.10.4", "25.1"} {
		t.Run(profile, func(t *testing.T) {
			t.Parallel()
			serveOnEventStoreDBProtocol(t, profile)
		})
	}
}

func serveOnEventStoreDBProtocol(t *testing.T, profile string) {
	storeA := fakestreams.StartServer(t, fakestreams.Options{Profile: profile}).ConnString()
	storeB := fakestreams.StartServer(t, fakestreams.Options{Profile: profile}).ConnString()
	a := newE2ENode(t, "A", "", "--store", storeA, "--push-retries", "1", "--resume-probe=false")
	b := newE2ENode(t, "B", "", "--store", storeB)
	a.start()
	b.start()

	ledger := newE2ELedger()
	a.sendMany(b, ledger, e2eUsers(1, 5))
	e2eWait(t, 20*time.Second, "B to receive 5 events", func() (bool, string) {
		got := watchAll(t, b)
		return len(got) == 5, fmt.Sprint(got)
	})

	b.kill()
	a.sendMany(b, ledger, e2eUsers(6, 3))
	e2eWait(t, 20*time.Second, "A to queue for B", func() (bool, string) {
		out, _, _ := runCLI(t, "peers", "--json", "--admin", a.admin)
		return strings.Contains(out, "MODE_QUEUE"), out
	})
	b.start()
	e2eWait(t, 20*time.Second, "B to pull its backlog at startup", func() (bool, string) {
		got := watchAll(t, b)
		return len(got) == 8, fmt.Sprint(got)
	})
	// Sends may go concurrently: the order is that of the sequence numbers
	// A gave them.
	if got, want := watchAll(t, b), ledger.want(t); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("B received %v, want %v in order", got, want)
	}

	out, errOut, code := runCLI(t, "audit", "--json", "--store", storeA)
	if code != 0 {
		t.Fatalf("audit --store of A: exit %d\n%s\n%s", code, out, errOut)
	}
	report, err := decodeAudit(out)
	if err != nil {
		t.Fatalf("audit --json: %v\n%s", err, out)
	}
	if len(report.Peers) != 1 || report.Peers[0].Head != 8 || report.Peers[0].Delivered != 8 {
		t.Fatalf("audit of A: %s", out)
	}
}

// TestServeOnSmallAppendLimit runs two servers whose test doubles (24.10.4
// rules) take only appends of a few KiB, with the adapter's append budget
// set to match in the connection string: pushed batches and a pulled
// backlog far larger than one append are written in many consecutive
// appends, and every event arrives once and in order.
func TestServeOnSmallAppendLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	t.Parallel()
	opts := fakestreams.Options{Profile: "24.10.4", MaxAppendSize: 4000}
	storeA := fakestreams.StartServer(t, opts).ConnString() + "&maxAppendBytes=3000"
	storeB := fakestreams.StartServer(t, opts).ConnString() + "&maxAppendBytes=3000"
	a := newE2ENode(t, "A", "", "--store", storeA, "--push-retries", "1", "--resume-probe=false")
	b := newE2ENode(t, "B", "", "--store", storeB)
	a.start()
	b.start()

	ledger := newE2ELedger()
	a.sendMany(b, ledger, e2eUsers(1, 40))
	e2eWait(t, 30*time.Second, "B to receive 40 events", func() (bool, string) {
		got := watchAll(t, b)
		return len(got) == 40, fmt.Sprint(len(got))
	})

	b.kill()
	a.sendMany(b, ledger, e2eUsers(41, 160))
	b.start()
	e2eWait(t, 30*time.Second, "B to pull its backlog at startup", func() (bool, string) {
		got := watchAll(t, b)
		return len(got) == 200, fmt.Sprint(len(got))
	})
	if got, want := watchAll(t, b), ledger.want(t); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("B received %v, want %v in order", got, want)
	}
	for name, store := range map[string]string{"A": storeA, "B": storeB} {
		if out, errOut, code := runCLI(t, "audit", "--store", store); code != 0 {
			t.Fatalf("audit --store of %s: exit %d\n%s\n%s", name, code, out, errOut)
		}
	}
}
