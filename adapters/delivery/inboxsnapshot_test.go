package delivery

import (
	"context"
	"crypto/rand"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// Given a sender's events 0..4 with sequence numbers, then 70 without (more
// than the receiver reads back at start), and the inbox truncated behind a
// snapshot of its fold, a restarted receiver still drops a repeated push
// of event 4 and takes event 5: the snapshot says what was applied. One of
// another database is not trusted.
func TestTheReceiverStartsFromItsInboxSnapshot(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name    string
		db      func(string) string
		repeats bool // the repeated push is applied again
	}{
		{"trusted", func(db string) string { return db }, false},
		{"of another database", func(string) string { return "another" }, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, testConfig())
			ctx := context.Background()
			sender := domain.Caller{ServerID: domain.MustParseServerID("s.example:2289"), Extended: true}
			seq := func(v uint64) *uint64 { return &v }
			for s := range uint64(5) {
				if err := w.engine.AcceptPush(ctx, sender, []*syncv1.Event{added(s)}, seq(s)); err != nil {
					t.Fatal(err)
				}
			}
			for i := range uint64(70) {
				if err := w.engine.AcceptPush(ctx, sender, []*syncv1.Event{added(100 + i)}, nil); err != nil {
					t.Fatal(err)
				}
			}
			id, _ := w.engine.registry.Lookup(sender.ServerID)
			stream := streams.Inbox(id)
			var fold domain.Inbox
			recs, err := w.store.ReadStream(ctx, stream, 0, 5)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range recs {
				rec, _ := streams.DecodeReceived(r)
				fold.Apply(r.Revision, rec.Domain())
			}
			db, err := streams.DatabaseID(ctx, w.store, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			data, err := streams.NewCodec(rand.Reader).EncodeSnapshot(streams.NewInboxSnapshot(c.db(db), stream, 5, fold))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.store.Append(ctx, streams.InboxSnapshot(id), eventstore.Any(), data); err != nil {
				t.Fatal(err)
			}
			if err := w.store.Truncate(ctx, stream, 5); err != nil {
				t.Fatal(err)
			}
			w.restart()
			for _, s := range []uint64{4, 5} {
				if err := w.engine.AcceptPush(ctx, sender, []*syncv1.Event{added(s)}, seq(s)); err != nil {
					t.Fatal(err)
				}
			}
			last, err := w.store.ReadStreamBackward(ctx, stream, 1)
			if err != nil {
				t.Fatal(err)
			}
			want := uint64(75) // 75 before, and event 5
			if c.repeats {
				want++ // event 4 again, unknowing
			}
			if got := last[0].Revision; got != want {
				t.Fatalf("the inbox ends at revision %d, want %d", got, want)
			}
		})
	}
}
