package embedded

import (
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
)

func open(t *testing.T) *Store {
	t.Helper()
	s, err := Open(t.Context(), t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func event(typ string) eventstore.EventData {
	var id eventstore.EventID
	_, _ = rand.Read(id[:])
	return eventstore.EventData{ID: id, Type: typ}
}

func appendReq(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) *request {
	return &request{ctx: ctx, stream: stream, expected: expected, events: events, done: make(chan struct{})}
}

// commitTogether hands reqs to the writer as one batch: they are queued
// under the queue's lock, so the writer takes them all at once.
func commitTogether(s *Store, reqs ...*request) {
	s.queueMu.Lock()
	s.queue = append(s.queue, reqs...)
	s.queueCond.Signal()
	s.queueMu.Unlock()
	for _, r := range reqs {
		<-r.done
	}
}

func TestBatchAnswersEachAppendOnItsOwn(t *testing.T) {
	ctx := t.Context()
	s := open(t)
	a0, a1 := event("A"), event("A")
	reqs := []*request{
		appendReq(ctx, "a", eventstore.NoStream(), a0),         // creates a
		appendReq(ctx, "a", eventstore.NoStream(), event("X")), // a exists now: conflict
		appendReq(ctx, "b", eventstore.Exact(5), event("X")),   // b does not exist: conflict
		appendReq(ctx, "c", eventstore.Any(), event("C")),      // creates c
		appendReq(ctx, "a", eventstore.Exact(0), a1),           // follows the first append
		appendReq(ctx, "a", eventstore.NoStream(), a0),         // a retry of the first: idempotent
		appendReq(ctx, "a", eventstore.Any(), a1),              // a retry of the fifth: idempotent
		{ctx: ctx, del: true, stream: "c", expected: eventstore.Exact(0), done: make(chan struct{})},
		appendReq(ctx, "c", eventstore.Any(), event("C")), // deleted just before
	}
	before := s.Stats()
	commitTogether(s, reqs...)
	if got := s.Stats().Commits - before.Commits; got != 1 {
		t.Errorf("%d commits for one batch", got)
	}
	wantOK := func(i int, rev uint64) {
		t.Helper()
		if r := reqs[i]; r.err != nil || r.res.NextExpectedRevision != rev {
			t.Errorf("request %d: got revision %d, %v; want revision %d", i, r.res.NextExpectedRevision, r.err, rev)
		}
	}
	wantErr := func(i int, target error) {
		t.Helper()
		if !errors.Is(reqs[i].err, target) {
			t.Errorf("request %d: got %v, want %v", i, reqs[i].err, target)
		}
	}
	wantOK(0, 0)
	wantErr(1, eventstore.ErrWrongExpectedRevision)
	wantErr(2, eventstore.ErrWrongExpectedRevision)
	wantOK(3, 0)
	wantOK(4, 1)
	wantOK(5, 0)
	wantOK(6, 1)
	if reqs[7].err != nil {
		t.Errorf("delete: %v", reqs[7].err)
	}
	wantErr(8, eventstore.ErrStreamDeleted)
	if reqs[5].res != reqs[0].res || reqs[6].res != reqs[4].res {
		t.Error("idempotent retries did not return the original results")
	}
	got, err := s.ReadStream(ctx, "a", 0, 10)
	if err != nil || len(got) != 2 || got[0].ID != a0.ID || got[1].ID != a1.ID {
		t.Errorf("stream a holds %v, %v", revisionsOf(got), err)
	}
}

func revisionsOf(events []eventstore.RecordedEvent) []uint64 {
	var out []uint64
	for _, e := range events {
		out = append(out, e.Revision)
	}
	return out
}

// A statement that fails for one append must not fail the others of its
// batch: the writer retries them one by one.
func TestFailingStatementFailsOnlyItsAppend(t *testing.T) {
	ctx := t.Context()
	s := open(t)
	// The writer is idle, waiting for work; its connection is free.
	if _, err := s.w.conn.ExecContext(ctx, `CREATE TRIGGER poison BEFORE INSERT ON events
		WHEN NEW.type = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned event'); END`); err != nil {
		t.Fatal(err)
	}
	good1 := appendReq(ctx, "good1", eventstore.NoStream(), event("A"))
	bad := appendReq(ctx, "bad", eventstore.NoStream(), event("A"), event("poison"))
	good2 := appendReq(ctx, "good2", eventstore.NoStream(), event("A"))
	commitTogether(s, good1, bad, good2)
	if good1.err != nil || good2.err != nil {
		t.Errorf("good appends failed: %v, %v", good1.err, good2.err)
	}
	if bad.err == nil || !strings.Contains(bad.err.Error(), "poisoned") {
		t.Errorf("poisoned append: got %v", bad.err)
	}
	if _, err := s.ReadStream(ctx, "bad", 0, 10); !errors.Is(err, eventstore.ErrStreamNotFound) {
		t.Errorf("the poisoned append left something behind: %v", err)
	}
	for _, stream := range []string{"good1", "good2"} {
		if got, err := s.ReadStream(ctx, stream, 0, 10); err != nil || len(got) != 1 {
			t.Errorf("%s: %d events, %v", stream, len(got), err)
		}
	}
	// The writer's view of "bad" was rolled back with the transaction.
	if _, err := s.Append(ctx, "bad", eventstore.NoStream(), event("A")); err != nil {
		t.Errorf("append to the stream of the failed append: %v", err)
	}
}

// After a failed COMMIT the store refuses writes: what is on disk is no
// longer known.
func TestFailedCommitStopsWrites(t *testing.T) {
	ctx := t.Context()
	s := open(t)
	if _, err := s.Append(ctx, "s", eventstore.NoStream(), event("A")); err != nil {
		t.Fatal(err)
	}
	s.w.commit.Close() // the next COMMIT fails
	if _, err := s.Append(ctx, "s", eventstore.Exact(0), event("A")); err == nil {
		t.Fatal("append succeeded although its commit failed")
	}
	_, err := s.Append(ctx, "t", eventstore.Any(), event("A"))
	if err == nil || !strings.Contains(err.Error(), "restart required") {
		t.Fatalf("append after a failed commit: got %v, want a refusal", err)
	}
	if got, err := s.ReadStream(ctx, "s", 0, 10); err != nil || len(got) != 1 {
		t.Errorf("reads after a failed commit: %d events, %v", len(got), err)
	}
	s.Close()
}

func TestIDCacheEvictsTheOldest(t *testing.T) {
	c := newIDCache(3)
	key := func(i int) idKey { return idKey{stream: 1, id: eventstore.EventID{byte(i)}} }
	for i := range 5 {
		c.add(key(i), uint64(i))
	}
	for i := range 5 {
		rev, ok := c.lookup(key(i))
		if want := i >= 2; ok != want || ok && rev != uint64(i) {
			t.Errorf("key %d: got %d, %v; want present=%v", i, rev, ok, want)
		}
	}
	if _, ok := c.lookup(idKey{stream: 2, id: eventstore.EventID{4}}); ok {
		t.Error("an ID is found in another stream")
	}
}
