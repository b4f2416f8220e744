package delivery

import (
	"context"
	"errors"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// Given a peer that cannot be registered, a Send to it fails with the
// store's error.
func TestASendToAPeerThatCannotBeRegisteredFails(t *testing.T) {
	t.Parallel()
	f := &faultyStore{}
	w := newRegistryWorld(t, testConfig(), f)
	f.failPeers.Store(true)
	if seq, err := w.engine.Send(t.Context(), peerB, added(1)); !errors.Is(err, errAppendFailed) {
		t.Fatalf("send to a peer that cannot be registered: seq %d, %v", seq, err)
	}
}

// Given an event that cannot be encoded (a string that is not UTF-8), a
// Send of it fails before anything is stored.
func TestASendOfAnEventThatCannotBeEncodedFails(t *testing.T) {
	t.Parallel()
	w := newWorld(t, testConfig())
	w.send(1)
	bad := &syncv1.Event{Kind: &syncv1.Event_UserInvited_{UserInvited: &syncv1.Event_UserInvited{InviteId: "\xff\xfe"}}}
	if seq, err := w.engine.Send(t.Context(), peerB, bad); err == nil {
		t.Fatalf("a send of an event that cannot be encoded: seq %d", seq)
	}
	if users, _ := w.outboxUsers(); len(users) != 1 {
		t.Fatalf("outbox holds %v", users)
	}
}

// multiFaults is faults for a store that appends to several streams in one
// commit: failMulti makes the next such commit fail whole, storing nothing.
type multiFaults struct {
	*faults
	failMulti bool
}

func (m *multiFaults) AppendStreams(ctx context.Context, parts []eventstore.StreamAppend) ([]eventstore.AppendResult, []error) {
	m.mu.Lock()
	fail := m.failMulti
	m.failMulti = false
	m.mu.Unlock()
	if fail {
		errs := make([]error, len(parts))
		for i := range errs {
			errs[i] = errInjected
		}
		return make([]eventstore.AppendResult, len(parts)), errs
	}
	return m.Store.(multiAppender).AppendStreams(ctx, parts)
}

// Given a SendBatch whose one commit fails (storing nothing) for a peer
// with an empty outbox, the send is appended alone and stored: the failed
// commit's zero result is not taken for revision 0.
func TestASendBatchWhoseCommitFailsIsStoredAlone(t *testing.T) {
	t.Parallel()
	m := &multiFaults{faults: &faults{}}
	w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: testConfig(), logs: &logBuffer{},
		wrap: func(s Store) Store { m.Store = s; return m }}
	w.open()
	w.peers.setDown(true)
	m.mu.Lock()
	m.failMulti = true
	m.mu.Unlock()
	out := w.engine.SendBatch(t.Context(), []domain.BatchSend[*syncv1.Event]{{To: peerB, Event: added(7)}})
	if out[0].Err != nil || out[0].Seq != 0 {
		t.Fatalf("outcome %+v", out[0])
	}
	if users, _ := w.outboxUsers(); !slices.Equal(users, []uint64{7}) {
		t.Fatalf("outbox holds %v, want [7]", users)
	}
}

// An event exactly at the per-event limit is taken; one byte over, it is
// refused as too large.
func TestAnEventExactlyAtTheLimitIsTaken(t *testing.T) {
	t.Parallel()
	ev := added(7)
	w := newWorld(t, testConfig())
	data, err := w.engine.codec.EncodeEnqueued(ev)
	if err != nil {
		t.Fatal(err)
	}
	size := max(proto.Size(ev), len(data.Data))
	for _, c := range []struct {
		limit int
		taken bool
	}{{size, true}, {size - 1, false}} {
		cfg := testConfig()
		cfg.MaxEventBytes = c.limit
		w := newWorld(t, cfg)
		_, err := w.engine.Send(t.Context(), peerB, ev)
		var tooLarge *domain.EventTooLargeError
		if c.taken != (err == nil) || (!c.taken && !errors.As(err, &tooLarge)) {
			t.Fatalf("an event of %d bytes at a limit of %d: %v", size, c.limit, err)
		}
	}
}
