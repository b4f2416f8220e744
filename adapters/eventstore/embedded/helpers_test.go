package embedded_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
)

// testLogger sends the store's logs to the test's output.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func recvItem(t *testing.T, sub eventstore.Subscription) eventstore.Item {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	item, err := sub.Recv(ctx)
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	return item
}

func recvEvent(t *testing.T, sub eventstore.Subscription) *eventstore.RecordedEvent {
	t.Helper()
	item := recvItem(t, sub)
	if item.Event == nil {
		t.Fatal("recv: got CaughtUp, want an event")
	}
	return item.Event
}

func newID() eventstore.EventID {
	var id eventstore.EventID
	_, _ = rand.Read(id[:])
	return id
}

// appendN appends n events to stream, one append each, the first at
// revision from; it returns the events. It must run on the test's goroutine.
func appendN(t *testing.T, s eventstore.Store, stream string, from uint64, n int) []eventstore.EventData {
	t.Helper()
	events, err := tryAppendN(t.Context(), s, stream, from, n)
	if err != nil {
		t.Fatal(err)
	}
	return events
}

// tryAppendN is appendN for other goroutines, which must not call t.Fatal.
func tryAppendN(ctx context.Context, s eventstore.Store, stream string, from uint64, n int) ([]eventstore.EventData, error) {
	var out []eventstore.EventData
	for i := range uint64(n) {
		rev := from + i
		expected := eventstore.NoStream()
		if rev > 0 {
			expected = eventstore.Exact(rev - 1)
		}
		e := eventstore.EventData{ID: newID(), Type: "T", Data: fmt.Appendf(nil, `{"rev":%d}`, rev)}
		if _, err := s.Append(ctx, stream, expected, e); err != nil {
			return out, fmt.Errorf("append %s@%d: %w", stream, rev, err)
		}
		out = append(out, e)
	}
	return out, nil
}
