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

// storeTooLargeAsMarkers handles an inbox append that failed with err. If
// the store refused events as too large for any append (EventStoreDB's
// MaxAppendSize), they would be refused on every retry and hold the sender
// up forever; so each of them is replaced by a small marker recording its
// sender sequence number and size, the append is made again, and the loss
// is logged at error level and counted. Any other err is returned as is.
func (e *Engine) storeTooLargeAsMarkers(ctx context.Context, p *peer, data []eventstore.EventData, err error) error {
	var tooLarge *eventstore.EventTooLargeError
	if !errors.As(err, &tooLarge) {
		return err
	}
	data = slices.Clone(data)
	type lost struct {
		seq   *uint64
		bytes uint64
	}
	var markers []lost
	for i, d := range data {
		if !slices.Contains(tooLarge.IDs, d.ID) {
			continue
		}
		rec, derr := streams.DecodeReceived(eventstore.RecordedEvent{Stream: streams.Inbox(p.id), Type: d.Type, Data: d.Data})
		if derr != nil {
			return errors.Join(err, derr)
		}
		size := uint64(max(proto.Size(rec.Event), len(d.Data)))
		marker, merr := e.codec.EncodeReceived(streams.Received{Via: rec.Via, SenderSeq: rec.SenderSeq, TooLargeBytes: &size})
		if merr != nil {
			return errors.Join(err, merr)
		}
		// The event's own ID, so a retry of this append is recognised.
		marker.ID = d.ID
		data[i] = marker
		markers = append(markers, lost{rec.SenderSeq, size})
	}
	if len(markers) == 0 {
		return err
	}
	if _, err := e.store.Append(ctx, streams.Inbox(p.id), expectAfter(p.in.Count), data...); err != nil {
		return err
	}
	server, _ := e.registry.ServerID(p.id)
	for _, m := range markers {
		args := []any{"peer", server.String(), "bytes", m.bytes, "store_limit", tooLarge.Limit}
		if m.seq != nil {
			args = append(args, "sender_seq", *m.seq)
		}
		e.logger.Error("a received event is too large for the event store: only a marker of it is stored, the event is lost", args...)
	}
	if o, ok := e.cfg.Observer.(TooLargeObserver); ok {
		o.ReceivedTooLarge(server, len(markers))
	}
	return nil
}
