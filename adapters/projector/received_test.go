package projector

import (
	"context"
	"crypto/rand"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	"github.com/harmony-postbox/postbox/projections"
)

type fixedClock struct{ now time.Time }

func (c fixedClock) Now() time.Time { return c.now }

type acks []domain.Consumer

func (a *acks) List(context.Context) ([]domain.Consumer, error) { return *a, nil }

// received is peer p's five received events (sequence numbers 0..4): a
// user added to guild 7 and to guild 8, an invite, a removal from guild 7.
func received(t *testing.T) *history {
	return newHistory(t).seen("p", "p.example:2289").
		received("p", u64(0), added(1, 7), added(2, 7), invited(3, 9, "x"), added(4, 8), removed(1, 7))
}

func inboxPositions(t *testing.T, s eventstore.Store) []uint64 {
	t.Helper()
	var out []uint64
	for _, r := range readAll(t, s) {
		if r.Stream == streams.Inbox("p") {
			out = append(out, r.Position.Commit)
		}
	}
	return out
}

func TestReceivedEventsAreRemovedBehindSnapshotsOnceAcknowledgedAndOld(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	store := received(t).store()
	path := filepath.Join(t.TempDir(), "projections.checkpoint")
	consumers := &acks{}
	clock := &fixedClock{now: time.Now()}
	r := &ReceivedRetention{Store: store, Consumers: consumers, Clock: clock, Keep: time.Minute,
		Logger: testLogger(t), Codec: streams.NewCodec(rand.Reader)}
	l := NewLive(store, path, testLogger(t)).WithReceivedRetention(r)
	stop := startLive(t, l)
	want, err := l.Current(ctx)
	if err != nil {
		t.Fatal(err)
	}
	truncated := func() uint64 {
		t.Helper()
		tb, err := store.TruncatedBefore(ctx, streams.Inbox("p"))
		if err != nil {
			t.Fatal(err)
		}
		return tb
	}
	pass := func() {
		t.Helper()
		if _, err := l.Current(ctx); err != nil {
			t.Fatal(err)
		}
		if err := r.Pass(ctx); err != nil {
			t.Fatal(err)
		}
	}

	// Given events younger than the retention, none goes.
	pass()
	if tb := truncated(); tb != 0 {
		t.Fatalf("truncated before %d while younger than the retention", tb)
	}
	// Once older, only what the one durable consumer acknowledged goes.
	clock.now = clock.now.Add(time.Hour)
	*consumers = acks{{Name: "c", Position: inboxPositions(t, store)[1]}}
	pass()
	if tb := truncated(); tb != 2 {
		t.Fatalf("truncated before %d with events 0 and 1 acknowledged, want 2", tb)
	}
	// Acknowledged, all go but the last.
	*consumers = acks{{Name: "c", Position: ^uint64(0)}}
	pass()
	if tb := truncated(); tb != 4 {
		t.Fatalf("truncated before %d, want 4 (the last record stays)", tb)
	}
	last, err := store.ReadStreamBackward(ctx, streams.InboxSnapshot("p"), 1)
	if err != nil || len(last) != 1 {
		t.Fatalf("inbox snapshot: %v", err)
	}
	snap, err := streams.DecodeInboxSnapshot(last[0])
	if in := snap.Inbox(); err != nil || snap.Revision != 4 || !in.HasSeq || in.LastSeq != 3 || in.Count != 4 {
		t.Fatalf("inbox snapshot %+v (%v), want the fold of the 4 records removed", snap, err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	// A lost checkpoint rebuilds the same guilds and invites, from the
	// store's projections snapshot and the records after it.
	rebuilt := NewLive(store, "", testLogger(t))
	startLive(t, rebuilt)
	got, err := rebuilt.Current(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Guilds(2), want.Guilds(2)) || !slices.Equal(got.Guilds(4), want.Guilds(4)) ||
		len(got.Guilds(1)) != 0 || len(got.Invites(3)) != 1 {
		t.Fatalf("rebuilt guilds %v %v %v, invites %v; want those before retention", got.Guilds(1), got.Guilds(2), got.Guilds(4), got.Invites(3))
	}

	// The audit starts the peer's effects from that snapshot, says where it
	// began on the inbox, and compares the checkpoint.
	rep, err := Audit(ctx, store, AuditOptions{CheckpointPath: path}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Clean() || !rep.CheckpointChecked {
		t.Fatalf("audit: violations %v, checkpoint compared %v", rep.Violations, rep.CheckpointChecked)
	}
	if !slices.Contains(rep.Retained, projections.Retained{Stream: streams.Inbox("p"), From: 4, FromSnapshot: true}) {
		t.Fatalf("the audit's range %+v does not name the inbox", rep.Retained)
	}
}

// An inbox truncated with no projections snapshot is an audit finding.
func TestAnInboxTruncatedWithoutASnapshotIsAFinding(t *testing.T) {
	t.Parallel()
	store := received(t).store()
	if err := store.Truncate(t.Context(), streams.Inbox("p"), 3); err != nil {
		t.Fatal(err)
	}
	rep, err := Audit(t.Context(), store, AuditOptions{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Violations) != 1 || rep.Violations[0].Rule != projections.RuleTruncatedBehindSnapshot {
		t.Fatalf("violations %v", rep.Violations)
	}
}

// With retention of delivered events, a projections snapshot is kept in the
// store while it moves, so that a lost checkpoint still knows the invites
// sent in outbox events retention removed since; nothing new, no snapshot.
func TestAProjectionsSnapshotCoversWhatDeliveredRetentionRemoves(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	h := newHistory(t).seen("p", "p.example:2289").enqueue("p", invited(5, 42, "y"), added(6, 1))
	store := h.store()
	r := &ReceivedRetention{Store: store, Consumers: &acks{}, Clock: fixedClock{now: time.Now()}, Snapshots: true,
		Every: time.Hour, Logger: testLogger(t), Codec: streams.NewCodec(rand.Reader)}
	l := NewLive(store, "", testLogger(t)).WithReceivedRetention(r)
	startLive(t, l)
	snapshots := func() uint64 {
		t.Helper()
		if _, err := l.Current(ctx); err != nil {
			t.Fatal(err)
		}
		if err := r.Pass(ctx); err != nil {
			t.Fatal(err)
		}
		recs, err := store.ReadStreamBackward(ctx, streams.ProjectionsSnapshot, 1)
		if err != nil || len(recs) != 1 {
			t.Fatalf("projections snapshot: %d (%v)", len(recs), err)
		}
		return recs[0].Revision + 1
	}
	if n := snapshots(); n != 1 {
		t.Fatalf("%d snapshots after the first pass, want 1", n)
	}
	if n := snapshots(); n != 1 {
		t.Fatalf("%d snapshots after a pass with nothing new, want still 1", n)
	}
	h.enqueue("p", added(7, 1)).appendTo(store)
	if n := snapshots(); n != 2 {
		t.Fatalf("%d snapshots after a pass with an event new, want 2", n)
	}
	if err := store.Truncate(ctx, streams.Outbox("p"), 2); err != nil {
		t.Fatal(err)
	}
	rebuilt := NewLive(store, "", testLogger(t))
	startLive(t, rebuilt)
	got, err := rebuilt.Current(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if sent := got.SentInvites(); len(sent) != 1 || sent[0].InviteID != "y" {
		t.Fatalf("sent invites rebuilt without a checkpoint: %+v", sent)
	}
	rep, err := Audit(ctx, store, AuditOptions{}, nil)
	if err != nil || !rep.Clean() {
		t.Fatalf("audit: %v %v", rep.Violations, err)
	}
}
