package projector

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	"github.com/harmony-postbox/postbox/projections"
)

func TestLiveResumesFromItsCheckpoint(t *testing.T) {
	t.Parallel()
	recs := newHistory(t).seen("pa", "a.example:2289").enqueueN("pa", 2).records()
	path := filepath.Join(t.TempDir(), "projections.checkpoint")
	// Given a checkpoint of the store's records, marked with a count no
	// replay of them gives,
	s := given(t, recs...)
	s.SetDatabaseID(memDatabaseID)
	data, err := projections.MarshalCheckpoint(s)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	doc["state"].(map[string]any)["unknown_records"] = 7
	if data, err = json.Marshal(doc); err != nil {
		t.Fatal(err)
	}
	if err := writeFileAtomic(path, data); err != nil {
		t.Fatal(err)
	}
	// when a projection starts on it,
	var log syncBuffer
	l := NewLive(&memStore{records: recs}, path, bufferLogger(&log))
	startLive(t, l)
	got, err := l.Current(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// then it went on from the checkpoint rather than replaying.
	if got.UnknownRecords() != 7 {
		t.Fatalf("UnknownRecords = %d: the checkpoint was not loaded", got.UnknownRecords())
	}
	if !strings.Contains(log.String(), "resumed from their checkpoint") {
		t.Fatalf("log: %s", log.String())
	}
}

func TestLiveReportsWhatItCannotDo(t *testing.T) {
	t.Parallel()
	recs := newHistory(t).seen("pa", "a.example:2289").raw(streams.Delivery("pa"), streams.TypeEventPushed, []byte("{")).records()
	t.Run("an unreadable record is logged", func(t *testing.T) {
		var log syncBuffer
		l := NewLive(&memStore{records: recs}, "", bufferLogger(&log))
		startLive(t, l)
		if _, err := l.Current(t.Context()); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the log line", func() bool { return strings.Contains(log.String(), "unreadable record") })
	})
	t.Run("a checkpoint that cannot be written is logged, and fails Run", func(t *testing.T) {
		var log syncBuffer
		path := filepath.Join(t.TempDir(), "missing-dir", "projections.checkpoint")
		l := NewLive(&memStore{records: recs}, path, bufferLogger(&log))
		l.checkpointEvery = 5 * time.Millisecond
		stop := startLive(t, l)
		if _, err := l.Current(t.Context()); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the log line", func() bool { return strings.Contains(log.String(), "writing the projection checkpoint failed") })
		if err := stop(); err == nil {
			t.Fatal("Run ended without error though its checkpoint could not be written")
		}
	})
	t.Run("Current fails when the store cannot be read", func(t *testing.T) {
		l := NewLive(&memStore{recvErr: errors.New("disk gone")}, "", nil)
		if s, err := l.Current(t.Context()); err == nil {
			t.Fatalf("Current = %v without error", s)
		}
	})
}

// An unchanged state is not written again.
func TestLiveWritesAnUnchangedCheckpointOnce(t *testing.T) {
	t.Parallel()
	recs := newHistory(t).seen("pa", "a.example:2289").records()
	path := filepath.Join(t.TempDir(), "projections.checkpoint")
	l := NewLive(&memStore{records: recs}, path, testLogger(t))
	l.checkpointEvery = 5 * time.Millisecond
	stop := startLive(t, l)
	eventually(t, "the first checkpoint", func() bool { _, err := os.Stat(path); return err == nil })
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // twenty ticks
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err == nil {
		t.Fatal("an unchanged checkpoint was written again")
	}
}

// Failing subscriptions are retried ever more slowly: a store that is down
// is not hammered.
func TestLiveBacksOffWhileTheStoreFails(t *testing.T) {
	t.Parallel()
	for name, store := range map[string]*memStore{
		"subscribing fails": {subErr: errors.New("store down")},
		"reading fails":     {recvErr: errors.New("disk gone")},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			l := NewLive(store, "", nil)
			l.backoffFirst, l.backoffMax = time.Millisecond, time.Minute
			stop := startLive(t, l)
			time.Sleep(300 * time.Millisecond)
			_ = stop()
			// 1+2+4+...+256 ms: about nine tries; without backoff, hundreds.
			if n := store.subs.Load(); n > 30 {
				t.Fatalf("%d subscriptions in 300 ms", n)
			}
		})
	}
}

func TestAuditProgressIsCalledNowAndThen(t *testing.T) {
	t.Parallel()
	recs := newHistory(t).enqueueN("pa", progressEvery+2).records()
	var calls []uint64
	rep, err := Audit(t.Context(), &memStore{records: recs}, AuditOptions{}, func(done uint64) { calls = append(calls, done) })
	if err != nil {
		t.Fatal(err)
	}
	want := []uint64{progressEvery, progressEvery + 2}
	if !reflect.DeepEqual(calls, want) || rep.Records != progressEvery+2 {
		t.Fatalf("progress calls %v, records %d; want %v", calls, rep.Records, want)
	}
	if _, err := Audit(t.Context(), &memStore{records: recs}, AuditOptions{}, nil); err != nil {
		t.Fatalf("an audit without progress: %v", err)
	}
}

func TestAuditThatCannotReadTheStoreFails(t *testing.T) {
	t.Parallel()
	if _, err := Audit(t.Context(), &memStore{recvErr: errors.New("disk gone")}, AuditOptions{}, nil); err == nil {
		t.Fatal("an audit whose store read failed reported a result")
	}
}

// A checkpoint written by a live projection passes the audit.
func TestAuditOfALiveProjectionsCheckpoint(t *testing.T) {
	t.Parallel()
	store := newHistory(t).seen("pa", "a.example:2289").enqueueN("pa", 3).delivery("pa", domain.EventPushed{Seq: 0, Attempts: 1}).store()
	path := filepath.Join(t.TempDir(), "projections.checkpoint")
	l := NewLive(store, path, testLogger(t))
	stop := startLive(t, l)
	if _, err := l.Current(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	rep, err := Audit(t.Context(), store, AuditOptions{CheckpointPath: path}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Clean() || !rep.CheckpointChecked {
		t.Fatalf("report %+v; want clean, the checkpoint checked", rep)
	}
}
