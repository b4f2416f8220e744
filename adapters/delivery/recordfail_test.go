package delivery

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/domain"
)

// logBuffer is a log a test reads while the engine writes it.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

var errAppendFailed = errors.New("append failed")

// failingAppends fails the next appends to streams with a prefix, as many
// as fail says.
type failingAppends struct {
	Store
	prefix string
	fail   atomic.Int32
}

func (f *failingAppends) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	if strings.HasPrefix(stream, f.prefix) && f.fail.Add(-1) >= 0 {
		return eventstore.AppendResult{}, errAppendFailed
	}
	return f.Store.Append(ctx, stream, expected, events...)
}

// Given a peer in queue mode whose delivery records fail to be written,
// when it pulls,
// then its Pull fails, the failure is logged, and the engine rereads the
// peer's state from the stream: a Pull after it is served and recorded as
// if the failed one never happened.
func TestAFailedRecordIsNotTakenAsWritten(t *testing.T) {
	t.Parallel()
	appends := &failingAppends{prefix: "delivery-"}
	w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: testConfig(), logs: &logBuffer{},
		wrap: func(s Store) Store { appends.Store = s; return appends }}
	w.open()
	w.peers.setDown(true)
	w.send(2)
	eventually(t, "queue mode", func() bool { return w.state().Mode == domain.ModeQueue })
	caller := domain.Caller{ServerID: peerB, Extended: true}
	appends.fail.Store(1)
	if _, err := w.engine.ServePull(context.Background(), caller, nil); !errors.Is(err, errAppendFailed) {
		t.Fatalf("pull while records fail: %v", err)
	}
	if !strings.Contains(w.logs.String(), "recording delivery failed") {
		t.Fatalf("log:\n%s", w.logs.String())
	}
	batch, err := w.engine.ServePull(context.Background(), caller, nil)
	if err != nil || len(batch.Events) != 2 || batch.FirstSeq != 0 {
		t.Fatalf("pull after: %d events from %d, %v", len(batch.Events), batch.FirstSeq, err)
	}
	want := w.state()
	w.restart()
	if got := w.state(); got.PulledSinceQueue != want.PulledSinceQueue || got.HandedOver != want.HandedOver || !got.PulledSinceQueue {
		t.Fatalf("after a restart %+v, before %+v", got, want)
	}
}

// Given a peer acknowledging its queue in a Pull whose records fail to be
// written,
// when it pulls again with the same acknowledgement,
// then the acknowledgement is recorded then: after a restart the events
// count as delivered.
func TestAnAcknowledgementWhoseRecordFailedIsRecordedWhenRepeated(t *testing.T) {
	t.Parallel()
	appends := &failingAppends{prefix: "delivery-"}
	w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: testConfig(),
		wrap: func(s Store) Store { appends.Store = s; return appends }}
	w.open()
	w.peers.setDown(true)
	w.send(2)
	eventually(t, "queue mode", func() bool { return w.state().Mode == domain.ModeQueue })
	caller := domain.Caller{ServerID: peerB, Extended: true}
	if batch, err := w.engine.ServePull(context.Background(), caller, nil); err != nil || len(batch.Events) != 2 {
		t.Fatalf("pull: %d events, %v", len(batch.Events), err)
	}
	ack := uint64(1)
	appends.fail.Store(1)
	if _, err := w.engine.ServePull(context.Background(), caller, &ack); !errors.Is(err, errAppendFailed) {
		t.Fatalf("acknowledging pull while records fail: %v", err)
	}
	if batch, err := w.engine.ServePull(context.Background(), caller, &ack); err != nil || len(batch.Events) != 0 {
		t.Fatalf("acknowledging pull again: %d events, %v", len(batch.Events), err)
	}
	w.restart()
	if s := w.state(); s.Delivered != 2 {
		t.Fatalf("after a restart: %+v", s)
	}
}
