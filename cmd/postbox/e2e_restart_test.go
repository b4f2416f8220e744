package main

// Multi-process tests of what renames must keep across a restart: the key
// of a peer met by its own call (so its rename, verified with the old ID's
// key, is accepted once the old address is gone), the keys of its former
// IDs, and the audience grace of this server's own former IDs. Helpers are
// in e2e_operator_test.go and e2e_rename_test.go.

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/authtoken"
	"github.com/harmony-postbox/postbox/adapters/clock"
	"github.com/harmony-postbox/postbox/adapters/hrpc"
	"github.com/harmony-postbox/postbox/adapters/keyfile"
	"github.com/harmony-postbox/postbox/domain"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
	"github.com/harmony-postbox/postbox/gen/protocol/sync/v1/syncv1connect"
)

// rsCall makes one federation call to n by hand, signed with key as the
// server as with Postbox's token extension addressed to audience.
func rsCall(t *testing.T, n *opNode, key ed25519.PrivateKey, as, audience, procedure, newID string, req, res any) error {
	t.Helper()
	signer := authtoken.NewSigner(key, clock.System{}, rand.Reader)
	tok, err := signer.Extended(domain.MustParseServerID(as), domain.MustParseServerID(audience), newID)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	switch req := req.(type) {
	case *syncv1.PushRequest:
		return hrpc.Call(ctx, n.http, "http://"+n.listen, procedure, http.Header{authtoken.HeaderName: {tok}}, req, res.(*syncv1.PushResponse), 0)
	case *syncv1.NotifyNewIdRequest:
		return hrpc.Call(ctx, n.http, "http://"+n.listen, procedure, http.Header{authtoken.HeaderName: {tok}}, req, res.(*syncv1.NotifyNewIdResponse), 0)
	}
	t.Fatalf("rsCall: request %T", req)
	return nil
}

func rsIdentifier(err error) string {
	var remote *hrpc.RemoteError
	if errors.As(err, &remote) {
		return remote.Identifier
	}
	if err != nil {
		return err.Error()
	}
	return "OK"
}

// TestRenameOfAPeerMetByItsOwnCallSurvivesRestarts: B's first contact with
// A is B's own push, so A learns B's key while verifying it. A records that
// key (postbox peers --json shows it). A and B stop; B comes back under a
// new ID on another port, its old address gone, and A restarts: B's
// NotifyNewId, signed as the old ID, is verified with the recorded key and
// accepted. After another restart of A, the old ID's key is still known:
// the same rename announced again answers OK and a push under the old ID
// is refused as renamed, not as a key A cannot fetch.
func TestRenameOfAPeerMetByItsOwnCallSurvivesRestarts(t *testing.T) {
	opSetup(t)
	a, b := newOpNode(t, "A"), newOpNode(t, "B")
	a.start()
	b.start()
	oldB := b.id
	bKey, err := keyfile.Load(filepath.Join(b.dataDir, "key.ed25519"))
	if err != nil {
		t.Fatal(err)
	}

	b.send(a.id, 500, 0)
	a.waitPeer(oldB, "B's event received", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetEventsReceived() == 1 })
	checkKey := func(when, serverID string, former []string) {
		t.Helper()
		_, peers := a.peersCLI()
		if len(peers) != 1 || peers[0].GetServerId() != serverID || !slices.Equal(peers[0].GetFormerServerIds(), former) ||
			!slices.Equal(peers[0].GetPublicKey(), bKey.PublicKey()) {
			t.Errorf("%s: A's postbox peers --json: %v; want B as %s formerly %v with its public key", when, peers, serverID, former)
		}
	}
	checkKey("after B's first push", oldB, nil)

	a.stop()
	b.stop()
	b.moveTo(opPort(t)) // nothing listens on B's old address any more
	newB := b.id
	a.start()
	b.start() // renamed by its explicit --server-id: it tells A, signed as oldB
	a.waitPeer(newB, "B's rename accepted", 30*time.Second, func(p *adminv1.Peer) bool {
		return p.GetServerId() == newB && slices.Equal(p.GetFormerServerIds(), []string{oldB})
	})
	b.waitPeer(a.id, "A knows B's new ID", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetKnowsOurServerId() })
	if log := a.logText(); !strings.Contains(log, `msg="peer renamed"`) {
		t.Errorf("A's log does not say B was renamed")
	}
	checkKey("after B's rename", newB, []string{oldB})

	a.stop()
	a.start()
	checkKey("after A's restart", newB, []string{oldB})
	err = rsCall(t, a, bKey.PrivateKey, oldB, a.id, syncv1connect.PostboxServiceNotifyNewIdProcedure, newB,
		&syncv1.NotifyNewIdRequest{NewServerId: newB}, &syncv1.NotifyNewIdResponse{})
	if err != nil {
		t.Errorf("B's rename announced again under its old ID after A's restart: %v; want OK", err)
	}
	err = rsCall(t, a, bKey.PrivateKey, oldB, a.id, syncv1connect.PostboxServicePushProcedure, "",
		&syncv1.PushRequest{Event: opEvent(501)}, &syncv1.PushResponse{})
	if got := rsIdentifier(err); got != "postbox.peer-renamed" {
		t.Errorf("a push under B's old ID after A's restart: %s; want postbox.peer-renamed", got)
	}
	// B still reaches A under its new ID.
	b.send(a.id, 502, 1)
	a.waitPeer(newB, "B's second event received", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetEventsReceived() == 2 })
	a.auditClean("after the rename and the restarts")
}

// TestOwnFormerIDStaysAnAudienceAfterRestart: A renames itself (postbox
// rename), then restarts. For 7 days after the rename a token addressed to
// A's old ID is still accepted, also after a restart; one addressed to an
// ID A never had is refused. The startup log names the former ID and until
// when it is accepted.
func TestOwnFormerIDStaysAnAudienceAfterRestart(t *testing.T) {
	opSetup(t)
	a := newOpNode(t, "A")
	a.start()
	oldA := a.id
	_, port, _ := strings.Cut(oldA, ":")
	newA := "localhost:" + port

	if out, errOut, code := runCLI(t, "rename", "--admin", a.admin, newA); code != 0 {
		t.Fatalf("postbox rename %s: exit %d, %q\n%s", newA, code, out, errOut)
	}
	a.id = newA
	a.stop()
	a.start()
	// A peer met after the restart (one met before would be told of the
	// rename, and a test key server never accepts it).
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k2 := rnKeyServer(t, k.Public().(ed25519.PublicKey))
	push := func(audience string, user uint64) error {
		return rsCall(t, a, k, k2, audience, syncv1connect.PostboxServicePushProcedure, "",
			&syncv1.PushRequest{Event: opEvent(user)}, &syncv1.PushResponse{})
	}
	for _, tc := range []struct {
		audience, want string
	}{
		{oldA, "OK"},
		{newA, "OK"},
		{loopback(opPort(t)), "postbox.wrong-audience"},
	} {
		if got := rsIdentifier(push(tc.audience, 3)); got != tc.want {
			t.Errorf("after A's restart, a push addressed to %s: %s; want %s", tc.audience, got, tc.want)
		}
	}
	if log := a.logText(); !strings.Contains(log, "former_id="+oldA) {
		t.Errorf("A's startup log does not name its former ID %s:\n%s", oldA, a.logTail(3000))
	}
	a.waitPeer(k2, "the pushes received", 10*time.Second, func(p *adminv1.Peer) bool { return p.GetEventsReceived() == 2 })
}

// TestRenameToldAPeerThatNeverKnewUs: A renames itself while B, which A has
// events for but never reached, knows nothing of A. B answers A's
// NotifyNewId with postbox.unknown-peer. A holds its pushes to B until no
// push signed with its old ID can still reach B (twice the auth window,
// 6 s here), asks again, and on a second unknown-peer answer signs with its
// new ID toward B from then on (postbox peers --json: knowsOurServerId).
// Once the operator resumes pushing, B meets A by its new ID only: one
// peer at B, with no former ID. Had A pushed under its old ID, B would
// hold it as one peer, and as a second one if its own users addressed A
// by the new ID meanwhile.
func TestRenameToldAPeerThatNeverKnewUs(t *testing.T) {
	opSetup(t)
	flags := append([]string{"--auth-window", "3s"}, opQuickQueue...)
	a, b := newOpNode(t, "A", flags...), newOpNode(t, "B", flags...)
	a.start()
	oldA := a.id
	_, port, _ := strings.Cut(oldA, ":")
	newA := "localhost:" + port

	a.send(b.id, 100, 0) // B is down: queue mode
	a.waitPeer(b.id, "queue mode", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetMode() == adminv1.Mode_MODE_QUEUE })
	b.start()
	if out, errOut, code := runCLI(t, "rename", "--admin", a.admin, newA); code != 0 {
		t.Fatalf("postbox rename %s: exit %d, %q\n%s", newA, code, out, errOut)
	}
	a.id = newA
	opWait(t, 15*time.Second, "B's unknown-peer answer to A's NotifyNewId", func() (bool, string) {
		return strings.Contains(b.logText(), "identifier=postbox.unknown-peer"), "not in B's log"
	})
	const waits = `msg="a peer does not know our old ID: pushes to it wait until none signed with it can arrive, then it is told again" peer=`
	const switched = `msg="a peer never knew our old ID: it meets us by the new one" peer=`
	opWait(t, 15*time.Second, "A's switch to its new ID toward B", func() (bool, string) {
		return strings.Contains(a.logText(), switched+b.id+" id="+newA), "not logged"
	})
	if !strings.Contains(a.logText(), waits+b.id+" old="+oldA) {
		t.Errorf("A's log does not say it waited after B's unknown-peer answer")
	}
	if strings.Contains(a.logText(), "peer accepted our new ID") {
		t.Errorf("A logged B's unknown-peer answer as an acceptance")
	}
	if _, peers := a.peersCLI(); len(peers) != 1 || !peers[0].GetKnowsOurServerId() {
		t.Errorf("A's postbox peers --json after the switch: %v; want B, knowing A's new ID", peers)
	}

	if out, errOut, code := runCLI(t, "resume", "--admin", a.admin, b.id); code != 0 {
		t.Fatalf("postbox resume %s: exit %d, %q\n%s", b.id, code, out, errOut)
	}
	b.waitPeer(newA, "A's event, under A's new ID", 30*time.Second, func(p *adminv1.Peer) bool {
		return p.GetServerId() == newA && len(p.GetFormerServerIds()) == 0 && p.GetEventsReceived() == 1
	})
	a.waitPeer(b.id, "delivered", 10*time.Second, func(p *adminv1.Peer) bool { return p.GetKnowsOurServerId() && p.GetDelivered() == 1 })
	if _, peers := b.peersCLI(); len(peers) != 1 {
		t.Errorf("B's peers: %v; want A once", peers)
	}
}
