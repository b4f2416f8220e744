package main

// An event too large for any receiver: refused at send, and, when one is
// already in an outbox (sent before the limit, or under a larger one), shown
// as stuck in `postbox peers` and passed by `postbox skip`, which the audit
// reports and the metrics never count as delivered.

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/streams"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

func e2eInvite(userID uint64, inviteID string) *syncv1.Event {
	return &syncv1.Event{Kind: &syncv1.Event_UserInvited_{
		UserInvited: &syncv1.Event_UserInvited{UserId: userID, InviterId: 1, InviteId: inviteID},
	}}
}

func TestSendRefusesAnEventOverTheLimit(t *testing.T) {
	t.Parallel()
	b := newE2ENode(t, "B", "")
	a := newE2ENode(t, "A", "")
	a.start()

	body, err := protojson.Marshal(e2eInvite(42, strings.Repeat("x", 2<<20)))
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "event.json")
	if err := os.WriteFile(file, body, 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runCLI(t, "send", "--admin", a.admin, "--to", b.id, "--event-file", file)
	if code == 0 {
		t.Fatalf("send of a 2 MiB event: exit 0, printed %q", out)
	}
	for _, want := range []string{"invalid_argument", "over the per-event limit of 524288 bytes", "--max-event-bytes"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("send of a 2 MiB event says %q; want it to contain %q", errOut, want)
		}
	}
	// Nothing was stored, and the peer was not even registered.
	res, err := a.admins.ListPeers(t.Context(), connect.NewRequest(&adminv1.ListPeersRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(res.Msg.GetPeers()); n != 0 {
		t.Errorf("after a refused send A lists %d peers, want none", n)
	}
}

func TestStuckPeerIsShownAndSkipUnblocksIt(t *testing.T) {
	t.Parallel()
	b := newE2ENode(t, "B", "")
	// One retry and short probes keep the test short; the rules are the
	// same with the defaults.
	a := newE2ENode(t, "A", "", "--push-retries", "1", "--probe-interval", "200ms")
	b.start()
	a.start()
	l := newE2ELedger()
	a.send(b, l, 100) // seq 0, delivered by push
	b.waitInboxLen(a, 1, 20*time.Second)

	// An outbox that holds an event no receiver takes, as one written before
	// the limit existed does: B refuses it as a push (over its 4 MiB request
	// limit) and A's Pull reply with it would be over B's 8 MiB reply limit.
	a.kill()
	appendToOutbox(t, a, b, e2eInvite(7, strings.Repeat("x", 9<<20+512<<10)), e2eEvent(102), e2eEvent(103))
	a.start()

	p := a.waitPeer(b, "stuck on event 1", 30*time.Second, func(p *adminv1.Peer) bool { return p.GetStuck().GetSeq() == 1 })
	if !strings.Contains(p.GetStuck().GetReason(), "over the per-event limit") || p.GetPending() != 3 {
		t.Errorf("peer B on A: stuck %v, pending %d; want event 1 over the limit, 3 pending", p.GetStuck(), p.GetPending())
	}
	out, _, code := runCLI(t, "peers", "--admin", a.admin)
	if code != 0 || !strings.Contains(out, b.id+": STUCK at event 1: event 1 is") {
		t.Errorf("postbox peers: exit %d, printed\n%s\nwant a STUCK line for event 1", code, out)
	}

	// A skip needs its reason, and covers only undelivered events.
	if _, errOut, code := runCLI(t, "skip", b.id, "--admin", a.admin, "--through", "1"); code != 2 || !strings.Contains(errOut, "--reason") {
		t.Errorf("skip without --reason: exit %d, %q; want 2 naming --reason", code, errOut)
	}
	if _, errOut, code := runCLI(t, "skip", b.id, "--admin", a.admin, "--through", "0", "--reason", "r"); code == 0 || !strings.Contains(errOut, "event 0 is delivered already") {
		t.Errorf("skip of a delivered event: exit %d, %q; want a refusal naming it", code, errOut)
	}
	out, errOut, code := runCLI(t, "skip", b.id, "--admin", a.admin, "--through", "1", "--reason", "9.5 MB invite, refused by B")
	if code != 0 || !strings.Contains(out, "skipped events 1 to 1") {
		t.Fatalf("postbox skip: exit %d, %q %q", code, out, errOut)
	}

	// The events after it go on, by the resume probe.
	b.waitInboxLen(a, 3, 30*time.Second)
	in, err := b.inbox(a)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for _, r := range in {
		seqs = append(seqs, *r.SenderSeq)
	}
	if want := []uint64{0, 2, 3}; !slices.Equal(seqs, want) {
		t.Errorf("B's inbox from A holds sequence numbers %v, want %v", seqs, want)
	}
	p = a.waitPeer(b, "all done", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetPending() == 0 })
	if p.GetSkipped() != 1 || p.GetStuck() != nil || p.GetLastSkip().GetReason() != "9.5 MB invite, refused by B" {
		t.Errorf("peer B on A: skipped %d, stuck %v, last skip %v; want 1 skipped, not stuck, the reason kept", p.GetSkipped(), p.GetStuck(), p.GetLastSkip())
	}

	// Metrics never count the skipped event as delivered.
	_, m := opScrape(t, a.admin, "")
	for series, want := range map[string]float64{
		`postbox_peer_delivered{peer="` + p.GetPeerId() + `"}`: 3,
		`postbox_peer_skipped{peer="` + p.GetPeerId() + `"}`:   1,
		`postbox_peer_pending{peer="` + p.GetPeerId() + `"}`:   0,
	} {
		if got, ok := m[series]; !ok || got != want {
			t.Errorf("A's /metrics: %s = %v (present %v), want %v", series, got, ok, want)
		}
	}

	// The audit is clean and reports the skip.
	out, errOut, code = runCLI(t, "audit", "--json", "--data-dir", a.dataDir)
	if code != 0 {
		t.Fatalf("audit of A: exit %d\n%s\n%s", code, out, errOut)
	}
	report, err := decodeAudit(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(report.Skips) != 1 || report.Skips[0].FromSeq != 1 || report.Skips[0].ThroughSeq != 1 || report.Skips[0].ServerID != b.id {
		t.Errorf("audit of A reports skips %+v, want events 1 to 1 of %s", report.Skips, b.id)
	}
	if out, _, _ := runCLI(t, "audit", "--data-dir", a.dataDir); !strings.Contains(out, "1 skip(s) by an operator, never delivered") {
		t.Errorf("audit of A does not report the skip:\n%s", out)
	}
}

// appendToOutbox writes events to the end of n's outbox for peer directly,
// while n is stopped.
func appendToOutbox(t *testing.T, n, peer *e2eNode, events ...*syncv1.Event) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	s, err := embedded.Open(ctx, n.dataDir, embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	id, err := e2ePeerID(ctx, s, peer.id)
	if err != nil || id == "" {
		t.Fatalf("%s has no peer %s: %v", n.name, peer.id, err)
	}
	codec := streams.NewCodec(rand.Reader)
	for _, ev := range events {
		data, err := codec.EncodeEnqueued(ev)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Append(ctx, streams.Outbox(id), eventstore.Any(), data); err != nil {
			t.Fatal(err)
		}
	}
}

func (n *e2eNode) waitPeer(peer *e2eNode, what string, within time.Duration, cond func(*adminv1.Peer) bool) *adminv1.Peer {
	n.t.Helper()
	var last *adminv1.Peer
	e2eWait(n.t, within, n.name+": peer "+peer.name+" "+what, func() (bool, string) {
		res, err := n.admins.GetPeer(n.t.Context(), connect.NewRequest(&adminv1.GetPeerRequest{ServerId: peer.id}))
		if err != nil {
			return false, err.Error()
		}
		last = res.Msg.GetPeer()
		return cond(last), protojson.Format(last)
	})
	return last
}
