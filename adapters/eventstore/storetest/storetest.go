// Package storetest is the conformance suite every eventstore.Store passes:
// the embedded store and the EventStoreDB adapter run the same cases, so
// that Postbox behaves alike on either.
//
// Each case encodes a documented behaviour of EventStoreDB, cited in its
// comment; the embedded store follows EventStoreDB rather than the reverse.
package storetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
)

// Harness opens the stores under test.
type Harness struct {
	// Open returns a store for one test. Every test uses stream names of its
	// own, so Open may connect each test to one shared server. The suite
	// closes the store when the test ends (or earlier, in the cases about
	// closing), at most once.
	Open func(t *testing.T) eventstore.Store
	// Reopen returns a new store over the same storage as closed, a store
	// Open returned that the suite has closed. Nil skips the cases that
	// need it.
	Reopen func(t *testing.T, closed eventstore.Store) eventstore.Store
}

// Timeouts keep a broken store from hanging the suite.
const (
	opTimeout    = 30 * time.Second
	recvTimeout  = 10 * time.Second
	quietTimeout = 300 * time.Millisecond
)

// Run runs the whole suite against h.
func Run(t *testing.T, h Harness) {
	if h.Open == nil {
		t.Fatal("storetest: Harness.Open is nil")
	}
	su := &suite{h: h, run: randomHex(4)}

	t.Run("Append", func(t *testing.T) {
		t.Run("NoStreamCreatesStream", su.appendNoStreamCreatesStream)
		t.Run("NoStreamOnExistingStreamConflicts", su.appendNoStreamOnExistingConflicts)
		t.Run("ExactRevision", su.appendExactRevision)
		t.Run("StaleRevisionConflicts", su.appendStaleRevisionConflicts)
		t.Run("ExactOnMissingStreamConflicts", su.appendExactOnMissingStreamConflicts)
		t.Run("Any", su.appendAny)
		t.Run("ConcurrentExactOneWinnerPerRevision", su.appendConcurrentExact)
		t.Run("StreamsEachCheckedAndAnswered", su.appendStreams)
	})
	t.Run("Idempotence", func(t *testing.T) {
		t.Run("RetryNoStream", su.idempotentNoStream)
		t.Run("RetryExact", su.idempotentExact)
		t.Run("RetryAny", su.idempotentAny)
		t.Run("OtherIDsAtUsedRevisionConflict", su.idempotentOtherIDsConflict)
		t.Run("PartialMatchConflicts", su.idempotentPartialConflicts)
	})
	t.Run("Read", func(t *testing.T) {
		t.Run("ForwardInclusiveWithLimit", su.readForward)
		t.Run("Backward", su.readBackward)
		t.Run("StreamNotFound", su.readNotFound)
	})
	t.Run("Delete", func(t *testing.T) {
		t.Run("TombstoneRefusesReadsAndAppends", su.deleteTombstone)
		t.Run("StaleRevisionConflicts", su.deleteStaleRevision)
	})
	t.Run("Subscribe", func(t *testing.T) {
		t.Run("FromStartHistoryThenCaughtUpThenLive", su.subscribeFromStart)
		t.Run("FromPositionIsExclusive", su.subscribeFromPositionExclusive)
		t.Run("FromPositionPastTheEndRefused", su.subscribePastTheEnd)
		t.Run("FromEndOnlyLaterEvents", su.subscribeFromEnd)
		t.Run("PrefixFilter", su.subscribePrefix)
		t.Run("SystemStreamsExcluded", su.subscribeExcludesSystemStreams)
		t.Run("NoGapNorDuplicateAcrossCatchUp", su.subscribeAcrossCatchUp)
		t.Run("RecvHonoursContext", su.subscribeRecvContext)
		t.Run("CloseEndsRecv", su.subscribeClose)
	})
	t.Run("Truncate", func(t *testing.T) {
		t.Run("ReadsStartAtTheFirstKept", su.truncateReadsStartAtTheFirstKept)
		t.Run("RevisionsAndAppendsUnchanged", su.truncateKeepsRevisions)
		t.Run("Everything", su.truncateEverything)
		t.Run("BeyondTheEndRefused", su.truncateBeyondTheEndRefused)
		t.Run("IdempotentNeverBack", su.truncateIdempotentNeverBack)
		t.Run("MissingOrDeletedStream", su.truncateMissingOrDeleted)
		t.Run("SubscriptionsSkipTruncated", su.truncateSubscriptionsSkip)
		t.Run("SurvivesReopen", su.truncateSurvivesReopen)
	})
	t.Run("Lifecycle", func(t *testing.T) {
		t.Run("ReopenKeepsEverything", su.reopenKeepsEverything)
		t.Run("ClosedStoreReturnsErrClosed", su.closedStore)
	})
}

type suite struct {
	h   Harness
	run string // tells this run's streams from other runs' on a shared server
}

// closeOnce lets both a case and the cleanup close a store.
type closeOnce struct {
	eventstore.Store
	once sync.Once
	err  error
}

func (c *closeOnce) Close() error {
	c.once.Do(func() { c.err = c.Store.Close() })
	return c.err
}

// open returns a store closed at the end of the test; raw is what
// Harness.Open returned, for Harness.Reopen.
func (su *suite) open(t *testing.T) (s eventstore.Store, raw eventstore.Store) {
	t.Helper()
	raw = su.h.Open(t)
	if raw == nil {
		t.Fatal("Harness.Open returned nil")
	}
	c := &closeOnce{Store: raw}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return c, raw
}

// stream returns a stream name unique to this run and test.
func (su *suite) stream(t *testing.T, suffix string) string {
	return su.prefix(t) + suffix
}

// prefix returns a stream name prefix unique to this run and test.
func (su *suite) prefix(t *testing.T) string {
	name := strings.NewReplacer("/", ".", " ", "_").Replace(t.Name())
	return fmt.Sprintf("storetest-%s-%s-", su.run, name)
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), opTimeout)
	t.Cleanup(cancel)
	return ctx
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func newID() eventstore.EventID {
	var id eventstore.EventID
	_, _ = rand.Read(id[:])
	id[6] = id[6]&0x0f | 0x40 // a version 4 UUID, as EventStoreDB clients make
	id[8] = id[8]&0x3f | 0x80
	return id
}

// newEvents returns n events with fresh IDs and JSON bodies (Postbox writes
// protojson, and EventStoreDB stores JSON events as they are).
func newEvents(n int, typ string) []eventstore.EventData {
	out := make([]eventstore.EventData, n)
	for i := range out {
		id := newID()
		out[i] = eventstore.EventData{
			ID:   id,
			Type: typ,
			Data: fmt.Appendf(nil, `{"n":%d,"id":%q}`, i, id),
		}
	}
	return out
}

func mustAppend(t *testing.T, s eventstore.Store, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) eventstore.AppendResult {
	t.Helper()
	res, err := s.Append(ctxFor(t), stream, expected, events...)
	if err != nil {
		t.Fatalf("append %d events to %q expecting %s: %v", len(events), stream, expected, err)
	}
	return res
}

func mustRead(t *testing.T, s eventstore.Store, stream string, from uint64, limit int) []eventstore.RecordedEvent {
	t.Helper()
	got, err := s.ReadStream(ctxFor(t), stream, from, limit)
	if err != nil {
		t.Fatalf("read %q from %d limit %d: %v", stream, from, limit, err)
	}
	return got
}

// wantConflict checks err is the typed wrong-expected-revision error with
// the stream's actual state.
func wantConflict(t *testing.T, err error, stream string, actual uint64, exists bool) {
	t.Helper()
	if !errors.Is(err, eventstore.ErrWrongExpectedRevision) {
		t.Fatalf("got error %v, want one matching ErrWrongExpectedRevision", err)
	}
	var wrong *eventstore.WrongExpectedRevisionError
	if !errors.As(err, &wrong) {
		t.Fatalf("error %v is not a *WrongExpectedRevisionError", err)
	}
	if wrong.Stream != stream {
		t.Errorf("conflict names stream %q, want %q", wrong.Stream, stream)
	}
	if wrong.StreamExists != exists {
		t.Errorf("conflict says StreamExists=%v, want %v", wrong.StreamExists, exists)
	}
	if exists && wrong.Actual != actual {
		t.Errorf("conflict says actual revision %d, want %d", wrong.Actual, actual)
	}
}

// checkEvents compares recorded events with what was appended, in order,
// starting at revision first (counting down when backward).
func checkEvents(t *testing.T, got []eventstore.RecordedEvent, stream string, want []eventstore.EventData, first uint64, backward bool) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d events, want %d: %v", len(got), len(want), revisions(got))
	}
	for i, e := range got {
		w := want[i]
		rev := first + uint64(i)
		if backward {
			rev = first - uint64(i)
		}
		if e.Stream != stream || e.Revision != rev || e.ID != w.ID || e.Type != w.Type || string(e.Data) != string(w.Data) {
			t.Errorf("event %d = {%s r%d %s %s %s}, want {%s r%d %s %s %s}",
				i, e.Stream, e.Revision, e.ID, e.Type, e.Data, stream, rev, w.ID, w.Type, w.Data)
		}
		if e.Created.IsZero() {
			t.Errorf("event %d has no Created time", i)
		}
		if i > 0 {
			prev := got[i-1].Position
			if !backward && !prev.Less(e.Position) || backward && !e.Position.Less(prev) {
				t.Errorf("event %d at position %v is out of order after %v", i, e.Position, prev)
			}
		}
	}
}

func revisions(events []eventstore.RecordedEvent) []uint64 {
	out := make([]uint64, len(events))
	for i, e := range events {
		out[i] = e.Revision
	}
	return out
}

func reversed[T any](s []T) []T {
	out := make([]T, len(s))
	for i, v := range s {
		out[len(s)-1-i] = v
	}
	return out
}
