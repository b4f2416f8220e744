package domain

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func testKey(seed byte) ed25519.PublicKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, 32)).Public().(ed25519.PublicKey)
}

var (
	srvA  = MustParseServerID("a.example:2289")
	srvB  = MustParseServerID("b.example:2289")
	srvB2 = MustParseServerID("b2.example:2289")
	srvB3 = MustParseServerID("b3.example:2289")
	srvC  = MustParseServerID("c.example:2289")
	us1   = MustParseServerID("us1.example:2289")
	us2   = MustParseServerID("us2.example:2289")
	us3   = MustParseServerID("us3.example:2289")
	t0    = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
)

// givenPeers folds records, each a second after the one before.
func givenPeers(t *testing.T, records ...PeerEvent) *Peers {
	t.Helper()
	p := NewPeers()
	for i, e := range records {
		if err := p.Apply(e, t0.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatalf("record %d (%T): %v", i, e, err)
		}
	}
	return p
}

// Given a peer registered, its key learned, renamed twice with its key
// rotated after, then it is found by every ID, each former ID keeps the key
// it had, and it is listed once under its current ID.
func TestPeersFoldRegistrationsKeysAndRenames(t *testing.T) {
	t.Parallel()
	p := givenPeers(t,
		OwnServerIDChanged{New: us1},
		PeerRegistered{Peer: "pb", ServerID: srvB, OurServerID: us1},
		PeerKeyLearned{Peer: "pb", Key: testKey(1)},
		PeerRenamed{Peer: "pb", Old: srvB, New: srvB2},
		PeerRenamed{Peer: "pb", Old: srvB2, New: srvB3},
		PeerKeyLearned{Peer: "pb", Key: testKey(3)},
		PeerRegistered{Peer: "pa", ServerID: srvA},
	)
	for _, id := range []ServerID{srvB, srvB2, srvB3} {
		peer, current, ok := p.Resolve(id)
		if !ok || peer != "pb" || current != srvB3 {
			t.Fatalf("Resolve(%s) = %q, %s, %v", id, peer, current, ok)
		}
		if got, ok := p.Lookup(id); !ok || got != "pb" {
			t.Fatalf("Lookup(%s) = %q, %v", id, got, ok)
		}
	}
	if _, _, ok := p.Resolve(srvC); ok {
		t.Fatal("a stranger resolved")
	}
	if _, ok := p.Lookup(srvC); ok {
		t.Fatal("a stranger looked up")
	}
	keys := p.Keys()
	want := map[ServerID]ed25519.PublicKey{srvB: testKey(1), srvB2: testKey(1), srvB3: testKey(3)}
	if !reflect.DeepEqual(keys, want) {
		t.Fatalf("Keys = %v, want %v", keys, want)
	}
	entry, ok := p.Peer("pb")
	if !ok || entry.ServerID != srvB3 || !slices.Equal(entry.Former, []ServerID{srvB, srvB2}) || !entry.Key.Equal(testKey(3)) {
		t.Fatalf("Peer(pb) = %+v, %v", entry, ok)
	}
	if _, ok := p.Peer("px"); ok {
		t.Fatal("an unknown peer found")
	}
	list := p.List()
	if len(list) != 2 || list[0].ID != "pa" || list[1].ID != "pb" {
		t.Fatalf("List = %+v, want pa then pb (by server ID)", list)
	}
}

// A former ID whose key was not learned before the rename gets the
// current key: the rename was accepted because the new ID served it.
func TestPeersFormerIDsWithoutAKeyTakeTheCurrentOne(t *testing.T) {
	t.Parallel()
	p := givenPeers(t,
		PeerRegistered{Peer: "pb", ServerID: srvB},
		PeerRenamed{Peer: "pb", Old: srvB, New: srvB2},
		PeerKeyLearned{Peer: "pb", Key: testKey(2)},
		PeerRegistered{Peer: "pc", ServerID: srvC},
	)
	want := map[ServerID]ed25519.PublicKey{srvB: testKey(2), srvB2: testKey(2)}
	if keys := p.Keys(); !reflect.DeepEqual(keys, want) {
		t.Fatalf("Keys = %v, want %v (none for pc, whose key is unknown)", keys, want)
	}
}

// Given peers with and without a recorded key, then Keyless lists those
// without, by server ID, at most as many as asked for.
func TestPeersListThoseWithoutAKey(t *testing.T) {
	t.Parallel()
	p := givenPeers(t,
		PeerRegistered{Peer: "pc", ServerID: srvC},
		PeerRegistered{Peer: "pb", ServerID: srvB},
		PeerKeyLearned{Peer: "pb", Key: testKey(2)},
		PeerRegistered{Peer: "pa", ServerID: srvA},
	)
	if got := p.Keyless(5); !slices.Equal(got, []ServerID{srvA, srvC}) {
		t.Fatalf("Keyless(5) = %v, want %s and %s", got, srvA, srvC)
	}
	if got := p.Keyless(1); !slices.Equal(got, []ServerID{srvA}) {
		t.Fatalf("Keyless(1) = %v, want %s", got, srvA)
	}
	if got := p.Keyless(0); len(got) != 0 {
		t.Fatalf("Keyless(0) = %v, want none", got)
	}
}

// The rule that won between the registry and the projections: a record
// about a peer no earlier record registered (the engine never writes one)
// is refused and changes nothing, rather than inventing a peer.
func TestPeersRefuseRecordsAboutUnregisteredPeers(t *testing.T) {
	t.Parallel()
	for _, e := range []PeerEvent{
		PeerRenamed{Peer: "px", Old: srvB, New: srvB2},
		PeerKeyLearned{Peer: "px", Key: testKey(1)},
		PeerNotifiedOfNewID{Peer: "px", NewID: us2},
	} {
		p := givenPeers(t, OwnServerIDChanged{New: us1}, PeerRegistered{Peer: "pa", ServerID: srvA})
		before := p.Clone()
		if err := p.Apply(e, t0); !errors.Is(err, ErrUnregisteredPeer) {
			t.Fatalf("%T: err = %v, want ErrUnregisteredPeer", e, err)
		}
		if !reflect.DeepEqual(p, before) {
			t.Fatalf("%T of an unregistered peer changed the fold", e)
		}
	}
	if err := NewPeers().Apply(nil, t0); err == nil {
		t.Fatal("a record of no known kind applied")
	}
}

// Records that repeat what is folded change nothing: a second registration
// of a peer, a rename to the ID the peer has.
func TestPeersRepeatedRecordsChangeNothing(t *testing.T) {
	t.Parallel()
	p := givenPeers(t,
		PeerRegistered{Peer: "pb", ServerID: srvB, OurServerID: us1},
		PeerKeyLearned{Peer: "pb", Key: testKey(1)},
		PeerRenamed{Peer: "pb", Old: srvB, New: srvB2},
	)
	before := p.Clone()
	for _, e := range []PeerEvent{
		PeerRegistered{Peer: "pb", ServerID: srvC, OurServerID: us2},
		PeerRenamed{Peer: "pb", Old: srvB, New: srvB2},
	} {
		if err := p.Apply(e, t0); err != nil {
			t.Fatal(err)
		}
	}
	if !reflect.DeepEqual(p, before) {
		t.Fatal("a repeated record changed the fold")
	}
}

// Which ID a peer knows this server by (the rule that won): the one the
// registration names; for a peer met before this server's ID was recorded,
// the ID this server had then, which a later rename does not change; after
// a notice, the ID the peer accepted.
func TestPeersKnowWhichIDThePeerKnowsUsBy(t *testing.T) {
	t.Parallel()
	// Given a peer met before any ID of ours was recorded (an old data
	// directory), then our first ID recorded (not a rename),
	p := givenPeers(t,
		PeerRegistered{Peer: "pold", ServerID: srvA},
		OwnServerIDChanged{New: us1},
		PeerRegistered{Peer: "pb", ServerID: srvB, OurServerID: us1},
	)
	// it knows our current ID, like a peer met since.
	if !p.KnowsOurID("pold") || !p.KnowsOurID("pb") || p.IDFor(srvA) != us1 || len(NoticesDue(p)) != 0 {
		t.Fatalf("before a rename: knows %v %v, IDFor %s, notices %v", p.KnowsOurID("pold"), p.KnowsOurID("pb"), p.IDFor(srvA), NoticesDue(p))
	}
	// When this server is renamed, both still know the old ID: we sign
	// with it toward them and tell them the new one.
	if err := p.Apply(OwnServerIDChanged{Old: us1, New: us2}, t0); err != nil {
		t.Fatal(err)
	}
	for _, id := range []ServerID{srvA, srvB} {
		if got := p.IDFor(id); got != us1 {
			t.Fatalf("IDFor(%s) = %s after our rename, want the old %s", id, got, us1)
		}
	}
	if due := NoticesDue(p); len(due) != 2 || due[0].ID != "pold" || due[1].ID != "pb" {
		t.Fatalf("notices due %+v, want both peers", due)
	}
	// When one accepts, it knows the new ID; a stranger gets the current.
	if err := p.Apply(PeerNotifiedOfNewID{Peer: "pb", NewID: us2}, t0); err != nil {
		t.Fatal(err)
	}
	if p.IDFor(srvB) != us2 || !p.KnowsOurID("pb") || p.KnowsOurID("pold") || p.IDFor(srvC) != us2 || !p.KnowsOurID("pstranger") {
		t.Fatalf("after B accepted: IDFor(B) %s, IDFor(stranger) %s", p.IDFor(srvB), p.IDFor(srvC))
	}
	// A peer told of an ID we have since left again does not know ours.
	if err := p.Apply(OwnServerIDChanged{Old: us2, New: us3}, t0); err != nil {
		t.Fatal(err)
	}
	if p.KnowsOurID("pb") || p.IDFor(srvB) != us2 {
		t.Fatalf("after a second rename: B knows ours %v, IDFor %s", p.KnowsOurID("pb"), p.IDFor(srvB))
	}
}

// This server's IDs are kept with when each was taken.
func TestPeersKeepOurIDsWithTheirTimes(t *testing.T) {
	t.Parallel()
	p := NewPeers()
	if _, ok := p.OwnID(); ok {
		t.Fatal("an own ID before any record")
	}
	for i, id := range []ServerID{us1, us2, us3} {
		if err := p.Apply(p.ChangeOwnID(id)[0], t0.Add(time.Duration(i)*time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	want := []OwnID{{ID: us1, Since: t0}, {ID: us2, Since: t0.Add(time.Hour)}, {ID: us3, Since: t0.Add(2 * time.Hour)}}
	if got := p.OwnIDs(); !reflect.DeepEqual(got, want) {
		t.Fatalf("OwnIDs = %v, want %v", got, want)
	}
	if own, ok := p.OwnID(); !ok || own != us3 {
		t.Fatalf("OwnID = %s, %v", own, ok)
	}
}

// A clone shares nothing that a record applied to either changes.
func TestPeersCloneIsIndependent(t *testing.T) {
	t.Parallel()
	p := givenPeers(t, OwnServerIDChanged{New: us1}, PeerRegistered{Peer: "pb", ServerID: srvB}, PeerKeyLearned{Peer: "pb", Key: testKey(1)})
	c := p.Clone()
	for _, e := range []PeerEvent{PeerRenamed{Peer: "pb", Old: srvB, New: srvB2}, OwnServerIDChanged{Old: us1, New: us2}, PeerNotifiedOfNewID{Peer: "pb", NewID: us2}} {
		if err := c.Apply(e, t0); err != nil {
			t.Fatal(err)
		}
	}
	entry, _ := p.Peer("pb")
	if _, ok := p.Lookup(srvB2); ok || entry.ServerID != srvB || len(entry.Former) != 0 || entry.FormerKeys != nil || entry.KnowsUsAs != us1 || len(p.OwnIDs()) != 1 {
		t.Fatalf("the original changed with its clone: %+v, own IDs %v", entry, p.OwnIDs())
	}
	if id, _ := c.Lookup(srvB); id != "pb" {
		t.Fatal("the clone lost a former ID")
	}
}

func TestPeersDecisions(t *testing.T) {
	t.Parallel()
	p := givenPeers(t,
		OwnServerIDChanged{New: us1},
		PeerRegistered{Peer: "pb", ServerID: srvB, OurServerID: us1},
		PeerKeyLearned{Peer: "pb", Key: testKey(1)},
		PeerRenamed{Peer: "pb", Old: srvB, New: srvB2},
	)
	t.Run("a first contact records the registration naming our ID, and a key held for it", func(t *testing.T) {
		want := []PeerEvent{PeerRegistered{Peer: "pc", ServerID: srvC, OurServerID: us1}, PeerKeyLearned{Peer: "pc", Key: testKey(5)}}
		if got := p.Register("pc", srvC, testKey(5), ServerID{}); !reflect.DeepEqual(got, want) {
			t.Fatalf("Register = %v", got)
		}
		if got := p.Register("pc", srvC, nil, ServerID{}); !reflect.DeepEqual(got, want[:1]) {
			t.Fatalf("Register without a key = %v", got)
		}
	})
	t.Run("a peer whose first call addressed a former ID of ours is registered as knowing that one", func(t *testing.T) {
		renamed := givenPeers(t, OwnServerIDChanged{New: us1}, OwnServerIDChanged{Old: us1, New: us2})
		cases := []struct {
			name      string
			addressed ServerID
			want      ServerID
		}{
			{"our former ID", us1, us1},
			{"our current ID", us2, us2},
			{"nothing said (an upstream caller, or our own send)", ServerID{}, us2},
			{"an ID we never had", srvC, us2},
		}
		for _, tc := range cases {
			want := []PeerEvent{PeerRegistered{Peer: "pc", ServerID: srvB, OurServerID: tc.want}}
			if got := renamed.Register("pc", srvB, nil, tc.addressed); !reflect.DeepEqual(got, want) {
				t.Errorf("%s: Register = %v, want %v", tc.name, got, want)
			}
		}
	})
	t.Run("the holder of a key is the peer whose recorded key it is", func(t *testing.T) {
		if holder, ok := p.KeyHolder(testKey(1)); !ok || holder.ID != "pb" || holder.ServerID != srvB2 {
			t.Fatalf("KeyHolder(B's key) = %+v, %v", holder, ok)
		}
		if holder, ok := p.KeyHolder(testKey(9)); ok {
			t.Fatalf("KeyHolder(a key no peer has) = %+v", holder)
		}
	})
	t.Run("a key is recorded only when new or changed for a peer's current ID", func(t *testing.T) {
		cases := []struct {
			name       string
			id         ServerID
			key        ed25519.PublicKey
			records    []PeerEvent
			registered bool
		}{
			{"a stranger's", srvC, testKey(1), nil, false},
			{"a former ID's", srvB, testKey(2), nil, true},
			{"the same key", srvB2, testKey(1), nil, true},
			{"a rotated key", srvB2, testKey(2), []PeerEvent{PeerKeyLearned{Peer: "pb", Key: testKey(2)}}, true},
		}
		for _, tc := range cases {
			records, registered := p.LearnKey(tc.id, tc.key)
			if !reflect.DeepEqual(records, tc.records) || registered != tc.registered {
				t.Errorf("%s: LearnKey = %v, %v", tc.name, records, registered)
			}
		}
	})
	t.Run("our ID is recorded when it changes", func(t *testing.T) {
		if got := p.ChangeOwnID(us1); got != nil {
			t.Fatalf("ChangeOwnID(current) = %v", got)
		}
		if got := p.ChangeOwnID(us2); !reflect.DeepEqual(got, []PeerEvent{OwnServerIDChanged{Old: us1, New: us2}}) {
			t.Fatalf("ChangeOwnID = %v", got)
		}
		if got := NewPeers().ChangeOwnID(us1); !reflect.DeepEqual(got, []PeerEvent{OwnServerIDChanged{New: us1}}) {
			t.Fatalf("the first ChangeOwnID = %v", got)
		}
	})
}

func TestOwnRenameRules(t *testing.T) {
	t.Parallel()
	p := givenPeers(t, OwnServerIDChanged{New: us1}, PeerRegistered{Peer: "pb", ServerID: srvB}, PeerRenamed{Peer: "pb", Old: srvB, New: srvB2})
	cases := []struct {
		name    string
		newID   ServerID
		records []PeerEvent
		err     error
	}{
		{"to the current ID: nothing", us1, nil, nil},
		{"to a free ID", us2, []PeerEvent{OwnServerIDChanged{Old: us1, New: us2}}, nil},
		{"to a peer's ID", srvB2, nil, ErrIDTaken},
		{"to an ID a peer had", srvB, nil, ErrIDTaken},
	}
	for _, tc := range cases {
		records, err := DecideOwnRename(p, tc.newID)
		if !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) || !reflect.DeepEqual(records, tc.records) {
			t.Errorf("%s: %v, %v", tc.name, records, err)
		}
	}
}

func TestStartupIDRules(t *testing.T) {
	t.Parallel()
	renamed := givenPeers(t, OwnServerIDChanged{New: us1}, OwnServerIDChanged{Old: us1, New: us2}, PeerRegistered{Peer: "pb", ServerID: srvB})
	cases := []struct {
		name           string
		given          *Peers
		id             ServerID
		isGiven, allow bool
		then           StartupID
		records        []PeerEvent
		err            error
	}{
		{"the first start records the ID", NewPeers(), us1, false, false, StartFirst, []PeerEvent{OwnServerIDChanged{New: us1}}, nil},
		{"the stored ID given again", renamed, us2, true, false, StartStored, nil, nil},
		{"a default ID never renames", renamed, us3, false, true, StartStored, nil, nil},
		{"a former ID given keeps the current one", renamed, us1, true, true, StartFormer, nil, nil},
		{"a new ID without --rename is refused", renamed, us3, true, false, 0, nil, ErrRenameNotAllowed},
		{"a new ID with --rename renames", renamed, us3, true, true, StartRename, []PeerEvent{OwnServerIDChanged{Old: us2, New: us3}}, nil},
		{"a peer's ID is refused", renamed, srvB, true, true, 0, nil, ErrIDTaken},
	}
	for _, tc := range cases {
		then, records, err := DecideStartupID(tc.given, tc.id, tc.isGiven, tc.allow)
		if then != tc.then || !reflect.DeepEqual(records, tc.records) || !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
			t.Errorf("%s: %v, %v, %v", tc.name, then, records, err)
		}
	}
}

// Given this server's IDs with the times it took them, its identity
// accepts each former ID as an audience until the grace after the rename
// that left it.
func TestIdentityFromHistory(t *testing.T) {
	t.Parallel()
	grace := time.Hour
	identity := IdentityFromHistory([]OwnID{{ID: us1, Since: t0}, {ID: us2, Since: t0.Add(time.Minute)}, {ID: us3, Since: t0.Add(2 * time.Hour)}}, grace)
	if identity.Current() != us3 {
		t.Fatalf("current %s", identity.Current())
	}
	at := t0.Add(time.Hour + 2*time.Minute)
	if identity.IsAudience(us1, at) || !identity.IsAudience(us2, at) || !identity.IsAudience(us1, t0.Add(time.Hour)) {
		t.Fatal("the former IDs' grace does not count from the rename that left each")
	}
}

func TestPositionOrder(t *testing.T) {
	t.Parallel()
	cases := []struct {
		p, q Position
		less bool
	}{
		{Position{1, 1}, Position{2, 0}, true},
		{Position{2, 0}, Position{1, 9}, false},
		{Position{1, 1}, Position{1, 2}, true},
		{Position{1, 2}, Position{1, 2}, false},
		{Position{1, 3}, Position{1, 2}, false},
	}
	for _, tc := range cases {
		if got := tc.p.Less(tc.q); got != tc.less {
			t.Errorf("%v.Less(%v) = %v", tc.p, tc.q, got)
		}
	}
}

// The one fold of an inbox: its length from revisions, the highest sender
// sequence number within an epoch, a new epoch starting again.
func TestInboxFold(t *testing.T) {
	t.Parallel()
	seq := func(v uint64) *uint64 { return &v }
	var in Inbox
	in.Apply(0, EventReceived{}) // an upstream sender's event: no number
	if in.Count != 1 || in.HasSeq {
		t.Fatalf("after an event without a number: %+v", in)
	}
	in.Apply(1, EventReceived{SenderSeq: seq(4), SenderEpoch: 0, SenderEventID: []byte{4}})
	in.Apply(2, EventReceived{SenderSeq: seq(3), SenderEpoch: 0, SenderEventID: []byte{3}})
	if in.Count != 3 || !in.HasSeq || in.LastSeq != 4 || !bytes.Equal(in.LastID, []byte{4}) {
		t.Fatalf("after 4 then 3: %+v", in)
	}
	in.Apply(1, EventReceived{}) // a record read again does not shorten it
	if in.Count != 3 {
		t.Fatalf("count %d after a repeat", in.Count)
	}
	in.Apply(3, EventReceived{SenderSeq: seq(0), SenderEpoch: 7})
	if in.LastSeq != 0 || in.Epoch != 7 || in.LastID != nil {
		t.Fatalf("a new epoch did not start again: %+v", in)
	}
	in.Received(seq(1), []byte{1})
	if in.Count != 5 || in.LastSeq != 1 || in.Epoch != 7 || !bytes.Equal(in.LastID, []byte{1}) {
		t.Fatalf("an event applied now: %+v", in)
	}
}

// The one fold of an outbox's records: its head is past the last stored.
func TestOutboxStored(t *testing.T) {
	t.Parallel()
	var o Outbox
	o.Stored(0)
	o.Stored(4)
	o.Stored(2) // read again, out of order
	if o.Head != 5 {
		t.Fatalf("Head = %d, want 5", o.Head)
	}
}

// Given a fold of registrations, keys, renames (one back to a former ID),
// this server's renames and a notice, when its image is taken and a fold
// rebuilt from it, then the rebuilt fold answers every question as the
// original does, and goes on from there as the original does.
func TestPeersImageRebuildsTheSameFold(t *testing.T) {
	t.Parallel()
	records := []PeerEvent{
		OwnServerIDChanged{New: us1},
		PeerRegistered{Peer: "pb", ServerID: srvB, OurServerID: us1},
		PeerKeyLearned{Peer: "pb", Key: testKey(1)},
		PeerRenamed{Peer: "pb", Old: srvB, New: srvB2},
		PeerKeyLearned{Peer: "pb", Key: testKey(2)},
		PeerRenamed{Peer: "pb", Old: srvB2, New: srvB},
		PeerRegistered{Peer: "pa", ServerID: srvA},
		OwnServerIDChanged{Old: us1, New: us2},
		PeerNotifiedOfNewID{Peer: "pa", NewID: us2},
		PeerRegistered{Peer: "pc", ServerID: srvC, OurServerID: us2},
	}
	// Sixteen more peers: the map's own order is then never sorted by
	// chance.
	for i := range 16 {
		records = append(records, PeerRegistered{Peer: PeerID(fmt.Sprintf("px%02d", 15-i)), ServerID: MustParseServerID(fmt.Sprintf("x%d.example:1", i))})
	}
	orig := givenPeers(t, records...)
	img := orig.Image()
	if !slices.IsSortedFunc(img.Peers, func(a, b PeerEntry) int { return strings.Compare(string(a.ID), string(b.ID)) }) || len(img.Peers) != 19 {
		t.Fatalf("image peers %+v: want 19, sorted by peer ID", img.Peers)
	}
	rebuilt, err := PeersFromImage(img)
	if err != nil {
		t.Fatal(err)
	}
	same := func(when string) {
		t.Helper()
		if !reflect.DeepEqual(rebuilt.Image(), orig.Image()) {
			t.Fatalf("%s: rebuilt %+v, original %+v", when, rebuilt.Image(), orig.Image())
		}
		if !reflect.DeepEqual(rebuilt.List(), orig.List()) || !reflect.DeepEqual(rebuilt.Keys(), orig.Keys()) ||
			!reflect.DeepEqual(rebuilt.OwnIDs(), orig.OwnIDs()) {
			t.Fatalf("%s: the rebuilt fold lists other peers, keys or own IDs", when)
		}
		own, ok := rebuilt.OwnID()
		if want, _ := orig.OwnID(); !ok || own != want {
			t.Fatalf("%s: own ID %s, %v; want %s", when, own, ok, want)
		}
		for _, id := range []ServerID{srvA, srvB, srvB2, srvC, us1} {
			p1, c1, ok1 := rebuilt.Resolve(id)
			p2, c2, ok2 := orig.Resolve(id)
			if p1 != p2 || c1 != c2 || ok1 != ok2 || rebuilt.IDFor(id) != orig.IDFor(id) {
				t.Fatalf("%s: %s resolves to %q %s %v (signed as %s), want %q %s %v (%s)", when, id, p1, c1, ok1, rebuilt.IDFor(id), p2, c2, ok2, orig.IDFor(id))
			}
		}
		for _, peer := range []PeerID{"pa", "pb", "pc"} {
			if rebuilt.KnowsOurID(peer) != orig.KnowsOurID(peer) {
				t.Fatalf("%s: KnowsOurID(%s) differs", when, peer)
			}
		}
	}
	same("rebuilt")
	if _, ok := rebuilt.Peer("pc"); !ok {
		t.Fatal("the rebuilt fold lacks pc")
	}
	// The records after the image fold alike into both.
	for _, e := range []PeerEvent{
		PeerRenamed{Peer: "pb", Old: srvB, New: srvB3},
		OwnServerIDChanged{Old: us2, New: us3},
		PeerKeyLearned{Peer: "pc", Key: testKey(3)},
	} {
		for _, p := range []*Peers{orig, rebuilt} {
			if err := p.Apply(e, t0.Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
		}
	}
	same("after more records")
	if img.OwnIDs[len(img.OwnIDs)-1].ID != us2 || len(img.Peers[1].Former) != 2 {
		t.Fatalf("the image taken before changed with the folds: %+v", img)
	}
}

// Given an image whose server IDs name a peer it does not hold, then no
// fold is rebuilt from it.
func TestPeersFromAnImageNamingAnUnknownPeerIsRefused(t *testing.T) {
	t.Parallel()
	img := givenPeers(t, PeerRegistered{Peer: "pb", ServerID: srvB}).Image()
	img.Servers[srvA] = "pa"
	if _, err := PeersFromImage(img); !errors.Is(err, ErrUnregisteredPeer) {
		t.Fatalf("PeersFromImage: %v, want ErrUnregisteredPeer", err)
	}
	empty, err := PeersFromImage(PeersImage{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := empty.OwnID(); ok || len(empty.List()) != 0 {
		t.Fatal("an empty image rebuilt a fold with peers or an own ID")
	}
}
