package main

// A homeserver that retries a send after a timeout: with an idempotency
// key, the retry prints the first sequence number and stores nothing, also
// after a crash and restart; SendBatch answers each send of a batch.

import (
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/harmony-postbox/postbox/adapters/streams"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
)

func TestSendWithAnIdempotencyKeyStoresOnceAcrossARestart(t *testing.T) {
	t.Parallel()
	b := newE2ENode(t, "B", "")
	a := newE2ENode(t, "A", "")
	b.start()
	a.start()
	send := func(key, event string) (string, string, int) {
		t.Helper()
		return runCLI(t, "send", "--admin", a.admin, "--to", b.id, "--idempotency-key", key, "--event", event)
	}
	const event = `{"userAddedToGuild":{"userId":"42","guildId":"7"}}`
	for i := range 3 {
		if out, errOut, code := send("req-1", event); code != 0 || strings.TrimSpace(out) != "0" {
			t.Fatalf("send %d: exit %d, printed %q, %q; want 0", i, code, out, errOut)
		}
	}
	a.kill() // a crash: the key is found again in the outbox
	a.start()
	if out, errOut, code := send("req-1", event); code != 0 || strings.TrimSpace(out) != "0" {
		t.Fatalf("send after a restart: exit %d, printed %q, %q; want 0", code, out, errOut)
	}
	_, errOut, code := send("req-1", `{"userAddedToGuild":{"userId":"43","guildId":"7"}}`)
	if code == 0 || !strings.Contains(errOut, "invalid_argument") || !strings.Contains(errOut, "sequence 0") {
		t.Fatalf("the key with another event: exit %d, %q; want an invalid argument naming sequence 0", code, errOut)
	}
	if out, errOut, code := send("req-2", `{"userAddedToGuild":{"userId":"44","guildId":"7"}}`); code != 0 || strings.TrimSpace(out) != "1" {
		t.Fatalf("a new key: exit %d, printed %q, %q; want 1", code, out, errOut)
	}

	// A batch: each send gets its own result; one to a malformed peer
	// does not hide the others'.
	res, err := a.admins.SendBatch(t.Context(), connect.NewRequest(&adminv1.SendBatchRequest{Sends: []*adminv1.SendRequest{
		{To: b.id, Event: e2eEvent(45)},
		{To: "not a server", Event: e2eEvent(46)},
		{To: b.id, Event: e2eEvent(47)},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	r := res.Msg.GetResults()
	if len(r) != 3 || r[0].GetError() != "" || r[0].GetSeq() != 2 || r[2].GetError() != "" || r[2].GetSeq() != 3 || r[1].GetCode() != "invalid_argument" {
		t.Fatalf("batch results %v; want seqs 2 and 3 beside an invalid argument", r)
	}

	b.waitInboxLen(a, 4, 30*time.Second)
	if n, err := a.streamLen(streams.Outbox, b); err != nil || n != 4 {
		t.Fatalf("A's outbox for B holds %d events (%v); want 4", n, err)
	}
}
