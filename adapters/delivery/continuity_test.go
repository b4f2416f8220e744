package delivery

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/harmony-postbox/postbox/domain"
)

// continuityObserver records the continuity findings reported.
type continuityObserver struct {
	noObserver
	mu    sync.Mutex
	kinds []string
}

func (o *continuityObserver) Continuity(_ domain.ServerID, kind string) {
	o.mu.Lock()
	o.kinds = append(o.kinds, kind)
	o.mu.Unlock()
}

func (o *continuityObserver) reported() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.kinds)
}

// accountWorld is a world whose Postbox peer is down with n events queued,
// and which reports continuity findings to the returned observer.
func accountWorld(t *testing.T, n int) (*world, *continuityObserver) {
	t.Helper()
	obs := &continuityObserver{}
	cfg := testConfig()
	cfg.Observer = obs
	w := newWorld(t, cfg)
	w.peers.setDown(true)
	w.send(n)
	eventually(t, "queue mode", func() bool { return w.state().Mode == domain.ModeQueue })
	return w, obs
}

func (w *world) accountedPull(ack *uint64, account domain.PullAccount) PullBatch {
	w.t.Helper()
	batch, err := w.engine.ServeAccountedPull(context.Background(), domain.Caller{ServerID: peerB, Extended: true}, ack, &account)
	if err != nil {
		w.t.Fatalf("accounted pull: %v", err)
	}
	return batch
}

// Given a Postbox peer that holds events of an epoch this outbox never had
// (this server's store went back),
// when it pulls with its account,
// then a new epoch starts, never 0, from the first event not known
// delivered, and the finding is reported.
func TestAPullAccountOfAnUnknownEpochStartsANewOne(t *testing.T) {
	t.Parallel()
	w, obs := accountWorld(t, 4)
	before := w.state().Epoch
	ack := uint64(9)
	batch := w.accountedPull(&ack, domain.PullAccount{Epoch: before + 12345})
	if batch.Epoch == 0 || batch.Epoch == before || batch.FirstSeq != 0 || len(batch.Events) != 4 {
		t.Fatalf("reply: epoch %d (was %d), %d events from %d", batch.Epoch, before, len(batch.Events), batch.FirstSeq)
	}
	if s := w.state(); s.Epoch != batch.Epoch || !s.KnowsEpoch(before) {
		t.Fatalf("outbox after: epoch %d, past %v", s.Epoch, s.PastEpochs)
	}
	if got := obs.reported(); !slices.Equal(got, []string{"epoch_started"}) {
		t.Fatalf("reported %v", got)
	}
}

// Given a Postbox peer that was pushed events and now pulls saying it
// holds none of this epoch (its store went back),
// when it pulls with its account,
// then the loss is reported and the same events go again.
func TestAPeerThatLostWhatItWasGivenGetsItAgain(t *testing.T) {
	t.Parallel()
	obs := &continuityObserver{}
	cfg := testConfig()
	cfg.Observer = obs
	w := newWorld(t, cfg)
	w.send(3)
	w.pushedInOrder(3)
	eventually(t, "the pushes recorded", func() bool { s := w.state(); return s.Delivered == 3 && s.HasGiven })
	epoch := w.state().Epoch
	w.accountedPull(nil, domain.PullAccount{Epoch: epoch})
	if got := obs.reported(); !slices.Equal(got, []string{"receiver_behind"}) {
		t.Fatalf("reported %v", got)
	}
	// The peer is up: the events go again by push, in the same epoch.
	eventually(t, "the events pushed again", func() bool {
		return slices.Equal(w.peers.pushes(), []uint64{0, 1, 2, 0, 1, 2})
	})
	if s := w.state(); s.Epoch != epoch || s.Delivered != 3 {
		t.Fatalf("after: %+v", s)
	}
}

// Given a Postbox peer whose last applied event carries another outbox ID
// than this outbox's event at that number (two histories under one epoch),
// when it pulls with its account,
// then a new epoch starts and the events not known delivered come again;
// with the right ID, the acknowledgement is an ordinary one.
func TestAPullAccountNamingAnotherEventStartsANewEpoch(t *testing.T) {
	t.Parallel()
	w, obs := accountWorld(t, 3)
	epoch := w.state().Epoch
	w.accountedPull(nil, domain.PullAccount{Epoch: epoch})
	ack := uint64(0)
	batch := w.accountedPull(&ack, domain.PullAccount{Epoch: epoch, AckID: []byte("not this outbox's ID....")})
	if batch.Epoch == epoch || batch.Epoch == 0 || batch.FirstSeq != 0 || len(batch.Events) != 3 {
		t.Fatalf("reply to a foreign ID: epoch %d (was %d), %d events from %d", batch.Epoch, epoch, len(batch.Events), batch.FirstSeq)
	}
	if got := obs.reported(); !slices.Equal(got, []string{"epoch_started"}) {
		t.Fatalf("reported %v", got)
	}
	// In the new epoch, an account with this outbox's own ID is in step.
	last := uint64(len(batch.Events) - 1)
	inStep := w.accountedPull(&last, domain.PullAccount{Epoch: batch.Epoch, AckID: batch.LastID})
	if len(inStep.Events) != 0 || w.state().Delivered != 3 || len(obs.reported()) != 1 {
		t.Fatalf("in step: %d events, delivered %d, reported %v", len(inStep.Events), w.state().Delivered, obs.reported())
	}
}

// Given a Postbox peer acknowledging an event this outbox never had,
// when it pulls,
// then a new epoch starts.
func TestAnAcknowledgementPastTheOutboxStartsANewEpoch(t *testing.T) {
	t.Parallel()
	w, obs := accountWorld(t, 2)
	epoch := w.state().Epoch
	ack := uint64(7)
	batch := w.accountedPull(&ack, domain.PullAccount{Epoch: epoch})
	if batch.Epoch == epoch || len(batch.Events) != 2 {
		t.Fatalf("reply: epoch %d (was %d), %d events", batch.Epoch, epoch, len(batch.Events))
	}
	if got := obs.reported(); !slices.Equal(got, []string{"epoch_started"}) {
		t.Fatalf("reported %v", got)
	}
}
