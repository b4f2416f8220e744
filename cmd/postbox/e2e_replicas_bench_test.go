package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// TestReplicaDeliveryRates is a benchmark run as a command, not in CI:
//
//	POSTBOX_REPLICA_BENCH=1 go test -run TestReplicaDeliveryRates -v ./cmd/postbox
//
// For 1, 2 and 3 replica processes on one stand-in (24.10 profile), it
// sends POSTBOX_REPLICA_BENCH_EVENTS events (default 4,000) spread over
// four Postbox peers and two upstream-style peers, through the replicas in
// turn, and prints how long the sends took and how long until every peer
// held every event, as events per second. On a shared 2-core machine the
// figures are reported, not a target: the replicas, the peers and the
// stand-in share the cores.
func TestReplicaDeliveryRates(t *testing.T) {
	if os.Getenv("POSTBOX_REPLICA_BENCH") != "1" {
		t.Skip("a benchmark: POSTBOX_REPLICA_BENCH=1 runs it")
	}
	postboxBinary(t)
	events := 4000
	if v := os.Getenv("POSTBOX_REPLICA_BENCH_EVENTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 6 {
			t.Fatalf("POSTBOX_REPLICA_BENCH_EVENTS=%q: want a number of at least 6", v)
		}
		events = n
	}
	var lines []string
	for replicas := 1; replicas <= 3; replicas++ {
		t.Run(fmt.Sprintf("replicas=%d", replicas), func(t *testing.T) {
			sendFor, deliverFor := replicaDeliveryRun(t, replicas, events)
			line := fmt.Sprintf("%d replica(s): %d events to 6 peers; sent in %v (%.0f events/s), all delivered after %v (%.0f events/s)",
				replicas, events, sendFor.Round(time.Millisecond), float64(events)/sendFor.Seconds(),
				deliverFor.Round(time.Millisecond), float64(events)/deliverFor.Seconds())
			t.Log(line)
			lines = append(lines, line)
		})
	}
	for _, l := range lines {
		fmt.Println(l)
	}
}

// replicaDeliveryRun starts a stand-in, n replicas and six peers, sends
// events and returns how long the sends took, and how long from the first
// send until every peer held every event.
func replicaDeliveryRun(t *testing.T, n, events int) (sendFor, deliverFor time.Duration) {
	store := startStandin(t, "24.10")
	keyPath := filepath.Join(t.TempDir(), "key.ed25519")
	var reps []*e2eNode
	for i := range n {
		id := ""
		if i > 0 {
			id = reps[0].id
		}
		r := newE2ENode(t, fmt.Sprintf("R%d", i+1), id, "--store", store, "--replica", fmt.Sprintf("r%d", i+1), "--key-file", keyPath)
		r.start()
		reps = append(reps, r)
	}
	var postboxes []*e2eNode
	for i := range 4 {
		p := newE2ENode(t, fmt.Sprintf("P%d", i+1), "")
		p.start()
		postboxes = append(postboxes, p)
	}
	ups := []*upstreamPeer{newUpstreamPeer(t), newUpstreamPeer(t)}
	var targets []string
	for _, p := range postboxes {
		targets = append(targets, p.id)
	}
	targets = append(targets, ups[0].id, ups[1].id)
	ledgers := map[string]*e2eLedger{}
	for _, to := range targets {
		ledgers[to] = newE2ELedger()
	}
	user := uint64(1)
	start := time.Now()
	sendRound(t, reps, nil, targets, ledgers, &user, events)
	sendFor = time.Since(start)
	for _, p := range postboxes {
		want := len(ledgers[p.id].want(t))
		e2eWait(t, 5*time.Minute, p.name+" to receive every event", func() (bool, string) {
			got := len(watchUsers(t, p))
			return got >= want, fmt.Sprint(got, " of ", want)
		})
	}
	for i, u := range ups {
		want := len(ledgers[u.id].want(t))
		e2eWait(t, 5*time.Minute, fmt.Sprintf("upstream peer %d to receive every event", i), func() (bool, string) {
			first, _ := u.firstArrivals()
			return len(first) >= want, fmt.Sprint(len(first), " of ", want)
		})
	}
	return sendFor, time.Since(start)
}
