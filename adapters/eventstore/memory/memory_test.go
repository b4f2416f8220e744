package memory_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/memory"
	"github.com/harmony-postbox/postbox/adapters/eventstore/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, storetest.Harness{
		Open: func(t *testing.T) eventstore.Store { return memory.New(memory.Options{}) },
		Reopen: func(t *testing.T, closed eventstore.Store) eventstore.Store {
			return closed.(*memory.Store).Storage().Open(memory.Options{})
		},
	})
}

// The crash wrapper, armed with no crash, is a store like any other.
func TestConformanceThroughCrashingWrapper(t *testing.T) {
	storetest.Run(t, storetest.Harness{
		Open: func(t *testing.T) eventstore.Store { return memory.NewCrashing(memory.New(memory.Options{})) },
		Reopen: func(t *testing.T, closed eventstore.Store) eventstore.Store {
			storage := closed.(*memory.Crashing).Unwrap().(*memory.Store).Storage()
			return memory.NewCrashing(storage.Open(memory.Options{}))
		},
	})
}

func event(n int) eventstore.EventData {
	var id eventstore.EventID
	id[0], id[15] = byte(n), 0xee
	return eventstore.EventData{ID: id, Type: "T", Data: fmt.Appendf(nil, `{"n":%d}`, n)}
}

func streamLen(t *testing.T, s eventstore.Store, stream string) int {
	t.Helper()
	got, err := s.ReadStream(t.Context(), stream, 0, 100)
	if errors.Is(err, eventstore.ErrStreamNotFound) {
		return 0
	}
	if err != nil {
		t.Fatalf("read %s: %v", stream, err)
	}
	return len(got)
}

func TestCrashBeforeWriteLosesTheCallAndFailsEveryLaterOne(t *testing.T) {
	// Given a store armed to crash at its third call, before writing.
	storage := memory.NewStorage()
	c := memory.NewCrashing(storage.Open(memory.Options{}))
	c.CrashAt(3, false)
	ctx := t.Context()
	if _, err := c.Append(ctx, "s", eventstore.NoStream(), event(0)); err != nil {
		t.Fatalf("call 1: %v", err)
	}
	if _, err := c.ReadStream(ctx, "s", 0, 10); err != nil {
		t.Fatalf("call 2: %v", err)
	}
	// When the third call appends.
	_, err := c.Append(ctx, "s", eventstore.Exact(0), event(1))
	// Then it fails, writes nothing, and every call after it fails too.
	if !errors.Is(err, memory.ErrCrashed) {
		t.Fatalf("call 3: got %v, want ErrCrashed", err)
	}
	if !c.Crashed() {
		t.Fatal("not crashed after the crash point")
	}
	_, err = c.ReadStreamBackward(ctx, "s", 1)
	if !errors.Is(err, memory.ErrCrashed) {
		t.Errorf("read after the crash: %v, want ErrCrashed", err)
	}
	if err := c.Delete(ctx, "s", eventstore.Any()); !errors.Is(err, memory.ErrCrashed) {
		t.Errorf("delete after the crash: %v, want ErrCrashed", err)
	}
	if _, err := c.Subscribe(ctx, eventstore.Filter{}, eventstore.FromStart()); !errors.Is(err, memory.ErrCrashed) {
		t.Errorf("subscribe after the crash: %v, want ErrCrashed", err)
	}
	// And a restart sees what was durable: the first event only.
	restarted := memory.NewCrashing(storage.Open(memory.Options{}))
	if n := streamLen(t, restarted, "s"); n != 1 {
		t.Errorf("after the restart the stream holds %d events, want 1", n)
	}
}

func TestCrashAfterWriteKeepsTheEventsButLosesTheReply(t *testing.T) {
	storage := memory.NewStorage()
	c := memory.NewCrashing(storage.Open(memory.Options{}))
	c.CrashAt(1, true)
	e := event(7)
	if _, err := c.Append(t.Context(), "s", eventstore.NoStream(), e); !errors.Is(err, memory.ErrCrashed) {
		t.Fatalf("append at the crash point: got %v, want ErrCrashed", err)
	}
	// The restarted server retries with the same event ID: the store
	// recognises it, so nothing is written twice.
	restarted := memory.NewCrashing(storage.Open(memory.Options{}))
	res, err := restarted.Append(t.Context(), "s", eventstore.NoStream(), e)
	if err != nil || res.NextExpectedRevision != 0 {
		t.Fatalf("retry after the restart: %+v, %v; want revision 0", res, err)
	}
	if n := streamLen(t, restarted, "s"); n != 1 {
		t.Errorf("stream holds %d events, want 1", n)
	}
}

func TestCrashEndsAWaitingSubscription(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := memory.NewCrashing(memory.New(memory.Options{}))
		sub, err := c.Subscribe(t.Context(), eventstore.Filter{}, eventstore.FromStart())
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		if item, err := sub.Recv(t.Context()); err != nil || !item.CaughtUp {
			t.Fatalf("first item: %+v, %v; want CaughtUp", item, err)
		}
		errc := make(chan error, 1)
		go func() {
			_, err := sub.Recv(t.Context())
			errc <- err
		}()
		synctest.Wait() // the receiver waits, durably blocked in the bubble
		select {
		case err := <-errc:
			t.Fatalf("Recv returned before the crash: %v", err)
		default:
		}
		c.Crash()
		if err := <-errc; !errors.Is(err, memory.ErrCrashed) {
			t.Errorf("waiting Recv after the crash: %v, want ErrCrashed", err)
		}
	})
}

func TestCopyIsAnEarlierBackupToRestore(t *testing.T) {
	ctx := t.Context()
	s := memory.New(memory.Options{})
	if _, err := s.Append(ctx, "s", eventstore.NoStream(), event(0), event(1)); err != nil {
		t.Fatal(err)
	}
	backup := s.Storage().Copy()
	if _, err := s.Append(ctx, "s", eventstore.Exact(1), event(2)); err != nil {
		t.Fatal(err)
	}
	restored := backup.Open(memory.Options{})
	if n := streamLen(t, restored, "s"); n != 2 {
		t.Fatalf("restored stream holds %d events, want the 2 of the backup", n)
	}
	// The restored server goes its own way: the same revision now holds
	// another event, and the original storage is untouched by it.
	if _, err := restored.Append(ctx, "s", eventstore.Exact(1), event(9)); err != nil {
		t.Fatal(err)
	}
	got, err := s.ReadStream(ctx, "s", 2, 1)
	if err != nil || len(got) != 1 || got[0].ID != event(2).ID {
		t.Errorf("original at revision 2: %v, %v; want event 2", got, err)
	}
	if backup.Len() != 3 || s.Storage().Len() != 3 {
		t.Errorf("lengths: backup %d, original %d; want 3 and 3", backup.Len(), s.Storage().Len())
	}
}

// Inside a synctest bubble, a subscription waits on channels only: time can
// advance around it, and an append wakes it.
func TestSubscriptionInsideASynctestBubble(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		s := memory.New(memory.Options{})
		sub, err := s.Subscribe(t.Context(), eventstore.Filter{StreamPrefix: "in-"}, eventstore.FromStart())
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		if item, _ := sub.Recv(t.Context()); !item.CaughtUp {
			t.Fatal("want CaughtUp first")
		}
		got := make(chan eventstore.Item, 1)
		go func() {
			item, err := sub.Recv(t.Context())
			if err != nil {
				t.Errorf("recv: %v", err)
			}
			got <- item
		}()
		time.Sleep(time.Hour) // virtual: the bubble is idle
		if _, err := s.Append(context.Background(), "out-1", eventstore.NoStream(), event(0)); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Append(context.Background(), "in-1", eventstore.NoStream(), event(1)); err != nil {
			t.Fatal(err)
		}
		item := <-got
		if item.Event == nil || item.Event.Stream != "in-1" || item.Event.Position.Commit != 2 {
			t.Fatalf("got %+v, want in-1 at position 2", item)
		}
		if want := start.Add(time.Hour).UTC(); !item.Event.Created.Equal(want) {
			t.Errorf("Created %v, want the bubble's clock %v", item.Event.Created, want)
		}
	})
}

func TestPausedStoreHoldsEveryCallUntilResumedOrCrashed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Given a paused store with a subscription.
		c := memory.NewCrashing(memory.New(memory.Options{}))
		sub, err := c.Subscribe(t.Context(), eventstore.Filter{}, eventstore.FromStart())
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		if item, err := sub.Recv(t.Context()); err != nil || !item.CaughtUp {
			t.Fatalf("first item: %+v, %v; want CaughtUp", item, err)
		}
		c.Pause()
		if !c.Paused() {
			t.Fatal("not paused")
		}
		// When a call and the subscription wait on it.
		appended, received := make(chan error, 1), make(chan error, 1)
		go func() {
			_, err := c.Append(t.Context(), "s", eventstore.NoStream(), event(1))
			appended <- err
		}()
		go func() {
			_, err := sub.Recv(t.Context())
			received <- err
		}()
		time.Sleep(time.Hour)
		synctest.Wait()
		// Then nothing happens until Resume, however long it takes.
		if len(appended) > 0 || len(received) > 0 {
			t.Fatal("a call of a paused store returned")
		}
		if n := streamLen(t, memory.NewCrashing(c.Unwrap()), "s"); n != 0 {
			t.Fatalf("the paused append wrote %d events", n)
		}
		c.Resume()
		if err := <-appended; err != nil {
			t.Fatalf("append after Resume: %v", err)
		}
		if err := <-received; err != nil {
			t.Fatalf("subscription after Resume: %v", err)
		}
		// And a crash during a pause fails the calls that wait.
		c.Pause()
		go func() {
			_, err := c.ReadStream(t.Context(), "s", 0, 10)
			appended <- err
		}()
		synctest.Wait()
		c.Crash()
		if err := <-appended; !errors.Is(err, memory.ErrCrashed) {
			t.Errorf("a paused call at the crash: %v, want ErrCrashed", err)
		}
	})
}
