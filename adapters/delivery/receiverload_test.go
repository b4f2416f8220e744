package delivery

import (
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// pushSeqs pushes one event per sequence number (nil: a push without one,
// as an upstream sender makes) from sender.
func pushSeqs(t *testing.T, w *world, seqs ...*uint64) {
	t.Helper()
	caller := domain.Caller{ServerID: sender, Extended: true}
	for _, s := range seqs {
		user := uint64(1000)
		if s != nil {
			user = *s
		}
		if err := w.engine.AcceptPush(t.Context(), caller, []*syncv1.Event{added(user)}, s); err != nil {
			t.Fatal(err)
		}
	}
}

func seqRange(from, to uint64) []*uint64 {
	var out []*uint64
	for s := from; s < to; s++ {
		out = append(out, seqOf(s))
	}
	return out
}

func seqless(n int) []*uint64 { return make([]*uint64, n) }

// snapshotInbox writes a snapshot of sender's inbox covering its first
// revision records (folded from them, unless fold is given), of database
// db ("": this store's).
func snapshotInbox(t *testing.T, w *world, revision uint64, db string, fold *domain.Inbox) {
	t.Helper()
	ctx := t.Context()
	id := mustLookup(t, w, sender)
	stream := streams.Inbox(id)
	if fold == nil {
		fold = &domain.Inbox{}
		if revision > 0 {
			recs, err := w.store.ReadStream(ctx, stream, 0, int(revision))
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range recs {
				run, _ := streams.DecodeReceivedRecord(r)
				for _, rec := range run {
					fold.Apply(r.Revision, rec.Domain())
				}
			}
		}
	}
	if db == "" {
		var err error
		if db, err = streams.DatabaseID(ctx, w.store, rand.Reader); err != nil {
			t.Fatal(err)
		}
	}
	data, err := streams.NewCodec(rand.Reader).EncodeSnapshot(streams.NewInboxSnapshot(db, stream, revision, *fold))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.store.Append(ctx, streams.InboxSnapshot(id), eventstore.Any(), data); err != nil {
		t.Fatal(err)
	}
}

// Given an inbox snapshot behind sequence-numbered records, then more
// records without a sequence number than the receiver reads back at start,
// when the receiver starts again,
// then it reads every record after the snapshot (the last sequence number
// lies there), so a repeated push is dropped; when the newest records
// carry a sequence number, it reads only those.
func TestTheReceiverReadsPastItsWindowOnlyWhenItMust(t *testing.T) {
	t.Parallel()
	t.Run("newest without sequence numbers", func(t *testing.T) {
		t.Parallel()
		w, _ := faultWorld(t, testConfig())
		pushSeqs(t, w, seqRange(0, 5)...)
		pushSeqs(t, w, seqRange(5, 8)...)
		pushSeqs(t, w, seqless(70)...)
		snapshotInbox(t, w, 5, "", nil)
		w.restart()
		pushSeqs(t, w, seqOf(7)) // a repeat: dropped
		if n := len(inboxOf(t, w, sender)); n != 78 {
			t.Fatalf("inbox holds %d records, want 78: a repeated push was taken again", n)
		}
		if strings.Contains(w.logs.String(), "inbox snapshot ignored") {
			t.Fatalf("the snapshot was ignored:\n%s", w.logs.String())
		}
	})
	t.Run("newest with sequence numbers", func(t *testing.T) {
		t.Parallel()
		w, f := faultWorld(t, testConfig())
		pushSeqs(t, w, seqRange(0, 5)...)
		pushSeqs(t, w, seqless(70)...)
		pushSeqs(t, w, seqRange(5, 8)...)
		snapshotInbox(t, w, 5, "", nil)
		w.restart()
		if n := f.callCount("read", streams.InboxPrefix); n != 0 {
			t.Fatalf("the start read the inbox forward %d times: the newest records were enough", n)
		}
		pushSeqs(t, w, seqOf(7)) // a repeat: dropped
		if n := len(inboxOf(t, w, sender)); n != 78 {
			t.Fatalf("inbox holds %d records, want 78", n)
		}
	})
}

// Given an inbox snapshot that covers every record of the inbox, the
// receiver trusts it without a warning; one of an inbox with no records,
// or of another database, is ignored with a warning, and the receiver
// folds the records instead.
func TestWhichInboxSnapshotsAreTrusted(t *testing.T) {
	t.Parallel()
	t.Run("covering every record", func(t *testing.T) {
		t.Parallel()
		w, _ := faultWorld(t, testConfig())
		pushSeqs(t, w, seqRange(0, 3)...)
		snapshotInbox(t, w, 3, "", nil)
		w.restart()
		pushSeqs(t, w, seqOf(2), seqOf(3))
		if n := len(inboxOf(t, w, sender)); n != 4 {
			t.Fatalf("inbox holds %d records, want 4", n)
		}
		if strings.Contains(w.logs.String(), "inbox snapshot ignored") {
			t.Fatalf("a snapshot covering the whole inbox was ignored:\n%s", w.logs.String())
		}
	})
	t.Run("of an inbox with no records", func(t *testing.T) {
		t.Parallel()
		w, _ := faultWorld(t, testConfig())
		if _, err := w.engine.registry.Register(t.Context(), sender); err != nil {
			t.Fatal(err)
		}
		// A snapshot claiming events 0..4 applied, of an inbox that holds
		// nothing: it is not trusted, so event 3 is taken.
		snapshotInbox(t, w, 0, "", &domain.Inbox{HasSeq: true, LastSeq: 4})
		w.restart()
		pushSeqs(t, w, seqOf(3))
		if n := len(inboxOf(t, w, sender)); n != 1 {
			t.Fatalf("inbox holds %d records, want 1", n)
		}
		if !strings.Contains(w.logs.String(), "inbox snapshot ignored") {
			t.Fatalf("no warning:\n%s", w.logs.String())
		}
	})
	t.Run("of another database", func(t *testing.T) {
		t.Parallel()
		w, _ := faultWorld(t, testConfig())
		pushSeqs(t, w, seqRange(0, 3)...)
		snapshotInbox(t, w, 3, "another", nil)
		w.restart()
		pushSeqs(t, w, seqOf(2), seqOf(3))
		if n := len(inboxOf(t, w, sender)); n != 4 {
			t.Fatalf("inbox holds %d records, want 4", n)
		}
		if !strings.Contains(w.logs.String(), "inbox snapshot ignored") {
			t.Fatalf("no warning:\n%s", w.logs.String())
		}
	})
	t.Run("unreadable", func(t *testing.T) {
		t.Parallel()
		w, f := faultWorld(t, testConfig())
		pushSeqs(t, w, seqRange(0, 3)...)
		f.fail("readBackward", streams.InboxSnapshotPrefix, -1)
		w.restart()
		pushSeqs(t, w, seqOf(2), seqOf(3))
		if n := len(inboxOf(t, w, sender)); n != 4 {
			t.Fatalf("inbox holds %d records, want 4", n)
		}
		if !strings.Contains(w.logs.String(), "inbox snapshot ignored") {
			t.Fatalf("no warning:\n%s", w.logs.String())
		}
	})
	t.Run("none", func(t *testing.T) {
		t.Parallel()
		w, _ := faultWorld(t, testConfig())
		pushSeqs(t, w, seqRange(0, 3)...)
		w.restart()
		pushSeqs(t, w, seqOf(2), seqOf(3))
		if strings.Contains(w.logs.String(), "inbox snapshot ignored") {
			t.Fatalf("an inbox without a snapshot warned:\n%s", w.logs.String())
		}
	})
}

// Given an inbox that cannot be read forward past its snapshot, or that
// holds a damaged record,
// when the sender pushes,
// then the push fails: the receiver does not decide from part of it.
func TestAPushOnAnInboxThatCannotBeFoldedFails(t *testing.T) {
	t.Parallel()
	t.Run("read fails", func(t *testing.T) {
		t.Parallel()
		w, f := faultWorld(t, testConfig())
		pushSeqs(t, w, seqRange(0, 5)...)
		pushSeqs(t, w, seqless(70)...)
		snapshotInbox(t, w, 5, "", nil)
		f.fail("read", streams.InboxPrefix, -1)
		w.restart()
		caller := domain.Caller{ServerID: sender, Extended: true}
		if err := w.engine.AcceptPush(t.Context(), caller, events(5), seqOf(5)); !errorsIs(err, errInjected) {
			t.Fatalf("push on an inbox that cannot be read: %v", err)
		}
		f.clear()
		pushSeqs(t, w, seqOf(4), seqOf(5))
		if n := len(inboxOf(t, w, sender)); n != 76 {
			t.Fatalf("inbox holds %d records, want 76", n)
		}
	})
	t.Run("damaged record", func(t *testing.T) {
		t.Parallel()
		w, _ := faultWorld(t, testConfig())
		pushSeqs(t, w, seqRange(0, 2)...)
		damaged := eventstore.EventData{Type: "NotAReceivedEvent", Data: []byte("{")}
		if _, err := w.store.Append(t.Context(), streams.Inbox(mustLookup(t, w, sender)), eventstore.Exact(1), damaged); err != nil {
			t.Fatal(err)
		}
		w.restart()
		caller := domain.Caller{ServerID: sender, Extended: true}
		// Refused for the damaged record, not for a conflict (which a fold
		// that skipped the record would meet, counting one record less).
		err := w.engine.AcceptPush(t.Context(), caller, events(2), seqOf(2))
		if err == nil || errors.Is(err, eventstore.ErrWrongExpectedRevision) {
			t.Fatalf("a push on an inbox holding a damaged record: %v", err)
		}
	})
}

func errorsIs(err, target error) bool { return errors.Is(err, target) }

// Given a sender's sequence-numbered events followed by more events
// without one than the receiver reads back at start, and no snapshot,
// when the receiver starts again,
// then it still knows the last sequence number applied: a repeated push
// is dropped.
func TestTheReceiverKnowsItsLastSequenceNumberPastItsWindowWithoutASnapshot(t *testing.T) {
	t.Parallel()
	w, _ := faultWorld(t, testConfig())
	pushSeqs(t, w, seqRange(0, 3)...)
	pushSeqs(t, w, seqless(70)...)
	w.restart()
	pushSeqs(t, w, seqOf(2)) // a repeat: dropped
	if n := len(inboxOf(t, w, sender)); n != 73 {
		t.Fatalf("inbox holds %d records, want 73: a repeated push was taken again", n)
	}
}
