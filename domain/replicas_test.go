package domain

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

var replicaT0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

func TestReplicaLivenessFromItsLastHeartbeat(t *testing.T) {
	t.Parallel()
	lease := 10 * time.Second
	cases := []struct {
		name  string
		given ReplicaHeartbeat
		when  time.Time
		then  bool
	}{
		{"just written", ReplicaHeartbeat{At: replicaT0, Lease: lease}, replicaT0, true},
		{"within the lease", ReplicaHeartbeat{At: replicaT0, Lease: lease}, replicaT0.Add(9 * time.Second), true},
		{"exactly one lease old", ReplicaHeartbeat{At: replicaT0, Lease: lease}, replicaT0.Add(lease), true},
		{"past the lease", ReplicaHeartbeat{At: replicaT0, Lease: lease}, replicaT0.Add(lease + time.Nanosecond), false},
		{"from a clock a little ahead", ReplicaHeartbeat{At: replicaT0.Add(time.Second), Lease: lease}, replicaT0, true},
		{"left", ReplicaHeartbeat{At: replicaT0, Lease: lease, Leaving: true}, replicaT0, false},
		{"left, and past the lease", ReplicaHeartbeat{At: replicaT0, Lease: lease, Leaving: true}, replicaT0.Add(time.Minute), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.given.LiveAt(tc.when); got != tc.then {
				t.Fatalf("LiveAt = %v, want %v", got, tc.then)
			}
		})
	}
}

func TestReplicaSetKeepsEachReplicasLatestHeartbeat(t *testing.T) {
	t.Parallel()
	lease := 10 * time.Second
	var s ReplicaSet
	if live := s.Live(replicaT0); len(live) != 0 {
		t.Fatalf("empty set: live %v", live)
	}
	// Given heartbeats of three replicas, one of them read out of order.
	s.Apply(ReplicaHeartbeat{Replica: "b", At: replicaT0, Lease: lease})
	s.Apply(ReplicaHeartbeat{Replica: "a", At: replicaT0.Add(5 * time.Second), Lease: lease})
	s.Apply(ReplicaHeartbeat{Replica: "a", At: replicaT0, Lease: lease}) // older: ignored
	s.Apply(ReplicaHeartbeat{Replica: "c", At: replicaT0, Lease: lease})
	if h, ok := s.Latest("a"); !ok || !h.At.Equal(replicaT0.Add(5*time.Second)) {
		t.Fatalf("latest of a: %+v, %v", h, ok)
	}
	if _, ok := s.Latest("d"); ok {
		t.Fatal("a replica never heard of has a heartbeat")
	}
	// When 12 s have passed, then only a is live.
	if got := s.Live(replicaT0.Add(12 * time.Second)); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("live at +12s: %v", got)
	}
	if got := s.Live(replicaT0.Add(time.Second)); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("live at +1s: %v, want sorted a b c", got)
	}
	// When c says it leaves, then it is not live at once.
	s.Apply(ReplicaHeartbeat{Replica: "c", At: replicaT0.Add(time.Second), Lease: lease, Leaving: true})
	if got := s.Live(replicaT0.Add(time.Second)); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("live after c left: %v", got)
	}
	// A heartbeat at the same time as the latest replaces it.
	s.Apply(ReplicaHeartbeat{Replica: "b", At: replicaT0, Lease: lease, Leaving: true})
	if got := s.Live(replicaT0.Add(time.Second)); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("live after b left: %v", got)
	}
}

func TestReplicaSetNextExpiryIsTheEarliestOfTheLiveOnes(t *testing.T) {
	t.Parallel()
	var s ReplicaSet
	if _, ok := s.NextExpiry(replicaT0); ok {
		t.Fatal("an empty set has an expiry")
	}
	s.Apply(ReplicaHeartbeat{Replica: "gone", At: replicaT0.Add(-time.Minute), Lease: 10 * time.Second})
	s.Apply(ReplicaHeartbeat{Replica: "late", At: replicaT0.Add(3 * time.Second), Lease: 10 * time.Second})
	s.Apply(ReplicaHeartbeat{Replica: "early", At: replicaT0, Lease: 10 * time.Second})
	s.Apply(ReplicaHeartbeat{Replica: "left", At: replicaT0, Lease: 5 * time.Second, Leaving: true})
	s.Apply(ReplicaHeartbeat{Replica: "later", At: replicaT0.Add(5 * time.Second), Lease: 10 * time.Second})
	next, ok := s.NextExpiry(replicaT0.Add(time.Second))
	if !ok || !next.Equal(replicaT0.Add(10*time.Second)) {
		t.Fatalf("next expiry %v, %v; want +10s (early's)", next, ok)
	}
	if _, ok := (&ReplicaSet{latest: map[string]ReplicaHeartbeat{"x": {At: replicaT0, Lease: time.Second}}}).NextExpiry(replicaT0.Add(time.Minute)); ok {
		t.Fatal("a set with no live replica has an expiry")
	}
}

func peerNames(n int) []string {
	peers := make([]string, n)
	for i := range peers {
		peers[i] = fmt.Sprintf("p%05d", i)
	}
	return peers
}

func assign(peers, live []string) map[string]string {
	owners := make(map[string]string, len(peers))
	for _, p := range peers {
		o, ok := PeerOwner(p, live)
		if !ok {
			panic("no owner")
		}
		owners[p] = o
	}
	return owners
}

func countOwners(owners map[string]string) map[string]int {
	n := make(map[string]int)
	for _, o := range owners {
		n[o]++
	}
	return n
}

// within reports whether got is within frac of want.
func within(got int, want, frac float64) bool {
	return float64(got) >= want*(1-frac) && float64(got) <= want*(1+frac)
}

func TestTenThousandPeersSpreadEvenlyOverThreeReplicas(t *testing.T) {
	t.Parallel()
	// Given 10,000 peers and three live replicas, when each peer is
	// assigned, then each replica owns a third of them, within 5%.
	owners := assign(peerNames(10000), []string{"host-a-1f2e", "host-b-9c0d", "host-c-77aa"})
	counts := countOwners(owners)
	if len(counts) != 3 {
		t.Fatalf("owners: %v", counts)
	}
	for r, n := range counts {
		if !within(n, 10000.0/3, 0.05) {
			t.Errorf("%s owns %d peers, want 3333 ± 5%%", r, n)
		}
	}
}

func TestAReplicaLeavingHandsOnOnlyItsOwnPeersSpreadOverTheOthers(t *testing.T) {
	t.Parallel()
	peers := peerNames(10000)
	// Given three replicas, when c leaves...
	before := assign(peers, []string{"a", "b", "c"})
	after := assign(peers, []string{"a", "b"})
	moved := map[string]int{}
	for _, p := range peers {
		if before[p] != "c" {
			// ...then a peer of a or b stays where it was...
			if after[p] != before[p] {
				t.Fatalf("%s moved from %s to %s though its owner stayed", p, before[p], after[p])
			}
			continue
		}
		moved[after[p]]++
	}
	// ...and c's peers are spread evenly over a and b.
	total := moved["a"] + moved["b"]
	if total != countOwners(before)["c"] || !within(moved["a"], float64(total)/2, 0.1) {
		t.Fatalf("c's %d peers went %v", countOwners(before)["c"], moved)
	}
}

func TestAReplicaJoiningTakesAboutOneNthFromEveryOther(t *testing.T) {
	t.Parallel()
	peers := peerNames(10000)
	before := assign(peers, []string{"a", "b", "c"})
	// When d joins...
	after := assign(peers, []string{"a", "b", "c", "d"})
	from := map[string]int{}
	for _, p := range peers {
		if after[p] == before[p] {
			continue
		}
		// ...then every peer that moves goes to d...
		if after[p] != "d" {
			t.Fatalf("%s moved from %s to %s, not to the new replica", p, before[p], after[p])
		}
		from[before[p]]++
	}
	// ...about a quarter of the peers, about a quarter of each replica's.
	if n := countOwners(after)["d"]; !within(n, 2500, 0.1) {
		t.Fatalf("d took %d peers, want about 2500", n)
	}
	for _, r := range []string{"a", "b", "c"} {
		if !within(from[r], float64(countOwners(before)[r])/4, 0.15) {
			t.Errorf("d took %d of %s's %d peers, want about a quarter", from[r], r, countOwners(before)[r])
		}
	}
}

func TestPeerOwnerIsTheSameForTheSameInputs(t *testing.T) {
	t.Parallel()
	// The same live set in any order gives the same owner, every time, in
	// every build: the weights are pinned here, since replicas of
	// different builds must agree.
	pinned := map[string]string{"p00000": "c", "p00001": "c", "p00002": "b", "p00003": "a", "p00004": "a", "p00005": "c"}
	orders := [][]string{{"a", "b", "c"}, {"c", "b", "a"}, {"b", "a", "c"}}
	for p, want := range pinned {
		for _, live := range orders {
			if got, ok := PeerOwner(p, live); !ok || got != want {
				t.Errorf("owner of %s over %v: %q, %v; want %q", p, live, got, ok, want)
			}
		}
	}
	if got, ok := PeerOwner("p00000", []string{"solo"}); !ok || got != "solo" {
		t.Fatalf("a single replica owns every peer: %q, %v", got, ok)
	}
	if got, ok := PeerOwner("p00000", nil); ok || got != "" {
		t.Fatalf("no live replica: %q, %v", got, ok)
	}
}

func TestATermGrowsByOneEachTimeThePeerChangesHands(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name        string
		given       OwnerTerm
		when        string
		then        OwnerTerm
		thenChanged bool
	}{
		{"the first owner takes term 1", OwnerTerm{}, "a", OwnerTerm{Term: 1, Replica: "a"}, true},
		{"the owner keeps its term", OwnerTerm{Term: 4, Replica: "a"}, "a", OwnerTerm{Term: 4, Replica: "a"}, false},
		{"another replica takes the next term", OwnerTerm{Term: 4, Replica: "a"}, "b", OwnerTerm{Term: 5, Replica: "b"}, true},
		{"a former owner comes back under a new term", OwnerTerm{Term: 5, Replica: "b"}, "a", OwnerTerm{Term: 6, Replica: "a"}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, changed := tc.given.HandOver(tc.when)
			if got != tc.then || changed != tc.thenChanged {
				t.Fatalf("HandOver(%q) = %+v, %v; want %+v, %v", tc.when, got, changed, tc.then, tc.thenChanged)
			}
		})
	}
}

func TestRecordedTermsFoldToTheLatest(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		given OwnerTerm
		when  OwnerTerm
		then  OwnerTerm
	}{
		{"a first record", OwnerTerm{}, OwnerTerm{Term: 1, Replica: "a"}, OwnerTerm{Term: 1, Replica: "a"}},
		{"a later term", OwnerTerm{Term: 1, Replica: "a"}, OwnerTerm{Term: 2, Replica: "b"}, OwnerTerm{Term: 2, Replica: "b"}},
		{"an earlier term read late", OwnerTerm{Term: 3, Replica: "c"}, OwnerTerm{Term: 2, Replica: "b"}, OwnerTerm{Term: 3, Replica: "c"}},
		{"the first record of a term stands", OwnerTerm{Term: 3, Replica: "c"}, OwnerTerm{Term: 3, Replica: "a"}, OwnerTerm{Term: 3, Replica: "c"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.given.Apply(tc.when); got != tc.then {
				t.Fatalf("Apply = %+v, want %+v", got, tc.then)
			}
		})
	}
}
