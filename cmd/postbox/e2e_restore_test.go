package main

// A data directory restored from a backup, on the sending or the receiving
// side: the continuity extension notices it, and every event sent after
// the rollback reaches the receiver once, in order, with the rollback
// reported. Before it, a receiver dropped the restored sender's new events
// as already applied (their sequence numbers came again), and the sender
// counted them delivered.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/harmony-postbox/postbox/domain"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
)

// backup copies n's data directory, with n stopped, as an operator's
// backup would; restore puts such a copy back.
func (n *e2eNode) backup() string {
	n.t.Helper()
	dst := filepath.Join(n.t.TempDir(), "backup")
	if out, err := exec.Command("cp", "-a", n.dataDir, dst).CombinedOutput(); err != nil {
		n.t.Fatalf("back up %s: %v: %s", n.name, err, out)
	}
	return dst
}

func (n *e2eNode) restore(from string) {
	n.t.Helper()
	if err := os.RemoveAll(n.dataDir); err != nil {
		n.t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", from, n.dataDir).CombinedOutput(); err != nil {
		n.t.Fatalf("restore %s: %v: %s", n.name, err, out)
	}
}

// sendUsers sends e2eEvent(u) for each user, one after the other.
func (n *e2eNode) sendUsers(to *e2eNode, users []uint64) {
	n.t.Helper()
	for _, u := range users {
		if _, err := n.trySend(n.t.Context(), to, u); err != nil {
			n.t.Fatalf("send %d from %s to %s: %v", u, n.name, to.name, err)
		}
	}
}

// inboxUsers is the user ID of every event in n's inbox from peer, in the
// order applied, and whether the sender sequence numbers rise within each
// epoch.
func (n *e2eNode) inboxUsers(peer *e2eNode) (users []uint64, ordered bool) {
	n.t.Helper()
	recs, err := n.inbox(peer)
	if err != nil {
		n.t.Fatal(err)
	}
	ordered = true
	var epoch, last uint64
	var has bool
	for _, r := range recs {
		users = append(users, r.Event.GetUserAddedToGuild().GetUserId())
		if r.SenderSeq == nil {
			continue
		}
		if has && r.SenderEpoch == epoch && *r.SenderSeq <= last {
			ordered = false
		}
		epoch, last, has = r.SenderEpoch, *r.SenderSeq, true
	}
	return users, ordered
}

func (n *e2eNode) waitInboxUsers(peer *e2eNode, want []uint64, within time.Duration) {
	n.t.Helper()
	e2eWait(n.t, within, fmt.Sprintf("%s's inbox from %s to hold the %d events", n.name, peer.name, len(want)), func() (bool, string) {
		got, _ := n.inboxUsers(peer)
		return len(got) >= len(want), fmt.Sprintf("%d events", len(got))
	})
	got, ordered := n.inboxUsers(peer)
	if !slices.Equal(got, want) || !ordered {
		n.t.Fatalf("%s's inbox from %s holds users %v (sequence numbers rising in each epoch: %v); want %v, each once, in order",
			n.name, peer.name, got, ordered, want)
	}
}

func (n *e2eNode) peerView(peer *e2eNode) *adminv1.Peer {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(n.t.Context(), 10*time.Second)
	defer cancel()
	res, err := n.admins.GetPeer(ctx, connect.NewRequest(&adminv1.GetPeerRequest{ServerId: peer.id}))
	if err != nil {
		n.t.Fatal(err)
	}
	return res.Msg.GetPeer()
}

// checkRollbackReported checks that n said loudly that its store went back:
// a new epoch in its delivery stream for peer, a log line, peers and
// metrics.
func (n *e2eNode) checkRollbackReported(peer *e2eNode) {
	n.t.Helper()
	d, err := n.delivery(peer)
	if err != nil {
		n.t.Fatal(err)
	}
	if len(e2eOfType[domain.EpochStarted](d)) == 0 {
		n.t.Errorf("%s's delivery stream for %s has no EpochStarted: %s", n.name, peer.name, e2eDescribe(d))
	}
	if log := n.lastRunLog(); !strings.Contains(log, "this server's store went back") {
		n.t.Errorf("%s's log does not report the rollback:\n%s", n.name, log)
	}
	if p := n.peerView(peer); p.GetEpochsStarted() == 0 || p.GetEpoch() == 0 {
		n.t.Errorf("%s's peers: %s has epoch %d, %d epochs started; want the rollback shown", n.name, peer.name, p.GetEpoch(), p.GetEpochsStarted())
	}
	if out, _, _ := runCLI(n.t, "peers", "--admin", n.admin); !strings.Contains(out, "new epoch") {
		n.t.Errorf("postbox peers on %s does not report the rollback:\n%s", n.name, out)
	}
	_, m := opScrape(n.t, n.admin, "")
	if m[`postbox_continuity_breaks_total{kind="epoch_started",peer="`+n.peerView(peer).GetPeerId()+`"}`] < 1 {
		n.t.Errorf("%s's /metrics does not count the rollback", n.name)
	}
}

// deliverWithBackupAt50 starts both servers, has a deliver 100 events to
// b, and returns a backup of a's data directory taken when 50 of them were
// delivered.
func deliverWithBackupAt50(a, b *e2eNode) string {
	a.t.Helper()
	a.start()
	b.start()
	a.sendUsers(b, usersFrom(0, 50))
	b.waitInboxUsers(a, usersFrom(0, 50), 20*time.Second)
	a.waitPeerDelivered(b, 50)
	a.kill()
	copyAt50 := a.backup()
	a.start()
	a.sendUsers(b, usersFrom(50, 50))
	b.waitInboxUsers(a, usersFrom(0, 100), 20*time.Second)
	return copyAt50
}

func usersFrom(first uint64, n int) []uint64 {
	out := make([]uint64, n)
	for i := range out {
		out[i] = first + uint64(i)
	}
	return out
}

// TestRestoredSenderDeliversEverythingSentAfterTheRollback: A delivers 100
// events to B; A's data directory is restored from a copy taken at 50; A
// sends 65 more, which reuse sequence numbers 50 to 114. B ends with all
// 165, each once, in order; A reports the rollback and counts nothing
// delivered on B's account; both audits pass.
func TestRestoredSenderDeliversEverythingSentAfterTheRollback(t *testing.T) {
	t.Parallel()
	a, b := newE2ENode(t, "A", ""), newE2ENode(t, "B", "")
	copyAt50 := deliverWithBackupAt50(a, b)

	a.kill()
	a.restore(copyAt50)
	a.start()
	a.sendUsers(b, usersFrom(1000, 65))
	b.waitInboxUsers(a, append(usersFrom(0, 100), usersFrom(1000, 65)...), 30*time.Second)
	a.waitPeerDelivered(b, 115)
	a.checkRollbackReported(b)
	e2eAudit(t, a, b)
}

// TestRestoredSenderWhileTheReceiverIsDown: the same rollback, but the
// restored A sends its 65 events while B is down, and B then gets them by
// its own startup Pull: B's account (epoch and the outbox ID of its last
// event) shows the rollback to A.
func TestRestoredSenderWhileTheReceiverIsDown(t *testing.T) {
	t.Parallel()
	a, b := newE2ENode(t, "A", "", "--push-retries", "1"), newE2ENode(t, "B", "")
	copyAt50 := deliverWithBackupAt50(a, b)

	a.kill()
	b.kill()
	a.restore(copyAt50)
	a.start()
	a.sendUsers(b, usersFrom(1000, 65))
	e2eWait(t, 20*time.Second, "A in queue mode", func() (bool, string) {
		p := a.peerView(b)
		return p.GetMode() == adminv1.Mode_MODE_QUEUE, p.GetMode().String()
	})
	b.start() // B pulls A at startup
	b.waitInboxUsers(a, append(usersFrom(0, 100), usersFrom(1000, 65)...), 30*time.Second)
	a.waitPeerDelivered(b, 115)
	a.checkRollbackReported(b)
	e2eAudit(t, a, b)
}

// TestRestoredReceiverGetsWhatItLostAgain: B's data directory is restored
// from a copy taken when it held 50 of A's 100 events. A notices, on B's
// startup Pull or on its next push, that B holds less than it was given,
// says so, and sends events 50 to 99 again, then the new ones.
func TestRestoredReceiverGetsWhatItLostAgain(t *testing.T) {
	t.Parallel()
	a, b := newE2ENode(t, "A", ""), newE2ENode(t, "B", "")
	a.start()
	b.start()
	a.sendUsers(b, usersFrom(0, 50))
	b.waitInboxUsers(a, usersFrom(0, 50), 20*time.Second)
	b.kill()
	copyAt50 := b.backup()
	b.start()
	a.sendUsers(b, usersFrom(50, 50))
	b.waitInboxUsers(a, usersFrom(0, 100), 20*time.Second)
	a.waitPeerDelivered(b, 100)

	b.kill()
	b.restore(copyAt50)
	b.start()
	a.sendUsers(b, usersFrom(100, 5))
	b.waitInboxUsers(a, usersFrom(0, 105), 30*time.Second)
	a.waitPeerDelivered(b, 105)
	if log := a.lastRunLog(); !strings.Contains(log, "the peer lost events it had received") {
		t.Errorf("A's log does not report B's lost events:\n%s", log)
	}
	if p := a.peerView(b); p.GetReceiverRewinds() == 0 {
		t.Errorf("A's peers: B shows %d rewinds; want the loss shown", p.GetReceiverRewinds())
	}
	e2eAudit(t, a, b)
}

// waitPeerDelivered waits until n counts delivered events below seq to
// peer.
func (n *e2eNode) waitPeerDelivered(peer *e2eNode, seq uint64) {
	n.t.Helper()
	e2eWait(n.t, 30*time.Second, fmt.Sprintf("%s to count %d delivered to %s", n.name, seq, peer.name), func() (bool, string) {
		p := n.peerView(peer)
		return p.GetDelivered() >= seq && p.GetPending() == 0, fmt.Sprintf("delivered %d, pending %d", p.GetDelivered(), p.GetPending())
	})
}
