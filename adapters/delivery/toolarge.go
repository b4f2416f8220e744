package delivery

import (
	"context"
	"errors"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
)

// TooLargeObserver is told of received events too large for the event
// store; an Observer may implement it.
type TooLargeObserver interface {
	ReceivedTooLarge(peer domain.ServerID, n int)
}

// storeTooLargeAsMarkers handles an inbox append of data that failed with
// err, and returns how many records it stored. If the store refused records
// as too large for any append (EventStoreDB's MaxAppendSize), they would be
// refused on every retry and hold the sender up forever. So a run is stored
// as one record per event instead, and an event is stored in its compact
// form (wire bytes only) if that fits the store's budget, and otherwise
// replaced by a small marker recording its sender sequence number and size;
// the append is made again after each step, and each loss is logged at
// error level and counted. Any other err is returned as is.
func (e *Engine) storeTooLargeAsMarkers(ctx context.Context, p *peer, data []eventstore.EventData, err error) (int, error) {
	var lost []tooLargeLoss
	compacted := map[eventstore.EventID]bool{}
	// Each round takes every refused record one step: a run apart, an
	// event to its compact form where it looks as if it fits (a store that
	// counts otherwise refuses it again), a compact event to a marker.
	for round := 0; round < 3; round++ {
		var tooLarge *eventstore.EventTooLargeError
		if !errors.As(err, &tooLarge) {
			return 0, err
		}
		next := make([]eventstore.EventData, 0, len(data))
		for _, d := range data {
			if !slices.Contains(tooLarge.IDs, d.ID) {
				next = append(next, d)
				continue
			}
			if d.Type == streams.TypeEventsReceived {
				apart, rerr := e.runApart(p, d)
				if rerr != nil {
					return 0, errors.Join(err, rerr)
				}
				next = append(next, apart...)
				continue
			}
			replaced, loss, rerr := e.shrinkReceived(p, d, tooLarge.Limit, !compacted[d.ID])
			if rerr != nil {
				return 0, errors.Join(err, rerr)
			}
			compacted[d.ID] = true
			next = append(next, replaced)
			if loss != nil {
				lost = append(lost, *loss)
			}
		}
		data = next
		_, err = e.store.Append(ctx, streams.Inbox(p.id), expectAfter(p.in.Count), data...)
		if err == nil {
			e.reportTooLarge(p, lost)
			return len(data), nil
		}
	}
	return 0, err
}

// runApart returns the records of the events of d, a run, one each.
func (e *Engine) runApart(p *peer, d eventstore.EventData) ([]eventstore.EventData, error) {
	run, err := streams.DecodeReceivedRecord(eventstore.RecordedEvent{Stream: streams.Inbox(p.id), Type: d.Type, Data: d.Data})
	if err != nil {
		return nil, err
	}
	out := make([]eventstore.EventData, len(run))
	for i, r := range run {
		if out[i], err = e.codec.EncodeReceived(r); err != nil {
			return nil, err
		}
	}
	return out, nil
}

type tooLargeLoss struct {
	seq   *uint64
	bytes uint64
	limit int
}

// shrinkReceived returns what to store instead of d, an inbox record too
// large for the store's budget limit: its compact form if allowed and it
// seems to fit (counted as the esdb adapter counts: data and twice the
// type), else a marker (and the loss). The replacement keeps d's event ID,
// so a retry of the append is recognised.
func (e *Engine) shrinkReceived(p *peer, d eventstore.EventData, limit int, compact bool) (eventstore.EventData, *tooLargeLoss, error) {
	rec, err := streams.DecodeReceived(eventstore.RecordedEvent{Stream: streams.Inbox(p.id), Type: d.Type, Data: d.Data})
	if err != nil {
		return d, nil, err
	}
	if rec.TooLargeBytes != nil {
		return d, nil, errors.New("a marker of a received event is itself too large for the store")
	}
	if compact {
		c, err := e.codec.EncodeReceivedAsBytes(rec)
		if err != nil {
			return d, nil, err
		}
		if len(c.Data)+2*len(c.Type) <= limit {
			c.ID = d.ID
			return c, nil, nil
		}
	}
	size := uint64(proto.Size(rec.Event))
	// The marker keeps where the sender's sequence stands (number, epoch,
	// outbox ID), which continuity compares with the sender's account.
	marker, err := e.codec.EncodeReceived(streams.Received{Via: rec.Via, SenderSeq: rec.SenderSeq, TooLargeBytes: &size,
		SenderEpoch: rec.SenderEpoch, SenderEventID: rec.SenderEventID, SenderTerm: rec.SenderTerm})
	if err != nil {
		return d, nil, err
	}
	marker.ID = d.ID
	return marker, &tooLargeLoss{seq: rec.SenderSeq, bytes: size, limit: limit}, nil
}

// reportTooLarge logs and counts received events stored only as markers.
func (e *Engine) reportTooLarge(p *peer, lost []tooLargeLoss) {
	if len(lost) == 0 {
		return
	}
	server, _ := e.registry.ServerID(p.id)
	for _, l := range lost {
		args := []any{"peer", server.String(), "bytes", l.bytes, "store_budget", l.limit}
		if l.seq != nil {
			args = append(args, "sender_seq", *l.seq)
		}
		e.logger.Error("a received event is too large for the event store: only a marker of it is stored, the event is lost", args...)
	}
	if o, ok := e.cfg.Observer.(TooLargeObserver); ok {
		o.ReceivedTooLarge(server, len(lost))
	}
}
