package embedded_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
)

func TestCreatedComesFromTheInjectedClock(t *testing.T) {
	t.Parallel()
	at := time.Date(2031, 5, 6, 7, 8, 9, 123456789, time.UTC)
	s, err := embedded.Open(t.Context(), t.TempDir(), embedded.Options{Clock: func() time.Time { return at }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sub, err := s.Subscribe(t.Context(), eventstore.Filter{}, eventstore.FromStart())
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	recvItem(t, sub) // CaughtUp
	appendN(t, s, "clock", 0, 1)
	got, err := s.ReadStream(t.Context(), "clock", 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !got[0].Created.Equal(at) {
		t.Errorf("read: Created = %v, want %v", got[0].Created, at)
	}
	if live := recvEvent(t, sub); !live.Created.Equal(at) {
		t.Errorf("live: Created = %v, want %v", live.Created, at)
	}
}

func TestEmptyDataRoundTrips(t *testing.T) {
	t.Parallel()
	s := openStore(t, t.TempDir())
	defer s.Close()
	for i, data := range [][]byte{nil, {}, {0, 1, 2, 0xff}} {
		stream := fmt.Sprintf("data-%d", i)
		if _, err := s.Append(t.Context(), stream, eventstore.NoStream(), eventstore.EventData{ID: newID(), Type: "T", Data: data}); err != nil {
			t.Fatal(err)
		}
		got, err := s.ReadStream(t.Context(), stream, 0, 1)
		if err != nil {
			t.Fatal(err)
		}
		if string(got[0].Data) != string(data) {
			t.Errorf("data %v read back as %v", data, got[0].Data)
		}
	}
}

func TestIdempotentRetryReturnsTheOriginalResult(t *testing.T) {
	t.Parallel()
	s := openStore(t, t.TempDir())
	defer s.Close()
	ctx := t.Context()
	events := []eventstore.EventData{{ID: newID(), Type: "A"}, {ID: newID(), Type: "B"}}
	first, err := s.Append(ctx, "idem", eventstore.NoStream(), events...)
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, s, "other", 0, 3) // move the global position on
	for _, expected := range []eventstore.ExpectedRevision{eventstore.NoStream(), eventstore.Any()} {
		retry, err := s.Append(ctx, "idem", expected, events...)
		if err != nil {
			t.Fatalf("retry expecting %s: %v", expected, err)
		}
		if retry != first {
			t.Errorf("retry expecting %s = %+v, want the original %+v", expected, retry, first)
		}
	}
}

// A retry with Any after the store was closed and opened again is still
// recognised: the recent event IDs are read back at open.
func TestAnAnyRetryAfterAReopenIsRecognised(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := t.Context()
	s := openStore(t, dir)
	first := eventstore.EventData{ID: newID(), Type: "A"}
	want, err := s.Append(ctx, "idem", eventstore.Any(), first)
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, s, "idem", 1, 2) // the retried event is not the stream's last
	s.Close()
	s = openStore(t, dir)
	defer s.Close()
	got, err := s.Append(ctx, "idem", eventstore.Any(), first)
	if err != nil || got != want {
		t.Fatalf("retry after reopening: %+v, %v; want the original %+v", got, err, want)
	}
	if evs, err := s.ReadStream(ctx, "idem", 0, 10); err != nil || len(evs) != 3 {
		t.Fatalf("the stream holds %d events (%v), want 3: the retry appended again", len(evs), err)
	}
}

func TestEmptyAppendIsRefused(t *testing.T) {
	t.Parallel()
	s := openStore(t, t.TempDir())
	defer s.Close()
	if _, err := s.Append(t.Context(), "empty", eventstore.Any()); err == nil {
		t.Error("an append of no events succeeded")
	}
}

// Concurrent appends share commits, and a conflicting append does not fail
// the others committed with it.
func TestGroupCommit(t *testing.T) {
	t.Parallel()
	s := openStore(t, t.TempDir())
	defer s.Close()
	const writers, rounds = 32, 20
	var wg sync.WaitGroup
	errs := make(chan error, writers*rounds)
	for w := range writers {
		wg.Go(func() {
			stream := fmt.Sprintf("gc-%d", w)
			for i := range uint64(rounds) {
				expected := eventstore.NoStream()
				if i > 0 {
					expected = eventstore.Exact(i - 1)
				}
				if _, err := s.Append(t.Context(), stream, expected, eventstore.EventData{ID: newID(), Type: "T"}); err != nil {
					errs <- fmt.Errorf("%s@%d: %w", stream, i, err)
				}
				// Every writer also throws in an append doomed to conflict.
				_, err := s.Append(t.Context(), stream, eventstore.Exact(i+5), eventstore.EventData{ID: newID(), Type: "T"})
				if !errors.Is(err, eventstore.ErrWrongExpectedRevision) {
					errs <- fmt.Errorf("doomed append to %s: got %v", stream, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	st := s.Stats()
	t.Logf("%d appends in %d commits", st.Appends, st.Commits)
	if st.Appends != writers*rounds {
		t.Errorf("Stats.Appends = %d, want %d", st.Appends, writers*rounds)
	}
	if st.Commits >= st.Appends {
		t.Errorf("%d commits for %d concurrent appends: no group commit", st.Commits, st.Appends)
	}
}

// A subscription that does not read holds up neither appends nor memory;
// when it reads again it gets every event, in order, from the database.
func TestSlowSubscriberDoesNotBlockAppends(t *testing.T) {
	t.Parallel()
	s := openStore(t, t.TempDir())
	defer s.Close()
	sub, err := s.Subscribe(t.Context(), eventstore.Filter{StreamPrefix: "slow-"}, eventstore.FromStart())
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if !recvItem(t, sub).CaughtUp {
		t.Fatal("want CaughtUp first")
	}
	const writers, perWriter = 8, 100
	done := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	for w := range writers {
		wg.Go(func() {
			if _, err := tryAppendN(t.Context(), s, fmt.Sprintf("slow-%d", w), 0, perWriter); err != nil {
				t.Error(err)
			}
		})
	}
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("appends stalled behind a subscription that does not read")
	}
	next := map[string]uint64{}
	var last uint64
	for range writers * perWriter {
		e := recvEvent(t, sub)
		if e.Position.Commit <= last || e.Revision != next[e.Stream] {
			t.Fatalf("%s@%d at %d after %d: out of order, a gap or a duplicate", e.Stream, e.Revision, e.Position.Commit, last)
		}
		last = e.Position.Commit
		next[e.Stream]++
	}
}

func TestCloseDrainsQueuedAppends(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openStore(t, dir)
	const n = 64
	var wg sync.WaitGroup
	results := make([]error, n)
	for i := range n {
		wg.Go(func() {
			_, results[i] = s.Append(t.Context(), fmt.Sprintf("drain-%d", i), eventstore.NoStream(), eventstore.EventData{ID: newID(), Type: "T"})
		})
	}
	time.Sleep(time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	s = openStore(t, dir)
	defer s.Close()
	for i, err := range results {
		_, rerr := s.ReadStream(t.Context(), fmt.Sprintf("drain-%d", i), 0, 1)
		switch {
		case err == nil && rerr != nil:
			t.Errorf("append %d was acknowledged but is not stored: %v", i, rerr)
		case err != nil && !errors.Is(err, eventstore.ErrClosed):
			t.Errorf("append %d: got %v, want success or ErrClosed", i, err)
		case err != nil && rerr == nil:
			t.Errorf("append %d failed with %v but is stored", i, err)
		}
	}
}

// A subscription that reads, but slower than the writers append, keeps
// losing live batches and getting later ones: it must notice every gap and
// fill it from the database.
func TestLaggingSubscriberFillsGaps(t *testing.T) {
	t.Parallel()
	s := openStore(t, t.TempDir())
	defer s.Close()
	sub, err := s.Subscribe(t.Context(), eventstore.Filter{StreamPrefix: "lag-"}, eventstore.FromStart())
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	const writers, perWriter = 16, 60
	var wg sync.WaitGroup
	defer wg.Wait()
	for w := range writers {
		wg.Go(func() {
			if _, err := tryAppendN(t.Context(), s, fmt.Sprintf("lag-%d", w), 0, perWriter); err != nil {
				t.Error(err)
			}
		})
	}
	next := map[string]uint64{}
	var last uint64
	for n := 0; n < writers*perWriter; {
		item := recvItem(t, sub)
		if item.CaughtUp {
			continue
		}
		e := item.Event
		if e.Position.Commit <= last || e.Revision != next[e.Stream] {
			t.Fatalf("%s@%d at %d after %d: out of order, a gap or a duplicate", e.Stream, e.Revision, e.Position.Commit, last)
		}
		last = e.Position.Commit
		next[e.Stream]++
		n++
		if n%8 == 0 {
			time.Sleep(2 * time.Millisecond) // lag behind the writers
		}
	}
}

// A large append is written many rows to a statement: its events still get
// consecutive positions in order, the same in a read and in a live
// subscription, also when small appends to other streams share its commit.
func TestLargeAppendsKeepTheirOrderAndPositions(t *testing.T) {
	t.Parallel()
	s := openStore(t, t.TempDir())
	defer s.Close()
	sub, err := s.Subscribe(t.Context(), eventstore.Filter{}, eventstore.FromStart())
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if item := recvItem(t, sub); !item.CaughtUp {
		t.Fatalf("got %+v, want CaughtUp", item)
	}
	sizes := []int{1, 63, 64, 65, 64*3 + 5, 1000}
	var wg sync.WaitGroup
	results := make([]eventstore.AppendResult, len(sizes))
	errs := make([]error, len(sizes))
	for i, n := range sizes {
		events := make([]eventstore.EventData, n)
		for j := range events {
			events[j] = eventstore.EventData{ID: newID(), Type: "T", Data: fmt.Appendf(nil, `{"n":%d,"i":%d}`, n, j)}
		}
		wg.Go(func() {
			results[i], errs[i] = s.Append(t.Context(), fmt.Sprintf("large-%d", n), eventstore.NoStream(), events...)
		})
	}
	wg.Wait()
	live := map[eventstore.EventID]eventstore.Position{}
	total := 0
	for i, n := range sizes {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		total += n
	}
	for range total {
		e := recvEvent(t, sub)
		live[e.ID] = e.Position
	}
	for i, n := range sizes {
		stream := fmt.Sprintf("large-%d", n)
		got, err := s.ReadStream(t.Context(), stream, 0, n+1)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != n {
			t.Fatalf("%s holds %d events, want %d", stream, len(got), n)
		}
		first := got[0].Position.Commit
		for j, e := range got {
			if e.Revision != uint64(j) || e.Position.Commit != first+uint64(j) || string(e.Data) != fmt.Sprintf(`{"n":%d,"i":%d}`, n, j) {
				t.Fatalf("%s[%d]: revision %d at %v holding %s", stream, j, e.Revision, e.Position, e.Data)
			}
			if live[e.ID] != e.Position {
				t.Fatalf("%s[%d]: read at %v, delivered live at %v", stream, j, e.Position, live[e.ID])
			}
		}
		if results[i].Position != got[n-1].Position || results[i].NextExpectedRevision != uint64(n-1) {
			t.Errorf("%s: append answered %+v, last event at %v", stream, results[i], got[n-1].Position)
		}
	}
}

// A live subscriber gets the events' data as appended, even when the
// appender reuses its buffers once Append returns; the data of one event
// never runs into the next one's; and empty data stays empty.
func TestLiveEventsHoldTheirOwnCopyOfTheData(t *testing.T) {
	t.Parallel()
	s := openStore(t, t.TempDir())
	defer s.Close()
	sub, err := s.Subscribe(t.Context(), eventstore.Filter{StreamPrefix: "copy-"}, eventstore.FromStart())
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if !recvItem(t, sub).CaughtUp {
		t.Fatal("want CaughtUp first")
	}
	// More than one INSERT statement's rows, with an empty event among them.
	const n = 150
	events := make([]eventstore.EventData, n)
	want := make([]string, n)
	for i := range events {
		data := fmt.Appendf(nil, "event %d", i)
		if i == 70 {
			data = nil
		}
		want[i] = string(data)
		events[i] = eventstore.EventData{ID: newID(), Type: "T", Data: data}
	}
	if _, err := s.Append(t.Context(), "copy-a", eventstore.NoStream(), events...); err != nil {
		t.Fatal(err)
	}
	for i := range events {
		for j := range events[i].Data {
			events[i].Data[j] = 'x'
		}
	}
	for i := range n {
		got := recvEvent(t, sub)
		if string(got.Data) != want[i] {
			t.Fatalf("live event %d: data %q, want %q", i, got.Data, want[i])
		}
		if len(got.Data) > 0 {
			// Appending to one event's data must not write over the next.
			_ = append(got.Data, '!')
		}
		if len(got.Data) == 0 && got.Data != nil {
			t.Errorf("live event %d: empty data is %#v, want nil", i, got.Data)
		}
	}
}
