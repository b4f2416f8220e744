package replicas

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// fixedView is a view set by the test.
type fixedView struct {
	mu sync.Mutex
	v  View
}

func (f *fixedView) View() View {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.v
}

func (f *fixedView) set(live ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.v.Live = live
}

// peerOwnedBy returns a peer that live gives to owner.
func peerOwnedBy(t *testing.T, owner string, live ...string) streams.PeerID {
	t.Helper()
	for i := range 1000 {
		p := fmt.Sprintf("peer-%d", i)
		if o, _ := domain.PeerOwner(p, live); o == owner {
			return streams.PeerID(p)
		}
	}
	t.Fatal("no such peer")
	return ""
}

func TestATermIsRecordedOnlyWhenThePeerChangesHandsAndFencesTheFormerOwner(t *testing.T) {
	t.Parallel()
	eachStore(t, func(t *testing.T, store eventstore.Store) {
		ctx := t.Context()
		codec := streams.NewCodec(rand.Reader)
		viewA, viewB := &fixedView{v: View{Self: "a"}}, &fixedView{v: View{Self: "b"}}
		termsA, termsB := NewTerms(store, codec, viewA), NewTerms(store, codec, viewB)
		// A peer a owns alone, and b owns once it joins.
		peer := peerOwnedBy(t, "b", "a", "b")
		viewA.set("a")
		viewB.set("a")

		// Given a alone, when it acquires the peer, then term 1 is
		// recorded, and acquiring it again writes nothing.
		stA, err := termsA.Acquire(ctx, peer, TermState{})
		if err != nil || stA.Owner != (domain.OwnerTerm{Term: 1, Replica: "a"}) {
			t.Fatalf("a's first Acquire: %+v, %v", stA.Owner, err)
		}
		// The engine records delivery under it, at the expected revision.
		delivery, _ := codec.EncodeDelivery(domain.EventPushed{Seq: 0, Attempts: 1})
		res, err := store.Append(ctx, streams.Delivery(peer), stA.Expected(), delivery...)
		if err != nil {
			t.Fatalf("a's delivery record under term 1: %v", err)
		}
		again, err := termsA.Acquire(ctx, peer, stA)
		if err != nil || again.Owner != stA.Owner || again.Expected() != eventstore.Exact(res.NextExpectedRevision) {
			t.Fatalf("a's second Acquire: %+v at %s, %v", again.Owner, again.Expected(), err)
		}
		if recs, _ := store.ReadStream(ctx, streams.Delivery(peer), 0, 10); len(recs) != 2 {
			t.Fatalf("the delivery stream holds %d records, want the term and the push", len(recs))
		}

		// b is not the owner while a is alone.
		if _, err := termsB.Acquire(ctx, peer, TermState{}); !errors.Is(err, ErrNotOwner) {
			t.Fatalf("b's Acquire while a owns the peer: %v", err)
		}

		// When b joins, then b takes the peer under term 2...
		viewB.set("a", "b")
		stB, err := termsB.Acquire(ctx, peer, TermState{})
		if err != nil || stB.Owner != (domain.OwnerTerm{Term: 2, Replica: "b"}) {
			t.Fatalf("b's Acquire: %+v, %v", stB.Owner, err)
		}
		// ...and a, still believing it owns the peer, is refused its next
		// record at the revision it knew.
		delivery, _ = codec.EncodeDelivery(domain.EventPushed{Seq: 1, Attempts: 1})
		if _, err := store.Append(ctx, streams.Delivery(peer), again.Expected(), delivery...); !errors.Is(err, eventstore.ErrWrongExpectedRevision) {
			t.Fatalf("the former owner's record after the handover: %v", err)
		}
		// Reading on, a sees who holds the peer now.
		seen, err := termsA.Read(ctx, peer, again)
		if err != nil || seen.Owner != stB.Owner || seen.Expected() != stB.Expected() {
			t.Fatalf("a reads %+v at %s, %v", seen.Owner, seen.Expected(), err)
		}
		recs, _ := store.ReadStream(ctx, streams.Delivery(peer), 0, 10)
		if len(recs) != 3 || recs[2].Type != streams.TypeOwnerTermStarted {
			t.Fatalf("the delivery stream holds %d records", len(recs))
		}

		// When b dies and a takes the peer back, the term is 3.
		viewA.set("a")
		back, err := termsA.Acquire(ctx, peer, seen)
		if err != nil || back.Owner != (domain.OwnerTerm{Term: 3, Replica: "a"}) {
			t.Fatalf("a takes the peer back: %+v, %v", back.Owner, err)
		}
	})
}

// Two replicas that both believe they own a peer (their views disagree for
// a moment) claim it from the same state: one term, one owner.
func TestTwoClaimsOfOneTermHaveOneWinner(t *testing.T) {
	t.Parallel()
	eachStore(t, func(t *testing.T, store eventstore.Store) {
		ctx := t.Context()
		codec := streams.NewCodec(rand.Reader)
		peer := streams.PeerID("peer-x")
		terms := NewTerms(store, codec, nil)
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for i := range errs {
			wg.Go(func() {
				_, errs[i] = terms.Claim(ctx, peer, TermState{}, fmt.Sprintf("r%d", i))
			})
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			switch {
			case err == nil:
				won++
			case !errors.Is(err, eventstore.ErrWrongExpectedRevision):
				t.Fatalf("a claim failed otherwise: %v", err)
			}
		}
		st, err := terms.Read(ctx, peer, TermState{})
		if won != 1 || err != nil || st.Owner.Term != 1 {
			t.Fatalf("%d claims won; the stream says %+v, %v", won, st.Owner, err)
		}
	})
}

// Acquire reads past the engine's records that landed since its state,
// across pages, and claims at the head.
func TestAcquireReadsOnPastOtherRecords(t *testing.T) {
	t.Parallel()
	eachStore(t, func(t *testing.T, store eventstore.Store) {
		ctx := t.Context()
		codec := streams.NewCodec(rand.Reader)
		peer := streams.PeerID("peer-y")
		var recs []eventstore.EventData
		for i := range readPage + 10 {
			d, _ := codec.EncodeDelivery(domain.EventPushed{Seq: uint64(i), Attempts: 1})
			recs = append(recs, d...)
		}
		if _, err := store.Append(ctx, streams.Delivery(peer), eventstore.NoStream(), recs...); err != nil {
			t.Fatal(err)
		}
		terms := NewTerms(store, codec, &fixedView{v: View{Self: "a", Live: []string{"a"}}})
		st, err := terms.Acquire(ctx, peer, TermState{})
		if err != nil || st.Owner.Term != 1 || st.Expected() != eventstore.Exact(uint64(readPage+10)) {
			t.Fatalf("Acquire: %+v at %s, %v", st.Owner, st.Expected(), err)
		}
		// From the engine's own fold of the stream, Acquire writes nothing
		// more.
		again, err := terms.Acquire(ctx, peer, TermStateAt(st.Owner, uint64(readPage+10)))
		if err != nil || again != st {
			t.Fatalf("Acquire from the engine's state: %+v, %v; want %+v", again, err, st)
		}
		if (TermState{}).Expected() != eventstore.NoStream() {
			t.Fatal("the zero state does not expect an empty stream")
		}
	})
}

// racingStore lands another record in a delivery stream just before each
// of the first n appends to it, as an inbound Pull served by another
// replica would.
type racingStore struct {
	Store
	codec *streams.Codec
	n     int
}

func (s *racingStore) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	if s.n > 0 {
		s.n--
		d, _ := s.codec.EncodeDelivery(domain.PullAcknowledged{UpToSeq: uint64(s.n)})
		if _, err := s.Store.Append(ctx, stream, eventstore.Any(), d...); err != nil {
			return eventstore.AppendResult{}, err
		}
	}
	return s.Store.Append(ctx, stream, expected, events...)
}

func TestAcquireRetriesWhenRecordsLandBetweenItsReadAndItsClaim(t *testing.T) {
	t.Parallel()
	eachStore(t, func(t *testing.T, store eventstore.Store) {
		ctx := t.Context()
		codec := streams.NewCodec(rand.Reader)
		view := &fixedView{v: View{Self: "a", Live: []string{"a"}}}
		racing := &racingStore{Store: store, codec: codec, n: 3}
		st, err := NewTerms(racing, codec, view).Acquire(ctx, "peer-z", TermState{})
		if err != nil || st.Owner.Term != 1 || st.Expected() != eventstore.Exact(3) {
			t.Fatalf("Acquire: %+v at %s, %v", st.Owner, st.Expected(), err)
		}
		// Records that never stop landing: Acquire gives up with the
		// conflict.
		racing.n = 100
		view.set("b")
		view.mu.Lock()
		view.v.Self = "b"
		view.mu.Unlock()
		if _, err := NewTerms(racing, codec, view).Acquire(ctx, "peer-z", st); !errors.Is(err, eventstore.ErrWrongExpectedRevision) {
			t.Fatalf("Acquire under endless conflicts: %v", err)
		}
	})
}
