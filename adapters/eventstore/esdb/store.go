package esdb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
)

// Append writes events to stream if it is at the expected revision.
func (s *Store) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	ctx, ref, done, err := s.begin(ctx)
	if err != nil {
		return eventstore.AppendResult{}, fmt.Errorf("esdb: append to %q: %w", stream, err)
	}
	defer done()
	if len(events) == 0 {
		// The client reports a made-up revision for an empty append, so
		// check the expectation against the stream's head instead.
		res, err := s.checkExpected(ctx, ref, stream, expected)
		if err != nil {
			return eventstore.AppendResult{}, fmt.Errorf("esdb: append to %q: %w", stream, err)
		}
		return res, nil
	}

	data := make([]esdb.EventData, len(events))
	for i, e := range events {
		data[i] = esdb.EventData{
			EventID: uuid.UUID(e.ID),
			// Postbox writes protojson bodies; JSON lets the server's UI and
			// projections read them.
			ContentType: esdb.ContentTypeJson,
			EventType:   e.Type,
			Data:        e.Data,
		}
	}
	var wr *esdb.WriteResult
	err = guard(func() (err error) {
		wr, err = ref.client.AppendToStream(ctx, stream, esdb.AppendToStreamOptions{ExpectedRevision: toClientExpected(expected)}, data...)
		return err
	})
	if err != nil {
		return eventstore.AppendResult{}, fmt.Errorf("esdb: append to %q: %w", stream, s.mapWriteError(ctx, ref, stream, expected, err))
	}
	res := eventstore.AppendResult{
		NextExpectedRevision: wr.NextExpectedVersion,
		Position:             eventstore.Position{Commit: wr.CommitPosition, Prepare: wr.PreparePosition},
	}
	if res.Position == (eventstore.Position{}) {
		// A retry the server recognised as already written comes back
		// without a position; find the last event's.
		evs, err := s.readStream(ctx, ref, stream, esdb.Forwards, esdb.Revision(res.NextExpectedRevision), 1)
		if err == nil && len(evs) == 1 {
			res.Position = evs[0].Position
		}
	}
	return res, nil
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
	ctx, ref, done, err := s.begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("esdb: read %q: %w", stream, err)
	}
	defer done()
	if limit <= 0 {
		// A count of 0 would mean no limit to some servers; ask for one
		// event to learn whether the stream exists, and return none.
		_, err := s.readStream(ctx, ref, stream, dir, from, 1)
		if err != nil {
			return nil, fmt.Errorf("esdb: read %q: %w", stream, err)
		}
		return []eventstore.RecordedEvent{}, nil
	}
	evs, err := s.readStream(ctx, ref, stream, dir, from, uint64(limit))
	if err != nil {
		return nil, fmt.Errorf("esdb: read %q: %w", stream, err)
	}
	return evs, nil
}

// readStream reads a stream and maps the client's errors.
func (s *Store) readStream(ctx context.Context, ref *clientRef, stream string, dir esdb.Direction, from esdb.StreamPosition, count uint64) ([]eventstore.RecordedEvent, error) {
	out := []eventstore.RecordedEvent{}
	err := guard(func() error {
		rs, err := ref.client.ReadStream(ctx, stream, esdb.ReadStreamOptions{Direction: dir, From: from}, count)
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
		rs, err := ref.client.ReadAll(ctx, esdb.ReadAllOptions{Direction: esdb.Backwards, From: from}, count)
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
	ctx, ref, done, err := s.begin(ctx)
	if err != nil {
		return fmt.Errorf("esdb: delete %q: %w", stream, err)
	}
	defer done()
	err = guard(func() error {
		_, err := ref.client.TombstoneStream(ctx, stream, esdb.TombstoneStreamOptions{ExpectedRevision: toClientExpected(expected)})
		return err
	})
	if err != nil {
		return fmt.Errorf("esdb: delete %q: %w", stream, s.mapWriteError(ctx, ref, stream, expected, err))
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
			return fmt.Errorf("%w: %w", eventstore.ErrStreamNotFound, err)
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
