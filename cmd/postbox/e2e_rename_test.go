package main

// Multi-process tests of server ID renames (PROTOCOL.md §6): real postbox
// processes on loopback, a peer renamed by a restart under a new
// --server-id, this server renamed through `postbox rename`, and
// NotifyNewId requests that must be refused, made by hand. Helpers are in
// e2e_operator_test.go.

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/authtoken"
	"github.com/harmony-postbox/postbox/adapters/clock"
	"github.com/harmony-postbox/postbox/adapters/federation"
	"github.com/harmony-postbox/postbox/adapters/hrpc"
	"github.com/harmony-postbox/postbox/adapters/httpserver"
	"github.com/harmony-postbox/postbox/adapters/keyfile"
	"github.com/harmony-postbox/postbox/domain"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
	"github.com/harmony-postbox/postbox/gen/protocol/sync/v1/syncv1connect"
)

// TestRenamePeerByRestart: A has a backlog for B in queue mode; B comes
// back under a new ID B' (a new port and an explicit --server-id, the same
// data directory and key) and tells A at startup; A delivers the whole
// backlog to B' in order, then pushes later events, sent to B' or to B
// (one outbox). A shows one peer, B' formerly B, everything delivered, and
// the audit passes on both stores, running and stopped.
func TestRenamePeerByRestart(t *testing.T) {
	opSetup(t)
	start := time.Now()
	a, b := newOpNode(t, "A", opQuickQueue...), newOpNode(t, "B", opQuickQueue...)
	a.start()
	b.start()
	oldB := b.id

	// Federated both ways: users 100.. from A to B, 500 from B to A.
	a.send(oldB, 100, 0)
	b.send(a.id, 500, 0)
	a.waitPeer(oldB, "the first event delivered", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetDelivered() == 1 })
	b.waitPeer(a.id, "B's event delivered", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetDelivered() == 1 })

	// The backlog: B is down, A's pushes fail, the rest goes to the queue.
	b.stop()
	const backlog = 5
	for i := uint64(1); i <= backlog; i++ {
		a.send(oldB, 100+i, i)
	}
	a.waitPeer(oldB, "queue mode with the backlog", 20*time.Second, func(p *adminv1.Peer) bool {
		return p.GetMode() == adminv1.Mode_MODE_QUEUE && p.GetHead() == backlog+1 && p.GetDelivered() == 1
	})

	// B' is B on another port under another ID.
	b.moveTo(opPort(t))
	newB := b.id
	b.start()
	a.waitPeer(newB, "renamed from B", 20*time.Second, func(p *adminv1.Peer) bool {
		return p.GetServerId() == newB && slices.Equal(p.GetFormerServerIds(), []string{oldB})
	})
	b.waitPeer(a.id, "A knows B's new ID", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetKnowsOurServerId() })
	a.waitPeer(newB, "the backlog pulled, acknowledged, back to push mode", 20*time.Second, func(p *adminv1.Peer) bool {
		return p.GetDelivered() == backlog+1 && p.GetMode() == adminv1.Mode_MODE_PUSH
	})

	// Later sends, to the new ID and to the old one, go to B' by push.
	a.send(newB, 100+backlog+1, backlog+1)
	a.send(oldB, 100+backlog+2, backlog+2)
	const total = backlog + 3
	a.waitPeer(newB, "everything delivered", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetDelivered() == total })
	b.waitPeer(a.id, "everything received", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetEventsReceived() == total })
	opCheckInbox(t, "B's inbox from A", b.inboxFrom(a.id), opUsers(100, total), slices.Concat(opVias(viaPush, 1), opVias(viaPull, backlog), opVias(viaPush, 2)))

	// A shows one peer for B: its new ID, the old one as former, the whole
	// history delivered.
	_, peers := a.peersCLI()
	if len(peers) != 1 {
		t.Fatalf("A's postbox peers --json lists %d peers, want 1 (B renamed): %v", len(peers), peers)
	}
	p := peers[0]
	if p.GetServerId() != newB || !slices.Equal(p.GetFormerServerIds(), []string{oldB}) || p.GetHead() != total ||
		p.GetDelivered() != total || p.GetPending() != 0 || p.GetMode() != adminv1.Mode_MODE_PUSH || p.GetEventsReceived() != 1 {
		t.Errorf("A's peer %s; want %s formerly [%s], head = delivered = %d, push mode, 1 received", opPeerString(p), newB, oldB, total)
	}
	// GetPeer finds it by the old ID too.
	if byOld, err := a.peer(oldB); err != nil || byOld.GetPeerId() != p.GetPeerId() {
		t.Errorf("A's GetPeer(%s): %v, %v; want peer %s", oldB, byOld, err, p.GetPeerId())
	}
	// Nothing came under B's old ID after the rename (A would have refused
	// it as renamed, and logged that).
	if strings.Contains(a.logText(), "peer-renamed") {
		t.Errorf("A refused a request under B's old ID:\n%s", a.logTail(4000))
	}

	// The metrics label B by its stable peer ID, which the rename kept,
	// and postbox_peer_info names it by its new server ID only.
	if status, m := opScrape(t, a.admin, ""); status != http.StatusOK {
		t.Errorf("GET /metrics on A: %d", status)
	} else {
		peer := a.peerLabel(newB)
		opCheckSamples(t, "A's /metrics after B's rename", m, map[string]float64{
			`postbox_peer_info{` + peer + `,server_id="` + newB + `"}`: 1,
			`postbox_peer_outbox_head{` + peer + `}`:                   total,
			`postbox_peer_delivered{` + peer + `}`:                     total,
			`postbox_peer_pending{` + peer + `}`:                       0,
		})
		for series := range m {
			if strings.Contains(series, `"`+oldB+`"`) || strings.Contains(series, `"`+newB+`"`) && !strings.HasPrefix(series, "postbox_peer_info{") {
				t.Errorf("A's /metrics labels a series by a server ID of B: %s", series)
			}
		}
	}
	// An operator may name B by either ID.
	t.Run("pull and resume by either ID", func(t *testing.T) {
		for _, id := range []string{newB, oldB} {
			if out, errOut, code := runCLI(t, "resume", "--admin", a.admin, id); code != 0 {
				t.Errorf("postbox resume %s: exit %d, %q\n%s", id, code, out, errOut)
			}
		}
		if out, errOut, code := runCLI(t, "pull", "--admin", a.admin, newB); code != 0 {
			t.Errorf("postbox pull %s (the new ID): exit %d, %q\n%s", newB, code, out, errOut)
		}
		if out, errOut, code := runCLI(t, "pull", "--admin", a.admin, oldB); code != 0 {
			t.Errorf("postbox pull %s (the old ID): exit %d, %q\n%s", oldB, code, out, errOut)
		}
	})

	for _, n := range []*opNode{a, b} {
		rep := n.auditClean("while it runs")
		_, peers := n.peersCLI()
		opCompareAudit(t, n.name, rep, peers)
	}
	a.stop()
	b.stop()
	for _, n := range []*opNode{a, b} {
		if rep := n.auditClean("after it stopped"); len(rep.Peers) != 1 {
			t.Errorf("the audit of %s's data reports %d peers, want 1: %+v", n.name, len(rep.Peers), rep.Peers)
		}
	}
	t.Logf("took %s", time.Since(start).Round(time.Millisecond))
}

// TestRenameOwnReachesPeerAfterDowntime: A renames itself (postbox rename)
// while B is down; A keeps announcing the new ID, B accepts it once back,
// and A's next event reaches B as from A'. A listens where both of its IDs
// route (127.0.0.1:PORT, then localhost:PORT), so the rename needs no
// restart and B can fetch A's key from A'.
func TestRenameOwnReachesPeerAfterDowntime(t *testing.T) {
	opSetup(t)
	start := time.Now()
	a, b := newOpNode(t, "A", opQuickQueue...), newOpNode(t, "B", opQuickQueue...)
	a.start()
	b.start()
	oldA := a.id
	_, port, _ := strings.Cut(oldA, ":")
	newA := "localhost:" + port

	a.send(b.id, 100, 0)
	b.send(oldA, 500, 0)
	a.waitPeer(b.id, "delivered", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetDelivered() == 1 })
	b.waitPeer(oldA, "delivered", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetDelivered() == 1 })

	b.stop()
	out, errOut, code := runCLI(t, "rename", "--admin", a.admin, newA)
	if code != 0 || !strings.Contains(out, "renamed to "+newA) {
		t.Fatalf("postbox rename %s: exit %d, %q\n%s", newA, code, out, errOut)
	}
	a.id = newA
	if err := a.checkIdentity(); err != nil {
		t.Fatalf("after the rename: %v", err)
	}
	// A keeps trying: a second failed attempt is logged, and B does not
	// know A's new ID meanwhile.
	opWait(t, 15*time.Second, "A's second failed announcement to B", func() (bool, string) {
		return strings.Contains(a.logText(), `msg="telling a peer our new ID failed; pushes to it wait, and it will be told again" peer=`+b.id+" attempt=2"), "not logged"
	})
	_, peers := a.peersCLI()
	if len(peers) != 1 || peers[0].GetServerId() != b.id || peers[0].GetKnowsOurServerId() {
		t.Fatalf("A's peers while B is down: %v; want B, not knowing A's new ID", peers)
	}

	b.start()
	bound := time.Now()
	b.waitPeer(newA, "accepted A's rename", 30*time.Second, func(p *adminv1.Peer) bool {
		return p.GetServerId() == newA && slices.Equal(p.GetFormerServerIds(), []string{oldA})
	})
	a.waitPeer(b.id, "B knows A's new ID", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetKnowsOurServerId() })
	t.Logf("B accepted the rename %s after its restart", time.Since(bound).Round(time.Millisecond))
	_, peers = b.peersCLI()
	if len(peers) != 1 || peers[0].GetServerId() != newA || !slices.Equal(peers[0].GetFormerServerIds(), []string{oldA}) {
		t.Errorf("B's peers: %v; want one, %s formerly [%s]", peers, newA, oldA)
	}

	// A's next event comes to B as from A'.
	a.send(b.id, 101, 1)
	b.waitPeer(newA, "the second event received", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetEventsReceived() == 2 })
	evs := opWatch(t, b, "--json")
	if len(evs) != 2 {
		t.Fatalf("B's watch: %d events, want 2", len(evs))
	}
	for i, ev := range evs {
		if ev.GetFrom() != newA || ev.GetSenderSeq() != uint64(i) || ev.GetEvent().GetUserAddedToGuild().GetUserId() != 100+uint64(i) {
			t.Errorf("B's watch event %d: %s; want from %s, seq %d", i, opJSON(ev), newA, i)
		}
	}
	if evs[1].GetVia() != "push" {
		t.Errorf("the event after the rename came by %s, want push", evs[1].GetVia())
	}
	// And the other way: B's next event reaches A under A's new ID.
	b.send(newA, 501, 1)
	a.waitPeer(b.id, "B's second event received", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetEventsReceived() == 2 })
	b.waitPeer(newA, "B's second event delivered", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetDelivered() == 2 })

	for _, n := range []*opNode{a, b} {
		n.auditClean("while it runs")
	}
	t.Logf("took %s", time.Since(start).Round(time.Millisecond))
}

// rnKeyServer serves one public key over AuthService.Key on loopback, as a
// server ID of its own; it stops in t.Cleanup.
func rnKeyServer(t *testing.T, public ed25519.PublicKey) string {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	h := httpserver.NewFederationHandler(syncv1connect.UnimplementedPostboxServiceHandler{}, federation.NewKeyService(public), 1<<20, logger)
	addr := loopback(opPort(t))
	srv, err := httpserver.Listen(t.Context(), "keys", addr, h, httpserver.TLSFiles{}, logger)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-served
	})
	return addr
}

// TestRenameRefusedOverTheWire sends A NotifyNewId requests made by hand,
// signed with B's own key: for an unknown old ID, for a new ID that is
// another peer's, for a new ID serving another key or none, with a plain
// token, and with a token that signs another new ID. Each is refused with
// its own hRPC identifier and changes nothing at A; then the same channel
// carries a valid rename, which A accepts.
func TestRenameRefusedOverTheWire(t *testing.T) {
	opSetup(t)
	a := newOpNode(t, "A", "--push-retries", "0", "--resume-probe=false")
	b := newOpNode(t, "B", opQuickQueue...)
	a.start()
	b.start()
	a.send(b.id, 100, 0)
	b.send(a.id, 500, 0) // A learns B's key
	a.waitPeer(b.id, "delivered and received", 20*time.Second, func(p *adminv1.Peer) bool {
		return p.GetDelivered() == 1 && p.GetEventsReceived() == 1
	})
	// C: another peer of A, which never answers (its events wait in the
	// queue).
	c := loopback(opPort(t))
	a.send(c, 300, 0)
	a.waitPeer(c, "queue mode", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetMode() == adminv1.Mode_MODE_QUEUE })

	key, err := keyfile.Load(filepath.Join(b.dataDir, "key.ed25519"))
	if err != nil {
		t.Fatal(err)
	}
	_, other, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sameKey := rnKeyServer(t, key.PublicKey())                     // serves B's key
	otherKey := rnKeyServer(t, other.Public().(ed25519.PublicKey)) // serves another key
	noKey := loopback(opPort(t))                                   // nothing listens
	signer := authtoken.NewSigner(key.PrivateKey, clock.System{}, rand.Reader)
	id := domain.MustParseServerID
	extended := func(as, newID string) string {
		tok, err := signer.Extended(id(as), id(a.id), newID)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	plain := func(as string) string {
		tok, err := signer.Plain(id(as))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	notify := func(token, newID string) error {
		ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
		defer cancel()
		return hrpc.Call(ctx, a.http, "http://"+a.listen, syncv1connect.PostboxServiceNotifyNewIdProcedure,
			http.Header{authtoken.HeaderName: {token}}, &syncv1.NotifyNewIdRequest{NewServerId: newID}, &syncv1.NotifyNewIdResponse{}, 0)
	}

	before, _ := a.peersCLI()
	for _, tc := range []struct {
		name       string
		token      string
		newID      string
		identifier string
		status     int
	}{
		{"unknown old ID", extended(sameKey, otherKey), otherKey, "postbox.unknown-peer", http.StatusBadRequest},
		{"new ID another peer's", extended(b.id, c), c, "postbox.id-taken", http.StatusConflict},
		{"new ID serving another key", extended(b.id, otherKey), otherKey, "postbox.key-mismatch", http.StatusBadRequest},
		{"new ID serving no key", extended(b.id, noKey), noKey, "postbox.key-unavailable", http.StatusBadGateway},
		{"plain token", plain(b.id), sameKey, "postbox.extension-required", http.StatusBadRequest},
		{"token signing another new ID", extended(b.id, otherKey), sameKey, "postbox.extension-required", http.StatusBadRequest},
	} {
		err := notify(tc.token, tc.newID)
		var remote *hrpc.RemoteError
		if !errors.As(err, &remote) || remote.Identifier != tc.identifier || remote.HTTPStatus != tc.status {
			t.Errorf("%s: NotifyNewId answered %v; want %d %s", tc.name, err, tc.status, tc.identifier)
		}
		if after, _ := a.peersCLI(); !slices.Equal(after, before) {
			t.Fatalf("%s: the refused rename changed A's peers:\nbefore %s\nafter  %s", tc.name, strings.Join(before, "\n       "), strings.Join(after, "\n       "))
		}
	}
	// B still pushes to A under its own ID.
	b.send(a.id, 501, 1)
	a.waitPeer(b.id, "B's second event received", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetEventsReceived() == 2 })

	// The same channel carries a valid rename: B to the ID serving its key.
	if err := notify(extended(b.id, sameKey), sameKey); err != nil {
		t.Fatalf("a valid NotifyNewId: %v", err)
	}
	renamed := a.waitPeer(sameKey, "B renamed", 10*time.Second, func(p *adminv1.Peer) bool { return p.GetServerId() == sameKey })
	if !slices.Equal(renamed.GetFormerServerIds(), []string{b.id}) || renamed.GetEventsReceived() != 2 || renamed.GetDelivered() != 1 {
		t.Errorf("B after its rename at A: %s", opPeerString(renamed))
	}
	// Announcing it again answers OK; a request under the old ID is now
	// refused as renamed.
	if err := notify(extended(b.id, sameKey), sameKey); err != nil {
		t.Errorf("the same rename announced again: %v", err)
	}
	var remote *hrpc.RemoteError
	if err := notify(extended(b.id, otherKey), otherKey); !errors.As(err, &remote) || remote.Identifier != "postbox.peer-renamed" {
		t.Errorf("another rename under the old ID: %v; want postbox.peer-renamed", err)
	}
	a.auditClean("after the refusals and the rename")
}
