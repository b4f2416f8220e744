package delivery

import (
	"context"
	"slices"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// Given a sender whose Pull reply holds 600 events,
// when the receiver pulls it,
// then the inbox stores them as runs (one record per 256 events), in
// order; a push after them is appended after the runs, and after a
// restart the receiver still drops a push it holds and takes the next.
func TestAPulledReplyIsStoredAsRunsOfEvents(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	ctx := context.Background()
	sender := domain.Caller{ServerID: domain.MustParseServerID("s.example:2289"), Extended: true}
	const n = 600
	reply := make([]*syncv1.Event, n)
	for i := range reply {
		reply[i] = added(uint64(i))
	}
	w.peers.set(func(f *fakePeers) {
		f.pullFn = func(ack *uint64) (peerclient.PullResult, error) {
			if ack != nil {
				return peerclient.PullResult{}, nil
			}
			return peerclient.PullResult{Events: reply, FirstSeq: 0, HasSeq: true}, nil
		}
	})
	if _, err := w.engine.registry.Register(ctx, sender.ServerID); err != nil {
		t.Fatal(err)
	}
	if err := w.engine.PullFrom(ctx, sender.ServerID); err != nil {
		t.Fatal(err)
	}
	if err := w.engine.AcceptPush(ctx, sender, []*syncv1.Event{added(n)}, seqOf(n)); err != nil {
		t.Fatal(err)
	}
	w.restart()
	for _, s := range []uint64{n, n + 1} { // held already; new
		if err := w.engine.AcceptPush(ctx, sender, []*syncv1.Event{added(s)}, seqOf(s)); err != nil {
			t.Fatal(err)
		}
	}

	stream := streams.Inbox(mustLookup(t, w, sender.ServerID))
	records, err := w.store.ReadStream(ctx, stream, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var runs []int
	for _, r := range records {
		run, err := streams.DecodeReceivedRecord(r)
		if err != nil {
			t.Fatal(err)
		}
		runs = append(runs, len(run))
	}
	if want := []int{streams.RunMaxEvents, streams.RunMaxEvents, n - 2*streams.RunMaxEvents, 1, 1}; !slices.Equal(runs, want) {
		t.Fatalf("records of %v events, want %v", runs, want)
	}
	for i, rec := range receivedIn(t, w.store, stream) {
		if *rec.SenderSeq != uint64(i) || rec.Event.GetUserAddedToGuild().GetUserId() != uint64(i) {
			t.Fatalf("event %d: %+v", i, rec)
		}
	}
}
