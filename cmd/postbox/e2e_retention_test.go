package main

import (
	"strings"
	"testing"
	"time"

	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	"google.golang.org/protobuf/encoding/protojson"
)

// `peers` shows what retention keeps of each outbox, read from the store:
// after a restart too, before retention has run again.
func TestPeersShowWhatRetentionKeeps(t *testing.T) {
	e2eSetup(t)
	a := newE2ENode(t, "A", "", append([]string{"--retain-delivered", "300ms"}, e2eQuickQueue...)...)
	b := newE2ENode(t, "B", "", e2eQuickQueue...)
	a.start()
	b.start()
	const n = 40
	sent := newE2ELedger()
	a.sendMany(b, sent, e2eUsers(0, n))
	b.waitInboxLen(a, n, 30*time.Second)
	// The last delivered event stays: a push's continuity claim names it.
	a.waitPeer(b, "retaining only the last delivered event", 20*time.Second, func(p *adminv1.Peer) bool {
		return p.GetOutboxRetainedFrom() == n-1 && p.GetOutboxRetained() == 1
	})
	out, errOut, code := runCLI(t, "peers", "--admin", a.admin)
	if code != 0 || !strings.Contains(out, "outbox kept from event 39 (1 event(s) stored)") {
		t.Fatalf("postbox peers: exit %d\n%s%s", code, out, errOut)
	}

	a.kill()
	a.flags = append(a.flags[:0:0], e2eQuickQueue...) // no retention now: the store says what it removed
	a.start()
	out, errOut, code = runCLI(t, "peers", "--json", "--admin", a.admin)
	p := &adminv1.Peer{}
	if code != 0 || protojson.Unmarshal([]byte(strings.TrimSpace(out)), p) != nil ||
		p.GetOutboxRetainedFrom() != n-1 || p.GetOutboxRetained() != 1 || p.GetHead() != n {
		t.Fatalf("postbox peers --json after a restart: exit %d\n%s%s", code, out, errOut)
	}
}
