package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/delivery"
	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/adapters/projector"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
	"github.com/harmony-postbox/postbox/projections"
)

// runAuditCmd runs `postbox audit args...` in-process and returns its exit
// status and output; stderr ends with the error main would print.
func runAuditCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	err := run(t.Context(), append([]string{"audit"}, args...), &out, &errb, func(string) string { return "" })
	if err != nil {
		code = exitCode(err)
		errb.WriteString(err.Error())
	}
	return code, out.String(), errb.String()
}

// auditPeer is a peer that accepts pushes until told to refuse them.
type auditPeer struct {
	mu   sync.Mutex
	down bool
}

func (p *auditPeer) Push(_ context.Context, _ domain.ServerID, seq uint64, _ []*syncv1.Event) (peerclient.PushResult, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down {
		return peerclient.PushResult{}, errors.New("connection refused")
	}
	return peerclient.PushResult{Through: seq}, nil
}

func (p *auditPeer) Pull(context.Context, domain.ServerID, *uint64) (peerclient.PullResult, error) {
	return peerclient.PullResult{}, nil
}

func (p *auditPeer) setDown(v bool) { p.mu.Lock(); p.down = v; p.mu.Unlock() }

type auditClock struct{}

func (auditClock) Now() time.Time { return time.Now() }

func (auditClock) AfterFunc(d time.Duration, f func()) domain.Timer { return time.AfterFunc(d, f) }

func auditEvent(user uint64) *syncv1.Event {
	return &syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: user, GuildId: 1}}}
}

// auditDeliveryRecords reads a delivery stream as domain events.
func auditDeliveryRecords(t *testing.T, s *embedded.Store, peer streams.PeerID) []domain.DeliveryEvent {
	t.Helper()
	recs, err := s.ReadStream(t.Context(), streams.Delivery(peer), 0, 1000)
	if errors.Is(err, eventstore.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []domain.DeliveryEvent
	for _, r := range recs {
		ev, err := streams.DecodeDelivery(r)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

func auditWait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestAuditCommandEngineStore audits a data directory the delivery engine
// wrote (pushes, queue mode, an acknowledged pull, received events) while
// the store is still open for writing, as under a running server.
func TestAuditCommandEngineStore(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dir := t.TempDir()
	store, err := embedded.Open(ctx, dir, embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	codec := streams.NewCodec(rand.Reader)
	reg, err := registry.Load(ctx, store, codec, rand.Reader, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := delivery.DefaultConfig()
	cfg.PushRetries = 1
	cfg.PushBackoff = domain.Backoff{First: time.Millisecond, Max: time.Millisecond}
	cfg.ResumeProbe = false
	cfg.PullInterval = time.Hour
	peer := &auditPeer{}
	engine := delivery.New(cfg, store, codec, reg, peer, auditClock{}, slog.New(slog.DiscardHandler), rand.Reader)
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- engine.Run(runCtx) }()
	defer func() { stop(); <-ran }()

	b := domain.MustParseServerID("b.example:2289")
	for i := range 3 {
		if _, err := engine.Send(ctx, b, auditEvent(uint64(i))); err != nil {
			t.Fatal(err)
		}
	}
	id, ok := reg.Lookup(b)
	if !ok {
		t.Fatal("peer not registered")
	}
	auditWait(t, "three pushes", func() bool { return len(auditDeliveryRecords(t, store, id)) == 3 })
	peer.setDown(true)
	for i := range 2 {
		if _, err := engine.Send(ctx, b, auditEvent(uint64(10+i))); err != nil {
			t.Fatal(err)
		}
	}
	auditWait(t, "queue mode", func() bool { return len(auditDeliveryRecords(t, store, id)) == 4 })
	caller := domain.Caller{ServerID: b, Extended: true}
	batch, err := engine.ServePull(ctx, caller, nil)
	if err != nil || len(batch.Events) != 2 {
		t.Fatalf("pull: %d events, %v", len(batch.Events), err)
	}
	ack := batch.FirstSeq + 1
	if _, err := engine.ServePull(ctx, caller, &ack); err != nil {
		t.Fatal(err)
	}
	for seq := range uint64(2) {
		if err := engine.AcceptPush(ctx, caller, []*syncv1.Event{auditEvent(100 + seq)}, &seq); err != nil {
			t.Fatal(err)
		}
	}

	code, stdout, stderr := runAuditCmd(t, "--data-dir", dir)
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "no violations") || !strings.Contains(stdout, "b.example:2289") {
		t.Fatalf("report:\n%s", stdout)
	}
	if stderr != "" {
		t.Fatalf("stderr is not a terminal, yet: %q", stderr)
	}

	code, stdout, _ = runAuditCmd(t, "--data-dir", dir, "--json")
	if code != 0 {
		t.Fatalf("--json: exit %d", code)
	}
	rep, err := decodeAudit(stdout)
	if err != nil {
		t.Fatalf("--json output: %v\n%s", err, stdout)
	}
	want := projections.PeerSummary{ServerID: "b.example:2289", PeerID: string(id), Head: 5, Delivered: 5, Pending: 0, Mode: "push", Received: 2}
	if len(rep.Peers) != 1 || rep.Peers[0] != want {
		t.Fatalf("peers %+v, want %+v", rep.Peers, want)
	}
}

// auditDataDir writes records to a new data directory and closes it.
func auditDataDir(t *testing.T, write func(ctx context.Context, s *embedded.Store, c *streams.Codec) error) string {
	t.Helper()
	dir := t.TempDir()
	s, err := embedded.Open(t.Context(), dir, embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := write(t.Context(), s, streams.NewCodec(rand.Reader)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

// auditDoublePush records peer p1 with one event pushed twice.
func auditDoublePush(ctx context.Context, s *embedded.Store, c *streams.Codec) error {
	seen, err := c.Encode(streams.TypePeerSeen, &eventsv1.PeerSeen{PeerId: "p1", ServerId: "a.example:2289"})
	if err != nil {
		return err
	}
	enq, err := c.EncodeEnqueued(auditEvent(1))
	if err != nil {
		return err
	}
	pushes, err := c.EncodeDelivery(domain.EventPushed{Seq: 0, Attempts: 1}, domain.EventPushed{Seq: 0, Attempts: 1})
	if err != nil {
		return err
	}
	for _, a := range []struct {
		stream string
		data   []eventstore.EventData
	}{{streams.Peers, []eventstore.EventData{seen}}, {"outbox-p1", []eventstore.EventData{enq}}, {"delivery-p1", pushes}} {
		if _, err := s.Append(ctx, a.stream, eventstore.Any(), a.data...); err != nil {
			return err
		}
	}
	return nil
}

func TestAuditCommandViolations(t *testing.T) {
	t.Parallel()
	dir := auditDataDir(t, auditDoublePush)

	code, stdout, stderr := runAuditCmd(t, "--data-dir", dir)
	if code != 1 {
		t.Fatalf("exit %d, want 1\n%s%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "delivery-p1 revision 1: no-double-delivery") {
		t.Fatalf("the report does not name stream, revision and rule:\n%s", stdout)
	}
	if !strings.Contains(stderr, "1 violation") {
		t.Fatalf("stderr %q", stderr)
	}

	code, stdout, _ = runAuditCmd(t, "--data-dir", dir, "--json")
	if code != 1 {
		t.Fatalf("--json: exit %d, want 1", code)
	}
	// One line of protojson of the admin API's AuditReport: camelCase
	// keys, 64-bit numbers as strings, every field present.
	var doc map[string]json.RawMessage
	if err := json.Unmarshal([]byte(stdout), &doc); err != nil || strings.Count(stdout, "\n") != 1 {
		t.Fatalf("--json output is not one line of JSON: %v\n%s", err, stdout)
	}
	if string(doc["clean"]) != "false" || string(doc["checkpointChecked"]) == "" {
		t.Fatalf("--json output: %s", stdout)
	}
	rep, err := decodeAudit(stdout)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Peers) != 1 || rep.Peers[0].ServerID != "a.example:2289" || rep.Peers[0].PeerID != "p1" || rep.Peers[0].Mode != "push" {
		t.Fatalf("peers %v", rep.Peers)
	}
	if v := rep.Violations; len(v) != 1 || v[0].Stream != "delivery-p1" || v[0].Revision != 1 || v[0].Rule != projections.RuleNoDoubleDelivery || v[0].Detail == "" {
		t.Fatalf("violations %v", v)
	}
}

func TestAuditCommandCheckpoint(t *testing.T) {
	t.Parallel()
	dir := auditDataDir(t, func(ctx context.Context, s *embedded.Store, c *streams.Codec) error {
		seen, err := c.Encode(streams.TypePeerSeen, &eventsv1.PeerSeen{PeerId: "p1", ServerId: "a.example:2289"})
		if err != nil {
			return err
		}
		_, err = s.Append(ctx, streams.Peers, eventstore.NoStream(), seen)
		return err
	})
	store, err := embedded.OpenReadOnly(t.Context(), dir, embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	sub, err := store.Subscribe(t.Context(), eventstore.Filter{}, eventstore.FromStart())
	if err != nil {
		t.Fatal(err)
	}
	item, err := sub.Recv(t.Context())
	sub.Close()
	if err != nil || item.Event == nil {
		t.Fatalf("first record: %+v, %v", item, err)
	}
	path := filepath.Join(dir, checkpointFile)

	// A checkpoint equal to the replay passes.
	good := projections.NewState()
	if err := good.Apply(streams.Decode(*item.Event)); err != nil {
		t.Fatal(err)
	}
	if err := projector.WriteCheckpoint(path, good); err != nil {
		t.Fatal(err)
	}
	code, stdout, _ := runAuditCmd(t, "--data-dir", dir)
	if code != 0 || !strings.Contains(stdout, "checkpoint compared") {
		t.Fatalf("exit %d:\n%s", code, stdout)
	}

	// One that saw another history at the same position does not.
	other := *item.Event
	other.Data = []byte(`{"peerId":"p1","serverId":"z.example:2289"}`)
	bad := projections.NewState()
	if err := bad.Apply(streams.Decode(other)); err != nil {
		t.Fatal(err)
	}
	if err := projector.WriteCheckpoint(path, bad); err != nil {
		t.Fatal(err)
	}
	code, stdout, _ = runAuditCmd(t, "--data-dir", dir)
	if code != 1 || !strings.Contains(stdout, projections.RuleCheckpointMatchesReplay) {
		t.Fatalf("exit %d:\n%s", code, stdout)
	}
}

func TestAuditCommandCannotRun(t *testing.T) {
	t.Parallel()
	for name, args := range map[string][]string{
		"no data directory":       {"--data-dir", filepath.Join(t.TempDir(), "missing")},
		"not a data directory":    {"--data-dir", t.TempDir()},
		"a bad connection string": {"--store", "bogus://"},
		"an unknown flag":         {"--frobnicate"},
		"an argument":             {"extra"},
	} {
		t.Run(name, func(t *testing.T) {
			code, stdout, stderr := runAuditCmd(t, args...)
			if code != 2 {
				t.Fatalf("exit %d, want 2\n%s%s", code, stdout, stderr)
			}
		})
	}
}

func TestAuditCommandProgressOnlyOnATerminal(t *testing.T) {
	t.Parallel()
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, w := range []io.Writer{io.Discard, f} {
		progress, done := auditProgress(w)
		if progress != nil {
			t.Fatalf("progress on %T, which is not a terminal", w)
		}
		done()
	}
}

// auditRetainedDir writes peer p1's 6 events, each pushed, with a
// snapshot of the delivery records before 3 and one before 5 (its
// delivered cursor set to lie at 5+lie), and then truncates the outbox
// before 4 and the delivery stream before 2, as retention would.
func auditRetainedDir(t *testing.T, lie uint64) string {
	t.Helper()
	return auditDataDir(t, func(ctx context.Context, s *embedded.Store, c *streams.Codec) error {
		db, err := c.EncodeDatabaseCreated("db1")
		if err != nil {
			return err
		}
		seen, err := c.Encode(streams.TypePeerSeen, &eventsv1.PeerSeen{PeerId: "p1", ServerId: "a.example:2289"})
		if err != nil {
			return err
		}
		appendTo := func(stream string, data ...eventstore.EventData) error {
			_, err := s.Append(ctx, stream, eventstore.Any(), data...)
			return err
		}
		if err := errors.Join(appendTo(streams.Database, db), appendTo(streams.Peers, seen)); err != nil {
			return err
		}
		for seq := range uint64(6) {
			enq, err := c.EncodeEnqueued(auditEvent(seq))
			if err != nil {
				return err
			}
			push, err := c.EncodeDelivery(domain.EventPushed{Seq: seq, Attempts: 1})
			if err != nil {
				return err
			}
			if err := errors.Join(appendTo("outbox-p1", enq), appendTo("delivery-p1", push...)); err != nil {
				return err
			}
			if seq == 2 || seq == 4 {
				n := seq + 1
				snap, err := c.EncodeSnapshot(streams.NewOutboxSnapshot("db1", "delivery-p1", n, domain.Outbox{
					Head: n, Delivered: n + lie*(n/5), HandedOver: n, Given: seq, HasGiven: true}))
				if err != nil {
					return err
				}
				if err := appendTo(streams.DeliverySnapshot("p1"), snap); err != nil {
					return err
				}
			}
		}
		return errors.Join(s.Truncate(ctx, "outbox-p1", 4), s.Truncate(ctx, "delivery-p1", 2))
	})
}

// On a store retention truncated, the audit says in its JSON where it
// began on each truncated stream (the outbox at its first kept event, the
// delivery stream from the oldest snapshot covering what was removed), and
// compares the later snapshots with the records: a tampered one is found.
func TestAuditCommandRetainedRangeAndSnapshots(t *testing.T) {
	t.Parallel()
	code, stdout, stderr := runAuditCmd(t, "--data-dir", auditRetainedDir(t, 0), "--json")
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, stdout, stderr)
	}
	rep, err := decodeAudit(stdout)
	if err != nil {
		t.Fatal(err)
	}
	want := []projections.Retained{{Stream: "outbox-p1", From: 4}, {Stream: "delivery-p1", From: 3, FromSnapshot: true}}
	if len(rep.Retained) != 2 || rep.Retained[0] != want[0] || rep.Retained[1] != want[1] {
		t.Fatalf("retained %+v, want %+v", rep.Retained, want)
	}
	if rep.SnapshotsChecked != 1 {
		t.Fatalf("%d snapshots checked, want 1 (the one after the one it began from)", rep.SnapshotsChecked)
	}

	code, stdout, _ = runAuditCmd(t, "--data-dir", auditRetainedDir(t, 1))
	if code != 1 || !strings.Contains(stdout, "snapshot-delivery-p1 revision 1: "+projections.RuleSnapshotMatchesFold) {
		t.Fatalf("a tampered snapshot: exit %d\n%s", code, stdout)
	}
	if !strings.Contains(stdout, "delivery-p1 revision 3 (the snapshot of the records before it)") {
		t.Fatalf("the text report does not say where it began:\n%s", stdout)
	}

	code, stdout, _ = runAuditCmd(t, "--data-dir", auditDataDir(t, auditDoublePush), "--json")
	if rep, err := decodeAudit(stdout); code != 1 || err != nil || len(rep.Retained) != 0 || !strings.Contains(stdout, `"fullHistory":true`) {
		t.Fatalf("a full history: exit %d, %v, retained %+v\n%s", code, err, rep.Retained, stdout)
	}
}

// On a store whose peers stream retention compacted behind registry
// snapshots, postbox audit passes, says it began the peers stream from a
// snapshot, and compares the later snapshot with the records.
func TestAuditCommandCompactedPeersStream(t *testing.T) {
	t.Parallel()
	var tb uint64
	dir := auditDataDir(t, func(ctx context.Context, s *embedded.Store, c *streams.Codec) error {
		reg, err := registry.Load(ctx, s, c, rand.Reader, nil)
		if err != nil {
			return err
		}
		for round := range 2 {
			// Concurrent first contacts go in few appends.
			var wg sync.WaitGroup
			errs := make(chan error, registry.SnapshotEvery+1)
			for i := range registry.SnapshotEvery + 1 {
				wg.Go(func() {
					if _, err := reg.Register(ctx, domain.MustParseServerID(fmt.Sprintf("r%d-%d.example:2289", round, i))); err != nil {
						errs <- err
					}
				})
			}
			wg.Wait()
			close(errs)
			if err := errors.Join(<-errs, reg.Compact(ctx, s)); err != nil {
				return err
			}
		}
		if err := reg.Compact(ctx, s); err != nil {
			return err
		}
		tb, err = s.TruncatedBefore(ctx, streams.Peers)
		return err
	})
	if tb == 0 {
		t.Fatal("the peers stream was not compacted")
	}
	code, stdout, stderr := runAuditCmd(t, "--data-dir", dir)
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, stdout, stderr)
	}
	for _, want := range []string{
		fmt.Sprintf("peers revision %d (the snapshot of the records before it)", tb+1),
		fmt.Sprintf("%d peers, 1 snapshot(s)", 2*(registry.SnapshotEvery+1)),
	} {
		if !strings.Contains(stdout, want) {
			t.Fatalf("the report does not say %q:\n%s", want, stdout)
		}
	}
}

func TestAuditSummaryCountsInWords(t *testing.T) {
	t.Parallel()
	for n, want := range map[int]string{0: "0 peers", 1: "1 peer", 2: "2 peers"} {
		if got := countOf(n, "peer", "peers"); got != want {
			t.Errorf("countOf(%d) = %q, want %q", n, got, want)
		}
	}
}
