package esdb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
)

// DefaultMaxAppendBytes is the default append budget: under the 1 MiB
// that every server version refuses by default (MaxAppendSize), by the
// strictest count, 24.10.4's: data + metadata + twice the type length.
const DefaultMaxAppendBytes = 1_000_000

// eventCost is what the strictest server counts of an event towards its
// append limits. The adapter writes no event metadata.
func eventCost(e eventstore.EventData) int { return len(e.Data) + 2*len(e.Type) }

// Append writes events to stream if it is at the expected revision.
//
// The server refuses an append over its MaxAppendSize (the v4 client sees
// only EOF), so events over the budget are written in consecutive appends,
// each at the exact revision the previous one left: the first chunk at
// expected, the rest at exact revisions. One event over the budget is
// refused with eventstore.ErrEventTooLarge before anything is written. A
// chunk whose outcome is unclear (a timeout, a lost connection, a
// follower) is retried with the same event IDs and expected revision, which
// the server recognises if the first try landed, until it is stored or ctx
// ends. If a later chunk fails for good, the earlier ones stay written.
// Events over the budget are named in an *eventstore.EventTooLargeError.
func (s *Store) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	if s.isClosed() {
		return eventstore.AppendResult{}, fmt.Errorf("esdb: append to %q: %w", stream, eventstore.ErrClosed)
	}
	ctx, cancel := s.bind(ctx)
	defer cancel()
	if len(events) == 0 {
		// The client reports a made-up revision for an empty append, so
		// check the expectation against the stream's head instead.
		var res eventstore.AppendResult
		err := s.withRef(ctx, func(ref *clientRef) (err error) {
			res, err = s.checkExpected(ctx, ref, stream, expected)
			return err
		})
		if err != nil {
			return eventstore.AppendResult{}, fmt.Errorf("esdb: append to %q: %w", stream, err)
		}
		return res, nil
	}
	var tooLarge []eventstore.EventID
	for _, e := range events {
		if eventCost(e) > s.maxAppendBytes {
			tooLarge = append(tooLarge, e.ID)
		}
	}
	if len(tooLarge) > 0 {
		return eventstore.AppendResult{}, fmt.Errorf("esdb: %w", &eventstore.EventTooLargeError{Stream: stream, IDs: tooLarge, Limit: s.maxAppendBytes})
	}
	data := make([]esdb.EventData, len(events))
	for i, e := range events {
		data[i] = esdb.EventData{
			EventID: eventID(stream, expected, i, e.ID),
			// Postbox writes protojson bodies; JSON lets the server's UI and
			// projections read them.
			ContentType: esdb.ContentTypeJson,
			EventType:   e.Type,
			Data:        e.Data,
		}
	}
	var res eventstore.AppendResult
	stored := 0
	for stored < len(events) {
		n, size := 0, 0
		for stored+n < len(events) && size+eventCost(events[stored+n]) <= s.maxAppendBytes {
			size += eventCost(events[stored+n])
			n++
		}
		var err error
		res, err = s.appendChunk(ctx, stream, expected, data[stored:stored+n])
		if err != nil {
			if stored > 0 {
				return eventstore.AppendResult{}, fmt.Errorf("esdb: append to %q: %d of %d events stored, then: %w", stream, stored, len(events), err)
			}
			return eventstore.AppendResult{}, fmt.Errorf("esdb: append to %q: %w", stream, err)
		}
		stored += n
		expected = eventstore.Exact(res.NextExpectedRevision)
	}
	return res, nil
}

// eventID is the ID an event is written with: the caller's, or, for an
// event without one, one derived from where it goes, so that a retry
// carries the same.
func eventID(stream string, expected eventstore.ExpectedRevision, i int, id eventstore.EventID) uuid.UUID {
	if id != (eventstore.EventID{}) {
		return uuid.UUID(id)
	}
	if rev, ok := expected.Revision(); ok {
		return uuid.NewSHA1(uuid.NameSpaceOID, fmt.Appendf(nil, "postbox-esdb\x00%s\x00%d", stream, rev+1+uint64(i)))
	}
	if expected.IsNoStream() {
		return uuid.NewSHA1(uuid.NameSpaceOID, fmt.Appendf(nil, "postbox-esdb\x00%s\x00%d", stream, i))
	}
	return uuid.New()
}

// appendRetryMax bounds the wait between retries of an unclear append.
const appendRetryMax = 2 * time.Second

// appendChunk writes one append the server accepts, retrying unclear
// outcomes until it is stored or ctx ends.
func (s *Store) appendChunk(ctx context.Context, stream string, expected eventstore.ExpectedRevision, data []esdb.EventData) (eventstore.AppendResult, error) {
	wait := backoff{}
	for attempt := 1; ; attempt++ {
		var res eventstore.AppendResult
		err := s.withRef(ctx, func(ref *clientRef) error {
			if attempt > 1 && expected.IsAny() {
				// With Any the server's only duplicate check is a cache
				// that a restart or a leader change forgets: look first.
				found, ok, err := s.findStored(ctx, ref, stream, data)
				if err != nil || ok {
					res = found
					return err
				}
			}
			var err error
			res, err = s.appendOnce(ctx, ref, stream, expected, data)
			return err
		})
		if err == nil {
			if attempt > 1 {
				s.logger.Info("append stored after a retry", "stream", stream, "attempts", attempt)
			}
			return res, nil
		}
		if !unclear(err) || ctx.Err() != nil || s.isClosed() {
			return eventstore.AppendResult{}, err
		}
		if errors.Is(err, io.EOF) {
			s.logger.Warn("append cut short (EOF); retrying with the same event IDs. If this repeats, the server's MaxAppendSize may be below the append budget (maxAppendBytes)",
				"stream", stream, "attempt", attempt, "max_append_bytes", s.maxAppendBytes, "err", err)
		} else {
			s.logger.Warn("append outcome unclear; retrying with the same event IDs", "stream", stream, "attempt", attempt, "err", err)
		}
		if wait.next >= appendRetryMax {
			wait.next = appendRetryMax / 2
		}
		lastErr := err
		if err := wait.wait(ctx); err != nil {
			return eventstore.AppendResult{}, fmt.Errorf("%w (last attempt: %w)", err, lastErr)
		}
	}
}

// storedScan bounds how far back from a stream's end findStored looks.
const storedScan = 1024

// findStored reports whether data already sits in the stream, among its
// last storedScan events, and where. Only part of it there is a conflict.
func (s *Store) findStored(ctx context.Context, ref *clientRef, stream string, data []esdb.EventData) (eventstore.AppendResult, bool, error) {
	tail, err := s.readStream(ctx, ref, stream, esdb.Backwards, esdb.End{}, storedScan)
	if errors.Is(err, eventstore.ErrStreamNotFound) {
		return eventstore.AppendResult{}, false, nil
	}
	if err != nil {
		return eventstore.AppendResult{}, false, err
	}
	for i := len(tail) - 1; i >= 0; i-- {
		if tail[i].ID != eventstore.EventID(data[0].EventID) {
			continue
		}
		// tail is newest first: the chunk runs from i down to i-len+1.
		for j := range data {
			if i-j < 0 || tail[i-j].ID != eventstore.EventID(data[j].EventID) {
				return eventstore.AppendResult{}, false, &eventstore.WrongExpectedRevisionError{
					Stream: stream, Expected: eventstore.Any(), Actual: tail[0].Revision, StreamExists: true,
				}
			}
		}
		last := tail[i-len(data)+1]
		return eventstore.AppendResult{NextExpectedRevision: last.Revision, Position: last.Position}, true, nil
	}
	return eventstore.AppendResult{}, false, nil
}

// appendOnce makes one attempt at an append.
func (s *Store) appendOnce(ctx context.Context, ref *clientRef, stream string, expected eventstore.ExpectedRevision, data []esdb.EventData) (eventstore.AppendResult, error) {
	var wr *esdb.WriteResult
	err := guard(func() (err error) {
		wr, err = ref.client.AppendToStream(leaderOnly(ctx), stream, esdb.AppendToStreamOptions{
			ExpectedRevision: toClientExpected(expected),
			Deadline:         callDeadline(ctx),
		}, data...)
		return err
	})
	if err != nil {
		return eventstore.AppendResult{}, s.mapWriteError(ctx, ref, stream, expected, err)
	}
	res := eventstore.AppendResult{
		NextExpectedRevision: wr.NextExpectedVersion,
		Position:             eventstore.Position{Commit: wr.CommitPosition, Prepare: wr.PreparePosition},
	}
	if res.Position == (eventstore.Position{}) {
		// A server that reports no position for a recognised retry: find
		// the last event's.
		evs, err := s.readStream(ctx, ref, stream, esdb.Forwards, esdb.Revision(res.NextExpectedRevision), 1)
		if err == nil && len(evs) == 1 {
			res.Position = evs[0].Position
		}
	}
	return res, nil
}

// withRef runs f on the current client, retrying a few times when a
// follower answered NotLeader: the client has moved to the leader by then.
func (s *Store) withRef(ctx context.Context, f func(ref *clientRef) error) error {
	for attempt := 0; ; attempt++ {
		ref, err := s.acquire()
		if err != nil {
			return err
		}
		err = f(ref)
		s.release(ref)
		if err == nil || !isNotLeader(err) || attempt >= notLeaderRetries || ctx.Err() != nil {
			return err
		}
		s.logger.Info("the node is not the leader; retrying on the leader", "err", err)
	}
}

// checkExpected checks expected against the stream's head without writing.
func (s *Store) checkExpected(ctx context.Context, ref *clientRef, stream string, expected eventstore.ExpectedRevision) (eventstore.AppendResult, error) {
	head, err := s.readStream(ctx, ref, stream, esdb.Backwards, esdb.End{}, 1)
	exists := err == nil && len(head) > 0
	if err != nil && !errors.Is(err, eventstore.ErrStreamNotFound) {
		return eventstore.AppendResult{}, err
	}
	var res eventstore.AppendResult
	if exists {
		res = eventstore.AppendResult{NextExpectedRevision: head[0].Revision, Position: head[0].Position}
	} else if err == nil {
		// Every event truncated: the stream exists, and its truncation
		// point is one past its last revision.
		md, merr := s.readMetadata(ctx, ref, stream)
		if merr != nil {
			return eventstore.AppendResult{}, merr
		}
		if tb := md.truncateBefore(); tb > 0 {
			exists = true
			res.NextExpectedRevision = tb - 1
		}
	}
	wrong := &eventstore.WrongExpectedRevisionError{Stream: stream, Expected: expected, Actual: res.NextExpectedRevision, StreamExists: exists}
	if rev, ok := expected.Revision(); ok && (!exists || rev != res.NextExpectedRevision) {
		return eventstore.AppendResult{}, wrong
	}
	if expected.IsNoStream() && exists {
		return eventstore.AppendResult{}, wrong
	}
	return res, nil
}

// ReadStream returns up to limit events of stream from revision from on.
func (s *Store) ReadStream(ctx context.Context, stream string, from uint64, limit int) ([]eventstore.RecordedEvent, error) {
	return s.read(ctx, stream, esdb.Forwards, esdb.Revision(from), limit)
}

// ReadStreamBackward returns up to limit events of stream, newest first.
func (s *Store) ReadStreamBackward(ctx context.Context, stream string, limit int) ([]eventstore.RecordedEvent, error) {
	return s.read(ctx, stream, esdb.Backwards, esdb.End{}, limit)
}

func (s *Store) read(ctx context.Context, stream string, dir esdb.Direction, from esdb.StreamPosition, limit int) ([]eventstore.RecordedEvent, error) {
	if s.isClosed() {
		return nil, fmt.Errorf("esdb: read %q: %w", stream, eventstore.ErrClosed)
	}
	ctx, cancel := s.bind(ctx)
	defer cancel()
	var evs []eventstore.RecordedEvent
	err := s.withRef(ctx, func(ref *clientRef) (err error) {
		if limit <= 0 {
			// A count of 0 would mean no limit to some servers; ask for one
			// event to learn whether the stream exists, and return none.
			_, err = s.readStream(ctx, ref, stream, dir, from, 1)
			evs = []eventstore.RecordedEvent{}
			return err
		}
		evs, err = s.readStream(ctx, ref, stream, dir, from, uint64(limit))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("esdb: read %q: %w", stream, err)
	}
	return evs, nil
}

// readStream reads a stream and maps the client's errors.
func (s *Store) readStream(ctx context.Context, ref *clientRef, stream string, dir esdb.Direction, from esdb.StreamPosition, count uint64) ([]eventstore.RecordedEvent, error) {
	out := []eventstore.RecordedEvent{}
	err := guard(func() error {
		rs, err := ref.client.ReadStream(leaderOnly(ctx), stream, esdb.ReadStreamOptions{Direction: dir, From: from, Deadline: callDeadline(ctx)}, count)
		if err != nil {
			return err
		}
		defer rs.Close()
		for {
			ev, err := rs.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			if ev.Event != nil {
				out = append(out, fromClientEvent(ev.Event))
			}
		}
	})
	if err != nil {
		return nil, s.mapError(ctx, ref, err)
	}
	return out, nil
}

// readAllBackward reads $all backwards, system events included.
func (s *Store) readAllBackward(ctx context.Context, ref *clientRef, from esdb.AllPosition, count uint64) ([]*esdb.RecordedEvent, error) {
	var out []*esdb.RecordedEvent
	err := guard(func() error {
		rs, err := ref.client.ReadAll(leaderOnly(ctx), esdb.ReadAllOptions{Direction: esdb.Backwards, From: from, Deadline: callDeadline(ctx)}, count)
		if err != nil {
			return err
		}
		defer rs.Close()
		for {
			ev, err := rs.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			if e := ev.OriginalEvent(); e != nil {
				out = append(out, e)
			}
		}
	})
	return out, err
}

// Delete tombstones stream: it cannot be written or read again.
func (s *Store) Delete(ctx context.Context, stream string, expected eventstore.ExpectedRevision) error {
	if s.isClosed() {
		return fmt.Errorf("esdb: delete %q: %w", stream, eventstore.ErrClosed)
	}
	ctx, cancel := s.bind(ctx)
	defer cancel()
	err := s.withRef(ctx, func(ref *clientRef) error {
		err := guard(func() error {
			_, err := ref.client.TombstoneStream(leaderOnly(ctx), stream, esdb.TombstoneStreamOptions{
				ExpectedRevision: toClientExpected(expected),
				Deadline:         callDeadline(ctx),
			})
			return err
		})
		if err != nil {
			return s.mapWriteError(ctx, ref, stream, expected, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("esdb: delete %q: %w", stream, err)
	}
	return nil
}

func toClientExpected(e eventstore.ExpectedRevision) esdb.ExpectedRevision {
	if rev, ok := e.Revision(); ok {
		return esdb.Revision(rev)
	}
	if e.IsNoStream() {
		return esdb.NoStream{}
	}
	return esdb.Any{}
}

// unknownPosition is what the server sends for a position it does not
// report (-1 on its side).
const unknownPosition = math.MaxUint64

func fromClientEvent(e *esdb.RecordedEvent) eventstore.RecordedEvent {
	pos := eventstore.Position{Commit: e.Position.Commit, Prepare: e.Position.Prepare}
	if pos.Commit == unknownPosition || pos.Prepare == unknownPosition {
		pos = eventstore.Position{}
	}
	return eventstore.RecordedEvent{
		Stream:   e.StreamID,
		Revision: e.EventNumber,
		Position: pos,
		ID:       eventstore.EventID(e.EventID),
		Type:     e.EventType,
		Data:     e.Data,
		Created:  e.CreatedDate,
	}
}

// mapError turns a client error into the port's errors, keeping the
// client's in the chain.
func (s *Store) mapError(ctx context.Context, ref *clientRef, err error) error {
	if s.isClosed() {
		return fmt.Errorf("%w: %w", eventstore.ErrClosed, err)
	}
	if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
		return fmt.Errorf("%w: %w", ctxErr, err)
	}
	var ce *esdb.Error
	if errors.As(err, &ce) {
		switch ce.Code() {
		case esdb.ErrorCodeStreamDeleted:
			return fmt.Errorf("%w: %w", eventstore.ErrStreamDeleted, err)
		case esdb.ErrorCodeResourceNotFound:
			// A read's stream-not-found reply, not a gRPC NotFound status:
			// that is also how other failures (a follower's NotLeader
			// without the leader's address, a missing resource) arrive.
			if inner := ce.Err(); inner != nil {
				if _, isStatus := status.FromError(inner); !isStatus {
					return fmt.Errorf("%w: %w", eventstore.ErrStreamNotFound, err)
				}
			}
		case esdb.ErrorCodeConnectionClosed:
			s.renew(ref)
		default:
			// The call that saw the client's rediscovery fail: the client
			// has just closed itself for good.
			if strings.Contains(err.Error(), "maximum discovery attempt count reached") {
				s.renew(ref)
			}
		}
	}
	return err
}

// mapWriteError maps an append's or delete's error, turning a conflict into
// a *eventstore.WrongExpectedRevisionError with the stream's actual
// revision.
func (s *Store) mapWriteError(ctx context.Context, ref *clientRef, stream string, expected eventstore.ExpectedRevision, err error) error {
	actual, known, conflict := parseConflict(err)
	if !conflict {
		return s.mapError(ctx, ref, err)
	}
	wrong := &eventstore.WrongExpectedRevisionError{Stream: stream, Expected: expected}
	if known {
		wrong.Actual, wrong.StreamExists = uint64(max(actual, 0)), actual >= 0
		return wrong
	}
	// The message did not say; the head tells, though not atomically.
	head, rerr := s.readStream(ctx, ref, stream, esdb.Backwards, esdb.End{}, 1)
	if rerr == nil && len(head) == 1 {
		wrong.Actual, wrong.StreamExists = head[0].Revision, true
	}
	return wrong
}

// parseConflict recognises a wrong-expected-revision error and the stream's
// actual revision (-1 for no stream) in it. Appends report it in the reply,
// which the client turns into "... but got 'N'"; deletes report it as a
// FailedPrecondition status whose message ends "Actual version: N". The
// client passes on neither in a field.
func parseConflict(err error) (actual int64, known, conflict bool) {
	var ce *esdb.Error
	if errors.As(err, &ce) && ce.Code() == esdb.ErrorCodeWrongExpectedVersion {
		actual, known = parseActual(ce.Error(), "but got '", "'")
		return actual, known, true
	}
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "WrongExpectedVersion") {
		return 0, false, false
	}
	actual, known = parseActual(st.Message(), "Actual version: ", "")
	return actual, known, true
}

// parseActual reads the revision after the last marker in msg, up to end
// (or the end of msg): a number, -1 or "no_stream".
func parseActual(msg, marker, end string) (int64, bool) {
	i := strings.LastIndex(msg, marker)
	if i < 0 {
		return 0, false
	}
	rest := msg[i+len(marker):]
	if end != "" {
		rest, _, _ = strings.Cut(rest, end)
	}
	rest = strings.TrimSpace(rest)
	if rest == "no_stream" {
		return -1, true
	}
	n, err := strconv.ParseInt(rest, 10, 64)
	return n, err == nil
}
