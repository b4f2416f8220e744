package fakestreams

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/serverfeatures"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

type featuresService struct {
	serverfeatures.UnimplementedServerFeaturesServer
	version string
}

func (f *featuresService) GetSupportedMethods(context.Context, *shared.Empty) (*serverfeatures.SupportedMethods, error) {
	const svc = "event_store.client.streams.streams"
	methods := []*serverfeatures.SupportedMethod{
		{ServiceName: svc, MethodName: "read"},
		{ServiceName: svc, MethodName: "append"},
		{ServiceName: svc, MethodName: "delete"},
		{ServiceName: svc, MethodName: "tombstone"},
	}
	return &serverfeatures.SupportedMethods{Methods: methods, EventStoreServerVersion: f.version}, nil
}

type streamsService struct {
	streams.UnimplementedStreamsServer
	log           *eventLog
	opts          Options
	profile       Profile
	maxAppendSize int
	maxEventSize  int
	hooks         *hooks
	addr          string
}

// streamDeleted is the server's error for a deleted stream: the client
// recognises it only by these trailers (and indexes "stream-name" without
// checking, so it must be there).
func streamDeleted(ctx context.Context, stream string) error {
	_ = grpc.SetTrailer(ctx, metadata.Pairs("exception", "stream-deleted", "stream-name", stream))
	return status.Errorf(codes.FailedPrecondition, "Event stream '%s' is deleted.", stream)
}

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

func toExpectation(rev any) (expectation, error) {
	switch r := rev.(type) {
	case *streams.AppendReq_Options_Revision:
		return expectation{kind: expectRevision, revision: r.Revision}, nil
	case *streams.DeleteReq_Options_Revision:
		return expectation{kind: expectRevision, revision: r.Revision}, nil
	case *streams.TombstoneReq_Options_Revision:
		return expectation{kind: expectRevision, revision: r.Revision}, nil
	case *streams.AppendReq_Options_NoStream, *streams.DeleteReq_Options_NoStream, *streams.TombstoneReq_Options_NoStream:
		return expectation{kind: expectNoStream}, nil
	case *streams.AppendReq_Options_StreamExists, *streams.DeleteReq_Options_StreamExists, *streams.TombstoneReq_Options_StreamExists:
		return expectation{kind: expectExists}, nil
	case *streams.AppendReq_Options_Any, *streams.DeleteReq_Options_Any, *streams.TombstoneReq_Options_Any:
		return expectation{kind: expectAny}, nil
	default:
		return expectation{}, invalid("no expected stream revision")
	}
}

func uuidFromProto(id *shared.UUID) ([16]byte, error) {
	var out [16]byte
	switch v := id.GetValue().(type) {
	case *shared.UUID_Structured_:
		binary.BigEndian.PutUint64(out[:8], uint64(v.Structured.GetMostSignificantBits()))
		binary.BigEndian.PutUint64(out[8:], uint64(v.Structured.GetLeastSignificantBits()))
		return out, nil
	case *shared.UUID_String_:
		u, err := uuid.Parse(v.String_)
		if err != nil {
			return out, invalid("event id %q: %v", v.String_, err)
		}
		return u, nil
	default:
		return out, invalid("event without id")
	}
}

func (s *streamsService) Append(srv streams.Streams_AppendServer) error {
	if err := s.hooks.unavailable(); err != nil {
		return err
	}
	s.hooks.sawCall("append", srv.Context())
	first, err := srv.Recv()
	if err != nil {
		return err
	}
	opts := first.GetOptions()
	if opts == nil {
		return invalid("first append message must carry options")
	}
	stream := string(opts.GetStreamIdentifier().GetStreamName())
	if stream == "" {
		return invalid("empty stream name")
	}
	exp, err := toExpectation(opts.GetExpectedStreamRevision())
	if err != nil {
		return err
	}
	var events []proposed
	size := 0
	for {
		req, err := srv.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		msg := req.GetProposedMessage()
		if msg == nil {
			return invalid("append message after options must be a proposed message")
		}
		id, err := uuidFromProto(msg.GetId())
		if err != nil {
			return err
		}
		// The server refuses events without these two, like this.
		eventType, ok := msg.GetMetadata()["type"]
		if !ok {
			return invalid("Required Metadata Property 'type' is missing")
		}
		contentType, ok := msg.GetMetadata()["content-type"]
		if !ok {
			return invalid("Required Metadata Property 'content-type' is missing")
		}
		e := proposed{
			id: id, eventType: eventType, contentType: contentType,
			custom: msg.GetCustomMetadata(), data: msg.GetData(),
		}
		// The limits are checked while the request is read, and the call
		// ends there (Services/Transport/Grpc/Streams.Append.cs,
		// RpcExceptions.cs): a client still sending sees its stream cut
		// (the v4 client reports EOF with ErrorCode Unknown), one done
		// sending sees this status.
		es := s.profile.eventSize(e)
		if s.profile.FullSizeCount && es > s.maxEventSize {
			_ = grpc.SetTrailer(srv.Context(), metadata.Pairs("exception", "maximum-append-event-size-exceeded"))
			return invalid("Event with Id: %s, Size: %d, exceeds Maximum Append Event Size of %d.", uuid.UUID(id), es, s.maxEventSize)
		}
		size += es
		if size > s.maxAppendSize {
			_ = grpc.SetTrailer(srv.Context(), metadata.Pairs(
				"exception", "maximum-append-size-exceeded",
				"maximum-append-size", fmt.Sprint(s.maxAppendSize)))
			return invalid("Maximum Append Size of %d Exceeded.", s.maxAppendSize)
		}
		events = append(events, e)
	}
	// A follower answers NotLeader when the write reaches its queue, after
	// the whole request was read (Streams.Append.cs reads every proposed
	// message first): answering earlier would cut a client still sending,
	// which then sees EOF instead of the redirect.
	if err := s.hooks.notLeader(srv.Context(), s.addr); err != nil {
		return err
	}

	res, err := s.log.append(stream, exp, events)
	var wrong errWrongExpected
	switch {
	case errors.As(err, &wrong):
		return srv.SendAndClose(&streams.AppendResp{Result: &streams.AppendResp_WrongExpectedVersion_{
			WrongExpectedVersion: wrongExpectedVersion(exp, wrong.current),
		}})
	case errors.As(err, new(errDeleted)):
		return streamDeleted(srv.Context(), stream)
	case err != nil:
		return status.Error(codes.Internal, err.Error())
	}
	if s.hooks.takeTimeout() {
		// The write landed, but the answer is the server's commit timeout
		// (RpcExceptions.cs, Timeout): the client cannot tell.
		return status.Error(codes.Aborted, "Operation timed out")
	}
	success := &streams.AppendResp_Success{}
	if res.noStream {
		success.CurrentRevisionOption = &streams.AppendResp_Success_NoStream{NoStream: &shared.Empty{}}
	} else {
		success.CurrentRevisionOption = &streams.AppendResp_Success_CurrentRevision{CurrentRevision: res.current}
	}
	if res.hasPosition {
		success.PositionOption = &streams.AppendResp_Success_Position{Position: &streams.AppendResp_Position{
			CommitPosition: res.commit, PreparePosition: res.prepare,
		}}
	} else {
		success.PositionOption = &streams.AppendResp_Success_NoPosition{NoPosition: &shared.Empty{}}
	}
	return srv.SendAndClose(&streams.AppendResp{Result: &streams.AppendResp_Success_{Success: success}})
}

// wrongExpectedVersion fills both the current and the pre-20.6 fields, as
// the server does, so that clients of either age read it.
func wrongExpectedVersion(exp expectation, current int64) *streams.AppendResp_WrongExpectedVersion {
	w := &streams.AppendResp_WrongExpectedVersion{}
	if current < 0 {
		w.CurrentRevisionOption = &streams.AppendResp_WrongExpectedVersion_CurrentNoStream{CurrentNoStream: &shared.Empty{}}
		w.CurrentRevisionOption_20_6_0 = &streams.AppendResp_WrongExpectedVersion_NoStream_20_6_0{NoStream_20_6_0: &shared.Empty{}}
	} else {
		w.CurrentRevisionOption = &streams.AppendResp_WrongExpectedVersion_CurrentRevision{CurrentRevision: uint64(current)}
		w.CurrentRevisionOption_20_6_0 = &streams.AppendResp_WrongExpectedVersion_CurrentRevision_20_6_0{CurrentRevision_20_6_0: uint64(current)}
	}
	switch exp.kind {
	case expectAny:
		w.ExpectedRevisionOption = &streams.AppendResp_WrongExpectedVersion_ExpectedAny{ExpectedAny: &shared.Empty{}}
		w.ExpectedRevisionOption_20_6_0 = &streams.AppendResp_WrongExpectedVersion_Any_20_6_0{Any_20_6_0: &shared.Empty{}}
	case expectExists:
		w.ExpectedRevisionOption = &streams.AppendResp_WrongExpectedVersion_ExpectedStreamExists{ExpectedStreamExists: &shared.Empty{}}
		w.ExpectedRevisionOption_20_6_0 = &streams.AppendResp_WrongExpectedVersion_StreamExists_20_6_0{StreamExists_20_6_0: &shared.Empty{}}
	case expectNoStream:
		w.ExpectedRevisionOption = &streams.AppendResp_WrongExpectedVersion_ExpectedNoStream{ExpectedNoStream: &shared.Empty{}}
	default:
		w.ExpectedRevisionOption = &streams.AppendResp_WrongExpectedVersion_ExpectedRevision{ExpectedRevision: exp.revision}
		w.ExpectedRevisionOption_20_6_0 = &streams.AppendResp_WrongExpectedVersion_ExpectedRevision_20_6_0{ExpectedRevision_20_6_0: exp.revision}
	}
	return w
}

func (s *streamsService) Delete(ctx context.Context, req *streams.DeleteReq) (*streams.DeleteResp, error) {
	commit, prepare, err := s.remove(ctx, "Delete", req.GetOptions().GetStreamIdentifier(), req.GetOptions().GetExpectedStreamRevision(), false)
	if err != nil {
		return nil, err
	}
	return &streams.DeleteResp{PositionOption: &streams.DeleteResp_Position_{Position: &streams.DeleteResp_Position{
		CommitPosition: commit, PreparePosition: prepare,
	}}}, nil
}

func (s *streamsService) Tombstone(ctx context.Context, req *streams.TombstoneReq) (*streams.TombstoneResp, error) {
	commit, prepare, err := s.remove(ctx, "Delete", req.GetOptions().GetStreamIdentifier(), req.GetOptions().GetExpectedStreamRevision(), true)
	if err != nil {
		return nil, err
	}
	return &streams.TombstoneResp{PositionOption: &streams.TombstoneResp_Position_{Position: &streams.TombstoneResp_Position{
		CommitPosition: commit, PreparePosition: prepare,
	}}}, nil
}

func (s *streamsService) remove(ctx context.Context, op string, id *shared.StreamIdentifier, rev any, hard bool) (uint64, uint64, error) {
	stream := string(id.GetStreamName())
	if stream == "" {
		return 0, 0, invalid("empty stream name")
	}
	exp, err := toExpectation(rev)
	if err != nil {
		return 0, 0, err
	}
	commit, prepare, err := s.log.remove(stream, exp, hard)
	var wrong errWrongExpected
	switch {
	case errors.As(err, &wrong):
		// Unlike appends, deletes report a conflict as an error status with
		// trailers; the client passes on only the status message.
		_ = grpc.SetTrailer(ctx, metadata.Pairs(
			"exception", "wrong-expected-version",
			"stream-name", stream,
			"expected-version", fmt.Sprint(exp.serverNumber()),
			"actual-version", fmt.Sprint(wrong.current),
		))
		return 0, 0, status.Errorf(codes.FailedPrecondition,
			"%s failed due to WrongExpectedVersion. Stream: %s, Expected version: %d, Actual version: %d",
			op, stream, exp.serverNumber(), wrong.current)
	case errors.As(err, new(errDeleted)):
		return 0, 0, streamDeleted(ctx, stream)
	case err != nil:
		return 0, 0, status.Error(codes.Internal, err.Error())
	}
	return commit, prepare, nil
}

func (s *streamsService) Read(req *streams.ReadReq, srv streams.Streams_ReadServer) error {
	opts := req.GetOptions()
	if opts == nil {
		return invalid("read without options")
	}
	stringIDs := opts.GetUuidOption().GetString_() != nil
	_, subscribe := opts.GetCountOption().(*streams.ReadReq_Options_Subscription)
	if err := s.hooks.unavailable(); err != nil {
		return err
	}
	if subscribe {
		s.hooks.sawCall("subscribe", srv.Context())
	} else {
		s.hooks.sawCall("read", srv.Context())
		if err := s.hooks.notLeader(srv.Context(), s.addr); err != nil {
			return err
		}
	}
	backwards := opts.GetReadDirection() == streams.ReadReq_Options_Backwards
	match, err := toMatcher(opts.GetFilter())
	if err != nil {
		return err
	}

	switch so := opts.GetStreamOption().(type) {
	case *streams.ReadReq_Options_Stream:
		stream := string(so.Stream.GetStreamIdentifier().GetStreamName())
		if stream == "" {
			return invalid("empty stream name")
		}
		if subscribe {
			return s.subscribeStream(srv, stream, so.Stream, stringIDs)
		}
		return s.readStream(srv, stream, so.Stream, backwards, opts.GetCount(), stringIDs)
	case *streams.ReadReq_Options_All:
		from := allPosition{}
		switch p := so.All.GetAllOption().(type) {
		case *streams.ReadReq_Options_AllOptions_Start:
			from.start = true
		case *streams.ReadReq_Options_AllOptions_End:
			from.end = true
		case *streams.ReadReq_Options_AllOptions_Position:
			from.commit, from.prepare = p.Position.GetCommitPosition(), p.Position.GetPreparePosition()
		default:
			return invalid("read of $all without a start")
		}
		if subscribe {
			return s.subscribeAll(srv, from, match, opts.GetFilter(), stringIDs)
		}
		for _, r := range s.log.readAll(from, backwards, opts.GetCount(), match) {
			if err := srv.Send(eventResp(r, stringIDs)); err != nil {
				return err
			}
		}
		return nil
	default:
		return invalid("read without a stream or $all")
	}
}

func (s *streamsService) readStream(srv streams.Streams_ReadServer, stream string, so *streams.ReadReq_Options_StreamOptions, backwards bool, count uint64, stringIDs bool) error {
	var from uint64
	var fromEnd bool
	switch r := so.GetRevisionOption().(type) {
	case *streams.ReadReq_Options_StreamOptions_Revision:
		from = r.Revision
	case *streams.ReadReq_Options_StreamOptions_Start:
	case *streams.ReadReq_Options_StreamOptions_End:
		fromEnd = true
	default:
		return invalid("read of %q without a start", stream)
	}
	records, found, err := s.log.readStream(stream, backwards, from, fromEnd, count)
	if err != nil {
		return streamDeleted(srv.Context(), stream)
	}
	if !found {
		return srv.Send(&streams.ReadResp{Content: &streams.ReadResp_StreamNotFound_{StreamNotFound: &streams.ReadResp_StreamNotFound{
			StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte(stream)},
		}}})
	}
	for _, r := range records {
		if err := srv.Send(eventResp(r, stringIDs)); err != nil {
			return err
		}
	}
	if s.opts.UnexpectedReadReplies {
		var last uint64
		if len(records) > 0 {
			last = records[len(records)-1].revision
		}
		return srv.Send(&streams.ReadResp{Content: &streams.ReadResp_LastStreamPosition{LastStreamPosition: last}})
	}
	return nil
}

func (s *streamsService) subscribeStream(srv streams.Streams_ReadServer, stream string, so *streams.ReadReq_Options_StreamOptions, stringIDs bool) error {
	var start func(all []*record) int
	switch r := so.GetRevisionOption().(type) {
	case *streams.ReadReq_Options_StreamOptions_Start:
		start = func([]*record) int { return 0 }
	case *streams.ReadReq_Options_StreamOptions_End:
		start = func(all []*record) int { return len(all) }
	case *streams.ReadReq_Options_StreamOptions_Revision:
		// A subscription's start revision is exclusive.
		start = func(all []*record) int { return streamStartAfter(all, stream, r.Revision) }
	default:
		return invalid("subscription to %q without a start", stream)
	}
	// The catch-up of a stream subscription reads the stream, so it skips
	// truncated events; $all keeps them (AllReader.cs looks at no metadata).
	match := func(r *record) bool { return r.stream == stream && r.revision >= s.log.streamTruncateBefore(stream) }
	return s.serveSubscription(srv, start, match, 0, stringIDs, func(r *record) error {
		if r.revision == deletedRevision {
			return streamDeleted(srv.Context(), stream)
		}
		return nil
	})
}

func (s *streamsService) subscribeAll(srv streams.Streams_ReadServer, from allPosition, match func(*record) bool, filter *streams.ReadReq_Options_FilterOptions, stringIDs bool) error {
	var start func(all []*record) int
	switch {
	case from.start:
		start = func([]*record) int { return 0 }
	case from.end:
		start = func(all []*record) int { return len(all) }
	case s.profile.ExclusiveAllStart:
		// From 24.2: a position that is not a record boundary is refused,
		// and the start is truly exclusive
		// (Services/Storage/StorageReaderWorker.AllFiltered.cs).
		if !s.log.isBoundary(from.commit, from.prepare) {
			return invalid("Trying to read from an invalid position.")
		}
		start = func(all []*record) int {
			return sort.Search(len(all), func(i int) bool { return all[i].after(from.commit, from.prepare) })
		}
	default:
		// Up to 23.10: read one record at or after the position and start
		// after it, which is exclusive when the position is an event's own
		// and skips an event when it is not
		// (v23.10.0: Services/Transport/Grpc/Enumerators.AllSubscriptionFiltered.cs).
		start = func(all []*record) int { return min(firstAtOrAfter(all, from.commit, from.prepare)+1, len(all)) }
	}
	interval := 0
	if filter != nil {
		window := uint32(32)
		if m, ok := filter.GetWindow().(*streams.ReadReq_Options_FilterOptions_Max); ok && m.Max > 0 {
			window = m.Max
		}
		interval = int(window * max(filter.GetCheckpointIntervalMultiplier(), 1))
	}
	return s.serveSubscription(srv, start, match, interval, stringIDs, nil)
}

// serveSubscription confirms the subscription, sends the history, a
// caught-up message, then live records until the client goes, the test
// drops it or check returns an error. With checkpointEvery > 0 it sends a
// checkpoint after that many considered records.
func (s *streamsService) serveSubscription(srv streams.Streams_ReadServer, start func([]*record) int, match func(*record) bool, checkpointEvery int, stringIDs bool, check func(*record) error) error {
	next, caughtUpAt, drop := s.log.subscribe(start)
	defer s.log.unsubscribe()
	if err := srv.Send(&streams.ReadResp{Content: &streams.ReadResp_Confirmation{Confirmation: &streams.ReadResp_SubscriptionConfirmation{
		SubscriptionId: uuid.NewString(),
	}}}); err != nil {
		return err
	}
	caughtUp := false
	considered := 0
	ctx := srv.Context()
	for {
		records, changed := s.log.since(next)
		for _, r := range records {
			next++
			considered++
			if match(r) {
				if check != nil {
					if err := check(r); err != nil {
						return err
					}
				}
				if err := srv.Send(eventResp(r, stringIDs)); err != nil {
					return err
				}
			}
			if checkpointEvery > 0 && considered%checkpointEvery == 0 {
				if err := srv.Send(&streams.ReadResp{Content: &streams.ReadResp_Checkpoint_{Checkpoint: &streams.ReadResp_Checkpoint{
					CommitPosition: r.commit, PreparePosition: r.prepare,
				}}}); err != nil {
					return err
				}
			}
			if !caughtUp && next >= caughtUpAt {
				break
			}
		}
		if !caughtUp && next >= caughtUpAt {
			caughtUp = true
			if s.profile.CaughtUp {
				if err := srv.Send(&streams.ReadResp{Content: &streams.ReadResp_CaughtUp_{CaughtUp: &streams.ReadResp_CaughtUp{}}}); err != nil {
					return err
				}
			}
			continue
		}
		if len(records) > 0 {
			continue
		}
		select {
		case <-changed:
		case <-drop:
			return status.Error(codes.Unavailable, "subscription cut by the test double")
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}

// toMatcher turns a read's filter into a predicate over records.
func toMatcher(f *streams.ReadReq_Options_FilterOptions) (func(*record) bool, error) {
	if f == nil {
		return func(*record) bool { return true }, nil
	}
	var expr *streams.ReadReq_Options_FilterOptions_Expression
	var field func(*record) string
	switch v := f.GetFilter().(type) {
	case *streams.ReadReq_Options_FilterOptions_StreamIdentifier:
		expr, field = v.StreamIdentifier, func(r *record) string { return r.stream }
	case *streams.ReadReq_Options_FilterOptions_EventType:
		expr, field = v.EventType, func(r *record) string { return r.eventType() }
	default:
		return nil, invalid("filter on neither stream nor event type")
	}
	if re := expr.GetRegex(); re != "" {
		compiled, err := regexp.Compile(re)
		if err != nil {
			return nil, invalid("filter regex %q: %v", re, err)
		}
		return func(r *record) bool { return compiled.MatchString(field(r)) }, nil
	}
	prefixes := expr.GetPrefix()
	if len(prefixes) == 0 {
		return nil, invalid("filter with neither prefixes nor regex")
	}
	return func(r *record) bool {
		for _, p := range prefixes {
			if strings.HasPrefix(field(r), p) {
				return true
			}
		}
		return false
	}, nil
}

func eventResp(r *record, stringIDs bool) *streams.ReadResp {
	id := &shared.UUID{}
	if stringIDs {
		id.Value = &shared.UUID_String_{String_: uuid.UUID(r.id).String()}
	} else {
		id.Value = &shared.UUID_Structured_{Structured: &shared.UUID_Structured{
			MostSignificantBits:  int64(binary.BigEndian.Uint64(r.id[:8])),
			LeastSignificantBits: int64(binary.BigEndian.Uint64(r.id[8:])),
		}}
	}
	md := make(map[string]string, len(r.metadata))
	for k, v := range r.metadata {
		md[k] = v
	}
	return &streams.ReadResp{Content: &streams.ReadResp_Event{Event: &streams.ReadResp_ReadEvent{
		Event: &streams.ReadResp_ReadEvent_RecordedEvent{
			Id:               id,
			StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte(r.stream)},
			StreamRevision:   r.revision,
			CommitPosition:   r.commit,
			PreparePosition:  r.prepare,
			Metadata:         md,
			CustomMetadata:   r.custom,
			Data:             r.data,
		},
		Position: &streams.ReadResp_ReadEvent_CommitPosition{CommitPosition: r.commit},
	}}}
}
