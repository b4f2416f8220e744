package embedded_test

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
)

// BenchmarkAppend measures durable appends of one event by one writer: one
// fsync each. cmd/storebench compares it with the bare engine.
func BenchmarkAppend(b *testing.B) {
	s, err := embedded.Open(b.Context(), b.TempDir(), embedded.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	body := make([]byte, 200)
	rev := uint64(0)
	for b.Loop() {
		expected := eventstore.NoStream()
		if rev > 0 {
			expected = eventstore.Exact(rev - 1)
		}
		if _, err := s.Append(b.Context(), "bench", expected, eventstore.EventData{ID: newID(), Type: "T", Data: body}); err != nil {
			b.Fatal(err)
		}
		rev++
	}
}

// BenchmarkAppendConcurrent measures appends from 64 goroutines per CPU,
// which the writer commits in groups.
func BenchmarkAppendConcurrent(b *testing.B) {
	s, err := embedded.Open(b.Context(), b.TempDir(), embedded.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	body := make([]byte, 200)
	var writer atomic.Int64
	b.SetParallelism(64)
	b.RunParallel(func(pb *testing.PB) {
		stream := fmt.Sprintf("bench-%d", writer.Add(1))
		rev := uint64(0)
		for pb.Next() {
			expected := eventstore.NoStream()
			if rev > 0 {
				expected = eventstore.Exact(rev - 1)
			}
			if _, err := s.Append(b.Context(), stream, expected, eventstore.EventData{ID: newID(), Type: "T", Data: body}); err != nil {
				b.Error(err)
				return
			}
			rev++
		}
	})
	st := s.Stats()
	b.ReportMetric(float64(st.Appends)/float64(max(st.Commits, 1)), "appends/commit")
}

// BenchmarkAppendBatch measures appends of many events at once, the shape
// of a pull reply applied to an inbox, per event.
func BenchmarkAppendBatch(b *testing.B) {
	s, err := embedded.Open(b.Context(), b.TempDir(), embedded.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const n = 10000
	events := make([]eventstore.EventData, n)
	rev := uint64(0)
	for b.Loop() {
		for j := range events {
			events[j] = eventstore.EventData{ID: newID(), Type: "T", Data: make([]byte, 120)}
		}
		expected := eventstore.NoStream()
		if rev > 0 {
			expected = eventstore.Exact(rev - 1)
		}
		if _, err := s.Append(b.Context(), "batch", expected, events...); err != nil {
			b.Fatal(err)
		}
		rev += n
	}
	b.ReportMetric(float64(rev)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkReadStream measures paging through a stream, per event.
func BenchmarkReadStream(b *testing.B) {
	s, err := embedded.Open(b.Context(), b.TempDir(), embedded.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const n, page = 5000, 256
	events := make([]eventstore.EventData, 100)
	for i := 0; i < n; i += len(events) {
		for j := range events {
			events[j] = eventstore.EventData{ID: newID(), Type: "T", Data: make([]byte, 200)}
		}
		expected := eventstore.NoStream()
		if i > 0 {
			expected = eventstore.Exact(uint64(i - 1))
		}
		if _, err := s.Append(b.Context(), "read", expected, events...); err != nil {
			b.Fatal(err)
		}
	}
	read := 0
	for b.Loop() {
		for from := uint64(0); from < n; from += page {
			got, err := s.ReadStream(b.Context(), "read", from, page)
			if err != nil {
				b.Fatal(err)
			}
			read += len(got)
		}
	}
	b.ReportMetric(float64(read)/b.Elapsed().Seconds(), "events/s")
}
