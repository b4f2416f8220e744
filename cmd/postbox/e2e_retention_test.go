package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/harmony-postbox/postbox/adapters/streams"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
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

// With --retain-received, a receiver removes what it received once old
// (no durable consumer here), says so in peers, and a lost projections
// checkpoint still rebuilds every guild from the store's snapshot; the
// audit passes and names where it began; the sender's next events arrive.
func TestReceivedEventsRetainedAndRebuiltWithoutACheckpoint(t *testing.T) {
	e2eSetup(t)
	a := newE2ENode(t, "A", "", e2eQuickQueue...)
	b := newE2ENode(t, "B", "", append([]string{"--retain-received", "300ms"}, e2eQuickQueue...)...)
	a.start()
	b.start()
	const n = 40
	sent := newE2ELedger()
	a.sendMany(b, sent, e2eUsers(0, n))
	b.waitInboxLen(a, n, 30*time.Second)
	// Pushes of several events are stored as runs: the inbox holds fewer
	// records than events, and retention keeps the last record.
	records, err := b.streamLen(streams.Inbox, a)
	if err != nil {
		t.Fatal(err)
	}
	last := uint64(records - 1)
	b.waitPeer(a, "retaining only the last received record", 20*time.Second, func(p *adminv1.Peer) bool {
		return p.GetInboxRetainedFrom() == last && p.GetEventsReceived() == n
	})
	out, errOut, code := runCLI(t, "peers", "--admin", b.admin)
	if code != 0 || !strings.Contains(out, fmt.Sprintf("retention removed the inbox records before record %d (40 events received)", last)) {
		t.Fatalf("postbox peers: exit %d\n%s%s", code, out, errOut)
	}

	b.kill()
	if err := os.Remove(filepath.Join(b.dataDir, checkpointFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	b.flags = append(b.flags[:0:0], e2eQuickQueue...)
	b.start()
	for _, user := range []uint64{0, 17, n - 1} {
		res, err := b.admins.ListGuilds(t.Context(), connect.NewRequest(&adminv1.ListGuildsRequest{UserId: user}))
		if err != nil || len(res.Msg.GetGuilds()) != 1 || res.Msg.GetGuilds()[0].GetGuildId() != 7 {
			t.Fatalf("user %d's guilds after a lost checkpoint: %v (%v)", user, res, err)
		}
	}
	code, out, errOut = runAuditCmd(t, "--data-dir", b.dataDir)
	if code != 0 || !strings.Contains(out, fmt.Sprintf("revision %d (the snapshot of the records before it)", last)) {
		t.Fatalf("audit: exit %d\n%s%s", code, out, errOut)
	}

	a.sendMany(b, sent, e2eUsers(n, 5))
	// What is stored now: the last record kept, then the 5 new events.
	e2eWait(t, 30*time.Second, "B's inbox from A to hold the 5 new events", func() (bool, string) {
		recs, err := b.peerStream(streams.Inbox, a)
		if err != nil {
			return false, err.Error()
		}
		if len(recs) == 0 || recs[0].Revision != last {
			return false, fmt.Sprintf("%d records, want the first at %d", len(recs), last)
		}
		events, err := streams.ReceivedOf(recs[1:])
		if err != nil {
			return false, err.Error()
		}
		var users []uint64
		for _, e := range events {
			users = append(users, e.Event.GetUserAddedToGuild().GetUserId())
		}
		want := sent.want(t)[n:]
		return slices.Equal(users, want), fmt.Sprintf("users %v after the record kept, want %v", users, want)
	})
}
