package streams

import (
	"fmt"
	"io"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
)

// A receive of several events (a Pull reply of thousands) is stored as runs
// of them, an EventsReceived record each: a store writes a record, not an
// event, at a time, and per record is what storing a reply cost most. A run
// is bounded so that it stays far below any store's append limit and a
// durable consumer resuming within one (Watch) gets little again.
const (
	RunMaxEvents = 256
	RunMaxBytes  = 64 << 10
)

// IsReceivedType reports whether typ is an inbox record's type: one event
// or a run.
func IsReceivedType(typ string) bool { return typ == TypeEventReceived || typ == TypeEventsReceived }

// EncodeReceivedRuns encodes the inbox records of events received together,
// in order: runs of consecutive events as EventsReceived records (at most
// RunMaxEvents, and RunMaxBytes of binary encoding unless one event alone is
// larger), a run of one as the EventReceived record EncodeReceived makes.
// Each record has a fresh ID; with binary bodies they share one buffer, each
// capped at its end.
func (c *Codec) EncodeReceivedRuns(recs []Received) ([]eventstore.EventData, error) {
	// The events' sizes first, so that a binary buffer is allocated once,
	// at its size; Size also sets the sizes that Marshal then reads.
	eventSizes := make([]int, len(recs))
	sizes := make([]int, len(recs))
	for i, r := range recs {
		if r.TooLargeBytes == nil && r.Event != nil {
			eventSizes[i] = proto.Size(r.Event)
		}
		sizes[i] = receivedSize(r, eventSizes[i])
	}
	bounds := runBounds(sizes)
	ids := make([]byte, len(bounds)*len(eventstore.EventID{}))
	if _, err := io.ReadFull(c.rand, ids); err != nil {
		return nil, fmt.Errorf("event ID: %w", err)
	}
	out := make([]eventstore.EventData, len(bounds))
	for i := range out {
		ids = ids[copy(out[i].ID[:], ids):]
		uuid4(&out[i].ID)
	}
	if c.body != BinaryBodies {
		for i, b := range bounds {
			var err error
			if out[i].Type, out[i].Data, err = c.jsonRun(recs[b.from:b.to]); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	total := 0
	for _, b := range bounds {
		total += b.size
	}
	buf := make([]byte, 0, total)
	for i, b := range bounds {
		at := len(buf)
		var err error
		if b.to-b.from == 1 {
			out[i].Type = TypeEventReceived
			buf, err = appendReceived(buf, recs[b.from], eventSizes[b.from])
		} else {
			// EventsReceived: field 1, each event as a length-delimited
			// EventReceived, which is what proto.Marshal writes.
			out[i].Type = TypeEventsReceived
			for j := b.from; j < b.to && err == nil; j++ {
				buf = protowire.AppendTag(buf, 1, protowire.BytesType)
				buf = protowire.AppendVarint(buf, uint64(sizes[j]))
				buf, err = appendReceived(buf, recs[j], eventSizes[j])
			}
		}
		if err != nil {
			return nil, fmt.Errorf("encode %s: %w", out[i].Type, err)
		}
		// Capped, so that nothing appended to one record's data can reach
		// the next one's.
		out[i].Data = buf[at:len(buf):len(buf)]
	}
	return out, nil
}

// jsonRun encodes one run with JSON bodies: its type and data.
func (c *Codec) jsonRun(recs []Received) (string, []byte, error) {
	events := make([]*eventsv1.EventReceived, len(recs))
	for i, r := range recs {
		events[i] = &eventsv1.EventReceived{}
		if err := c.receivedMessage(events[i], r); err != nil {
			return "", nil, err
		}
	}
	typ, m := TypeEventsReceived, proto.Message(&eventsv1.EventsReceived{Events: events})
	if len(recs) == 1 {
		typ, m = TypeEventReceived, events[0]
	}
	data, err := jsonOut.Marshal(m)
	if err != nil {
		return "", nil, fmt.Errorf("encode %s: %w", typ, err)
	}
	return typ, data, nil
}

type runBound struct {
	from, to int // recs[from:to]
	size     int // its binary encoding's length
}

// runBounds cuts events of the given binary EventReceived sizes into runs.
func runBounds(sizes []int) []runBound {
	var out []runBound
	for from := 0; from < len(sizes); {
		to, size := from+1, sizes[from]
		inRun := 1 + protowire.SizeBytes(sizes[from]) // its size inside a run
		for to < len(sizes) && to-from < RunMaxEvents {
			next := 1 + protowire.SizeBytes(sizes[to])
			if inRun+next > RunMaxBytes {
				break
			}
			inRun += next
			to++
		}
		if to-from > 1 {
			size = inRun
		}
		out = append(out, runBound{from: from, to: to, size: size})
		from = to
	}
	return out
}

// DecodeReceivedRecord reads an inbox record: the one event it holds, or
// its run of them, in order.
func DecodeReceivedRecord(r eventstore.RecordedEvent) ([]Received, error) {
	if r.Type == TypeEventReceived {
		one, err := DecodeReceived(r)
		if err != nil {
			return nil, err
		}
		return []Received{one}, nil
	}
	if r.Type != TypeEventsReceived {
		return nil, fmt.Errorf("%s@%d: inbox record of type %q", r.Stream, r.Revision, r.Type)
	}
	var m eventsv1.EventsReceived
	if err := decode(r, &m); err != nil {
		return nil, err
	}
	if len(m.GetEvents()) == 0 {
		return nil, fmt.Errorf("%s@%d: a run of no received events", r.Stream, r.Revision)
	}
	out := make([]Received, len(m.GetEvents()))
	for i, ev := range m.GetEvents() {
		var err error
		if out[i], err = receivedFrom(r, ev); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// ReceivedOf reads the events of inbox records, in order, runs expanded.
func ReceivedOf(recs []eventstore.RecordedEvent) ([]Received, error) {
	var out []Received
	for _, r := range recs {
		run, err := DecodeReceivedRecord(r)
		if err != nil {
			return nil, err
		}
		out = append(out, run...)
	}
	return out, nil
}
