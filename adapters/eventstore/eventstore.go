// Package eventstore holds the values and errors shared by every event store
// Postbox can run on: the embedded store (package embedded) and EventStoreDB
// (package esdb). Each consumer declares the small interface it needs over
// these types; Store below is the whole surface, which the conformance suite
// in package storetest exercises.
//
// The semantics follow EventStoreDB's, so that both stores behave alike:
// stream revisions start at 0, an append names the revision it expects, a
// read's start is inclusive and a subscription's start is exclusive.
package eventstore

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Store is the full event store port.
type Store interface {
	// Append writes events to the end of stream atomically, if the stream is
	// at the expected revision. Retrying an append whose events carry the
	// same IDs at the same expected revision succeeds without writing twice.
	Append(ctx context.Context, stream string, expected ExpectedRevision, events ...EventData) (AppendResult, error)
	// ReadStream returns up to limit events of stream in order, starting at
	// revision from (inclusive), or at the stream's truncation point if from
	// is below it. It returns ErrStreamNotFound when the stream never had
	// events, and an empty slice when from is past its end or every event
	// was truncated.
	ReadStream(ctx context.Context, stream string, from uint64, limit int) ([]RecordedEvent, error)
	// ReadStreamBackward returns up to limit events of stream, newest first.
	ReadStreamBackward(ctx context.Context, stream string, limit int) ([]RecordedEvent, error)
	// Subscribe delivers every event of the streams the filter selects, in
	// global order, starting after from (exclusive): first the stored
	// history, then one CaughtUp item, then live events as they are appended.
	Subscribe(ctx context.Context, filter Filter, from SubscribeFrom) (Subscription, error)
	// Delete removes a stream for good: later appends and reads return
	// ErrStreamDeleted.
	Delete(ctx context.Context, stream string, expected ExpectedRevision) error
	// Truncate removes the events of stream before revision before, as
	// EventStoreDB's truncate-before ($tb stream metadata) does: reads then
	// start at the first kept revision, and a fully truncated stream reads
	// as empty but still exists. Revisions and expected-revision appends are
	// unchanged. before may be at most one past the last revision;
	// further is refused with ErrTruncateBeyondEnd (EventStoreDB would keep
	// such a value and hide the events appended later too). A truncation
	// point never moves back: truncating again at or below it does nothing.
	// It returns ErrStreamNotFound for a stream that never had events.
	//
	// Subscriptions skip truncated events on every store. EventStoreDB keeps
	// them in $all until a scavenge; its adapter looks each stream's
	// truncation point up and skips them itself. An event truncated after a
	// subscription read it (or first met its stream) may still be
	// delivered. Subscribing after the position of a truncated event works.
	Truncate(ctx context.Context, stream string, before uint64) error
	// TruncatedBefore returns the stream's truncation point: the first
	// revision that reads may return, 0 if it was never truncated. It
	// returns ErrStreamNotFound and ErrStreamDeleted as ReadStream does.
	TruncatedBefore(ctx context.Context, stream string) (uint64, error)
	// Close releases the store; later calls return ErrClosed.
	Close() error
}

// MultiAppender is a store that can append to several streams in one
// commit (the embedded store can; EventStoreDB cannot: an append covers one
// stream). Each part is checked against its own expected revision and
// answered on its own, as its own Append would be; the parts that succeed
// are durable together, in one commit.
type MultiAppender interface {
	AppendStreams(ctx context.Context, parts []StreamAppend) ([]AppendResult, []error)
}

// StreamAppend is one stream's part of an AppendStreams.
type StreamAppend struct {
	Stream   string
	Expected ExpectedRevision
	Events   []EventData
}

// EventID identifies an event for idempotent retries (a UUID's 16 bytes).
type EventID [16]byte

// String formats the ID as a UUID.
func (id EventID) String() string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", id[0:4], id[4:6], id[6:8], id[8:10], id[10:16])
}

// EventData is an event to append.
type EventData struct {
	ID   EventID
	Type string
	// Data is the event body. Postbox writes protojson, so that EventStoreDB's
	// own tools can read it; stores treat it as opaque bytes.
	Data []byte
}

// RecordedEvent is an event as stored.
type RecordedEvent struct {
	Stream   string
	Revision uint64
	Position Position
	ID       EventID
	Type     string
	Data     []byte
	Created  time.Time
}

// Position is an event's place in the store's global order. The embedded
// store sets Commit and Prepare to the same number; EventStoreDB's $all
// positions carry both.
type Position struct {
	Commit  uint64
	Prepare uint64
}

// Less reports whether p comes before q in the global order.
func (p Position) Less(q Position) bool {
	if p.Commit != q.Commit {
		return p.Commit < q.Commit
	}
	return p.Prepare < q.Prepare
}

// AppendResult tells where an append landed.
type AppendResult struct {
	// NextExpectedRevision is the revision of the last event now in the
	// stream: the value to pass as Exact for the next append.
	NextExpectedRevision uint64
	// Position is the global position of the last appended event.
	Position Position
}

// ExpectedRevision states what an append expects the stream to be.
type ExpectedRevision struct {
	kind     expectKind
	revision uint64
}

type expectKind uint8

const (
	expectAny expectKind = iota
	expectNoStream
	expectExact
)

// Any accepts the stream in any state.
func Any() ExpectedRevision { return ExpectedRevision{kind: expectAny} }

// NoStream requires that the stream has no events yet.
func NoStream() ExpectedRevision { return ExpectedRevision{kind: expectNoStream} }

// Exact requires that the stream's last event is at revision r.
func Exact(r uint64) ExpectedRevision { return ExpectedRevision{kind: expectExact, revision: r} }

// IsAny reports whether e is Any().
func (e ExpectedRevision) IsAny() bool { return e.kind == expectAny }

// IsNoStream reports whether e is NoStream().
func (e ExpectedRevision) IsNoStream() bool { return e.kind == expectNoStream }

// Revision returns the revision of an Exact expectation.
func (e ExpectedRevision) Revision() (uint64, bool) { return e.revision, e.kind == expectExact }

func (e ExpectedRevision) String() string {
	switch e.kind {
	case expectNoStream:
		return "no stream"
	case expectExact:
		return fmt.Sprintf("revision %d", e.revision)
	default:
		return "any"
	}
}

// Filter selects the streams a subscription follows. The zero value selects
// every stream except the store's own system streams (names starting "$").
type Filter struct {
	StreamPrefix string
}

// SubscribeFrom is where a subscription starts, exclusive.
type SubscribeFrom struct {
	start bool
	end   bool
	after Position
}

// FromStart starts a subscription before the first event.
func FromStart() SubscribeFrom { return SubscribeFrom{start: true} }

// FromEnd starts a subscription after the last event stored when it is
// made, as EventStoreDB's subscription from End does: it is caught up at
// once and yields only what is appended later. For a watcher that reads
// the current state itself after subscribing and wants only news.
func FromEnd() SubscribeFrom { return SubscribeFrom{end: true} }

// After starts a subscription with the first event after p.
func After(p Position) SubscribeFrom { return SubscribeFrom{after: p} }

// IsStart reports whether the subscription starts before the first event.
func (f SubscribeFrom) IsStart() bool { return f.start }

// IsEnd reports whether the subscription starts after the last event.
func (f SubscribeFrom) IsEnd() bool { return f.end }

// Position returns the exclusive start of a subscription that is neither
// FromStart nor FromEnd.
func (f SubscribeFrom) Position() Position { return f.after }

// Subscription yields events in global order.
type Subscription interface {
	// Recv blocks until the next item, or returns an error when ctx ends, the
	// subscription is closed or the store fails.
	Recv(ctx context.Context) (Item, error)
	Close() error
}

// Item is one thing a subscription yields: an event, or the signal that the
// history has been read and what follows is live.
type Item struct {
	Event    *RecordedEvent
	CaughtUp bool
}

// Errors every store returns, matched with errors.Is.
var (
	ErrWrongExpectedRevision = errors.New("wrong expected revision")
	ErrStreamNotFound        = errors.New("stream not found")
	ErrStreamDeleted         = errors.New("stream deleted")
	ErrClosed                = errors.New("event store closed")
	// ErrEventTooLarge: one event is larger than the store can take in an
	// append; retrying cannot help, so callers store something smaller
	// (a bounded marker) and report it. Nothing of the append was written.
	ErrEventTooLarge = errors.New("event too large for the store")
	// ErrNotAPosition: a subscription was asked to start after a position
	// that is no event's in this store (past its end, between records, or
	// from another database).
	ErrNotAPosition = errors.New("not the position of an event in this store")
	// ErrTruncateBeyondEnd: a truncation was asked to remove events the
	// stream does not have yet.
	ErrTruncateBeyondEnd = errors.New("truncation past the end of the stream")
)

// WrongExpectedRevisionError details a conflict; it matches
// ErrWrongExpectedRevision.
type WrongExpectedRevisionError struct {
	Stream   string
	Expected ExpectedRevision
	// Actual is the stream's last revision; meaningless if !StreamExists.
	Actual       uint64
	StreamExists bool
}

func (e *WrongExpectedRevisionError) Error() string {
	actual := "no stream"
	if e.StreamExists {
		actual = fmt.Sprintf("revision %d", e.Actual)
	}
	return fmt.Sprintf("append to %q: expected %s, stream is at %s: %v", e.Stream, e.Expected, actual, ErrWrongExpectedRevision)
}

func (e *WrongExpectedRevisionError) Unwrap() error { return ErrWrongExpectedRevision }

// EventTooLargeError names the events of an append that are each larger
// than the store takes in one append; it matches ErrEventTooLarge. Nothing
// of the append was written.
type EventTooLargeError struct {
	Stream string
	// IDs are the events over the limit, in the append's order.
	IDs []EventID
	// Limit is the store's per-append budget in bytes, as it counts them.
	Limit int
}

func (e *EventTooLargeError) Error() string {
	return fmt.Sprintf("append to %q: %d event(s) over the per-append budget of %d bytes (the first %s): %v",
		e.Stream, len(e.IDs), e.Limit, e.IDs[0], ErrEventTooLarge)
}

func (e *EventTooLargeError) Unwrap() error { return ErrEventTooLarge }
