package replicas

import (
	"context"
	"errors"
	"fmt"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// ErrNotOwner: the view gives the peer to another replica, or to none.
var ErrNotOwner = errors.New("this replica does not own the peer")

// Terms reads and records peers' owner terms. A peer's term is an
// OwnerTermStarted record in its delivery stream, appended by the peer's new
// owner at the stream's expected revision: the replica that ran the peer
// before appends its next delivery record at the revision it knew, and is
// refused from then on (fencing), while nothing is written as long as the
// owner stays.
type Terms struct {
	store Store
	codec *streams.Codec
	views interface{ View() View }
	// claimAttempts bounds Acquire's retries when other records land
	// between its read and its append.
	claimAttempts int
}

// NewTerms returns terms for the replica whose view views gives.
func NewTerms(store Store, codec *streams.Codec, views interface{ View() View }) *Terms {
	return &Terms{store: store, codec: codec, views: views, claimAttempts: 8}
}

// TermState is a peer's owner term as read from its delivery stream, and
// how far the stream was read. The zero value is before the stream's
// start.
type TermState struct {
	Owner domain.OwnerTerm
	// read says whether any record was read; last is the revision of the
	// last one.
	read bool
	last uint64
}

// TermStateAt is the state of a delivery stream the engine has folded
// itself: owner as its last owner record says (the zero OwnerTerm if none),
// and last the revision of its last record.
func TermStateAt(owner domain.OwnerTerm, last uint64) TermState {
	return TermState{Owner: owner, read: true, last: last}
}

// Expected is where the delivery stream's next record must go for the
// stream to be as read.
func (s TermState) Expected() eventstore.ExpectedRevision {
	if !s.read {
		return eventstore.NoStream()
	}
	return eventstore.Exact(s.last)
}

// Read folds the owner records appended to peer's delivery stream after
// st (the zero TermState: from its start); the stream's other records are
// the engine's, and only move the expected revision.
func (t *Terms) Read(ctx context.Context, peer streams.PeerID, st TermState) (TermState, error) {
	stream := streams.Delivery(peer)
	for {
		from := uint64(0)
		if st.read {
			from = st.last + 1
		}
		recs, err := t.store.ReadStream(ctx, stream, from, readPage)
		if errors.Is(err, eventstore.ErrStreamNotFound) {
			return st, nil
		}
		if err != nil {
			return st, fmt.Errorf("read owner term of %s: %w", peer, err)
		}
		for _, rec := range recs {
			if rec.Type == streams.TypeOwnerTermStarted {
				term, err := streams.DecodeOwnerTerm(rec)
				if err != nil {
					return st, err
				}
				st.Owner = st.Owner.Apply(term)
			}
			st.read, st.last = true, rec.Revision
		}
		if len(recs) < readPage {
			return st, nil
		}
	}
}

// Claim records that replica runs peer from now on, at the revision st
// read, and returns the new state; if replica holds the term already it
// writes nothing. An append to the stream since st fails it with
// eventstore.ErrWrongExpectedRevision.
func (t *Terms) Claim(ctx context.Context, peer streams.PeerID, st TermState, replica string) (TermState, error) {
	next, changed := st.Owner.HandOver(replica)
	if !changed {
		return st, nil
	}
	ev, err := t.codec.EncodeOwnerTerm(next, st.Owner.Replica)
	if err != nil {
		return st, err
	}
	res, err := t.store.Append(ctx, streams.Delivery(peer), st.Expected(), ev)
	if err != nil {
		return st, fmt.Errorf("claim %s for term %d: %w", peer, next.Term, err)
	}
	return TermState{Owner: next, read: true, last: res.NextExpectedRevision}, nil
}

// Acquire makes this replica the recorded owner of peer, if its view says
// it owns it, reading on from st (the engine's last state, or the zero
// TermState) and retrying when other records land first. It returns the
// state to push under.
func (t *Terms) Acquire(ctx context.Context, peer streams.PeerID, st TermState) (TermState, error) {
	view := t.views.View()
	if !view.Owns(peer) {
		owner, _ := view.Owner(peer)
		return st, fmt.Errorf("%s is %q's, not %q's: %w", peer, owner, view.Self, ErrNotOwner)
	}
	var err error
	for range t.claimAttempts {
		if st, err = t.Read(ctx, peer, st); err != nil {
			return st, err
		}
		var claimed TermState
		claimed, err = t.Claim(ctx, peer, st, view.Self)
		if err == nil {
			return claimed, nil
		}
		if !errors.Is(err, eventstore.ErrWrongExpectedRevision) {
			return st, err
		}
	}
	return st, err
}
