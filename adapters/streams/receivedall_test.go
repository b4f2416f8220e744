package streams

import (
	"bytes"
	"crypto/rand"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// receivedCases are inbox records with every field of EventReceived set
// and unset, and events of a known and an unknown kind.
func receivedCases() []Received {
	unknownKind := &syncv1.Event{}
	unknownKind.ProtoReflect().SetUnknown(protowire.AppendBytes(protowire.AppendTag(nil, 9, protowire.BytesType), []byte{8, 1}))
	added := &syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: 1 << 40, GuildId: 4242}}}
	invited := &syncv1.Event{Kind: &syncv1.Event_UserInvited_{UserInvited: &syncv1.Event_UserInvited{UserId: 3, InviterId: 4, InviteId: "inv"}}}
	seq, zero, size := uint64(1<<63), uint64(0), uint64(9_000_000)
	return []Received{
		{Event: added, Via: eventsv1.EventReceived_VIA_PULL, SenderSeq: &seq, SenderEpoch: 1 << 62, SenderEventID: []byte("0123456789abcdef"), SenderTerm: 5},
		{Event: added, Via: eventsv1.EventReceived_VIA_PULL, SenderSeq: &zero},
		{Event: invited, Via: eventsv1.EventReceived_VIA_PUSH},
		{Event: unknownKind, Via: eventsv1.EventReceived_VIA_PUSH, SenderSeq: &seq},
		{Event: &syncv1.Event{}},
		{},
		{Event: added, Via: eventsv1.EventReceived_VIA_PUSH, SenderSeq: &seq, TooLargeBytes: &size, SenderTerm: 1},
	}
}

// EncodeReceivedRuns writes records that read back as the events given, in
// order, in both bodies: a run of one as EncodeReceived's record, longer
// ones as EventsReceived; with binary bodies, the very bytes of
// proto.Marshal. Every record has a fresh version 4 UUID.
func TestEncodeReceivedRunsReadBackAsTheirEvents(t *testing.T) {
	t.Parallel()
	var recs []Received
	for range 100 {
		recs = append(recs, receivedCases()...)
	}
	for _, body := range []Body{JSONBodies, BinaryBodies} {
		c := NewCodecWithBodies(rand.Reader, body)
		for _, n := range []int{1, 2, len(recs)} {
			got, err := c.EncodeReceivedRuns(recs[:n])
			if err != nil {
				t.Fatal(err)
			}
			ids := map[eventstore.EventID]bool{}
			var back []Received
			at := 0
			for i, d := range got {
				run, err := DecodeReceivedRecord(recorded(d))
				if err != nil {
					t.Fatalf("body %d, record %d: %v", body, i, err)
				}
				if want := map[bool]string{true: TypeEventReceived, false: TypeEventsReceived}[len(run) == 1]; d.Type != want {
					t.Errorf("body %d, record %d of %d events: type %q, want %q", body, i, len(run), d.Type, want)
				}
				if body == BinaryBodies {
					if want := marshalRun(t, c, recs[at:at+len(run)]); !bytes.Equal(d.Data, want) {
						t.Errorf("record %d: %x, want %x", i, d.Data, want)
					}
				} else if len(d.Data) == 0 || d.Data[0] != '{' {
					t.Errorf("record %d with JSON bodies: %q", i, d.Data)
				}
				at += len(run)
				back = append(back, run...)
				if ids[d.ID] || d.ID[6]>>4 != 4 || d.ID[8]>>6 != 2 {
					t.Errorf("body %d, record %d: ID %v is not a fresh version 4 UUID", body, i, d.ID)
				}
				ids[d.ID] = true
			}
			if len(back) != n {
				t.Fatalf("body %d: %d events read back from %d", body, len(back), n)
			}
			for i, r := range recs[:n] {
				one, err := c.EncodeReceived(r)
				if err != nil {
					t.Fatal(err)
				}
				want, _ := DecodeReceived(recorded(one))
				if !sameReceived(back[i], want) {
					t.Errorf("body %d, event %d: decoded %+v, want %+v", body, i, back[i], want)
				}
			}
		}
	}
}

// marshalRun is proto.Marshal of recs' record: EventReceived for one,
// EventsReceived for more.
func marshalRun(t *testing.T, c *Codec, recs []Received) []byte {
	t.Helper()
	run := &eventsv1.EventsReceived{}
	for _, r := range recs {
		m := &eventsv1.EventReceived{}
		if err := c.receivedMessage(m, r); err != nil {
			t.Fatal(err)
		}
		run.Events = append(run.Events, m)
	}
	var msg proto.Message = run
	if len(recs) == 1 {
		msg = run.Events[0]
	}
	b, err := proto.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Runs hold at most RunMaxEvents events and RunMaxBytes bytes; an event
// larger than that is a record of its own.
func TestReceivedRunsAreBounded(t *testing.T) {
	t.Parallel()
	c := NewCodecWithBodies(rand.Reader, BinaryBodies)
	withData := func(n int) Received {
		ev := &syncv1.Event{Kind: &syncv1.Event_UserInvited_{UserInvited: &syncv1.Event_UserInvited{InviteId: string(bytes.Repeat([]byte("i"), n))}}}
		return Received{Event: ev, Via: eventsv1.EventReceived_VIA_PULL}
	}
	lengths := func(recs []Received) []int {
		got, err := c.EncodeReceivedRuns(recs)
		if err != nil {
			t.Fatal(err)
		}
		var out []int
		for _, d := range got {
			run, err := DecodeReceivedRecord(recorded(d))
			if err != nil {
				t.Fatal(err)
			}
			if len(d.Data) > RunMaxBytes && len(run) > 1 {
				t.Errorf("a run of %d events takes %d bytes, over %d", len(run), len(d.Data), RunMaxBytes)
			}
			out = append(out, len(run))
		}
		return out
	}
	small := make([]Received, 3*RunMaxEvents+10)
	for i := range small {
		small[i] = withData(10)
	}
	if got, want := lengths(small), []int{RunMaxEvents, RunMaxEvents, RunMaxEvents, 10}; !slices.Equal(got, want) {
		t.Errorf("small events: runs of %v, want %v", got, want)
	}
	// 20 KiB each: three fit in a run, four do not.
	large := []Received{withData(20 << 10), withData(20 << 10), withData(20 << 10), withData(20 << 10), withData(100 << 10), withData(1)}
	if got, want := lengths(large), []int{3, 1, 1, 1}; !slices.Equal(got, want) {
		t.Errorf("large events: runs of %v, want %v", got, want)
	}
	if got := lengths(nil); len(got) != 0 {
		t.Errorf("no events: runs of %v", got)
	}
}

// A run takes events up to exactly RunMaxBytes, not one byte more.
func TestARunFillsRunMaxBytesExactly(t *testing.T) {
	t.Parallel()
	c := NewCodecWithBodies(rand.Reader, BinaryBodies)
	withID := func(n int) Received {
		return Received{Event: &syncv1.Event{Kind: &syncv1.Event_UserInvited_{UserInvited: &syncv1.Event_UserInvited{InviteId: strings.Repeat("i", n)}}}}
	}
	inRun := func(r Received) int {
		n := receivedSize(r, proto.Size(r.Event))
		return 1 + protowire.SizeBytes(n)
	}
	// Two events whose run is exactly RunMaxBytes.
	first := withID(30_000)
	n := 30_000
	for inRun(first)+inRun(withID(n)) < RunMaxBytes {
		n++
	}
	if inRun(first)+inRun(withID(n)) != RunMaxBytes {
		t.Skipf("no event makes the run exactly %d bytes", RunMaxBytes)
	}
	for _, tc := range []struct {
		second Received
		want   int
	}{{withID(n), 1}, {withID(n + 1), 2}} {
		got, err := c.EncodeReceivedRuns([]Received{first, tc.second})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != tc.want {
			t.Errorf("a run of %d bytes: %d records, want %d", inRun(first)+inRun(tc.second), len(got), tc.want)
		}
	}
}

// An event ID the random source cannot give fails the encoding.
func TestEncodeReceivedRunsFailsWithoutEventIDs(t *testing.T) {
	t.Parallel()
	for _, body := range []Body{JSONBodies, BinaryBodies} {
		c := NewCodecWithBodies(strings.NewReader(""), body)
		if _, err := c.EncodeReceivedRuns(receivedCases()); err == nil {
			t.Errorf("body %d: encoded without event IDs", body)
		}
	}
}

// A run that holds no event is no inbox record.
func TestARunOfNoEventsIsRefused(t *testing.T) {
	t.Parallel()
	for _, data := range [][]byte{nil, []byte("{}")} {
		if _, err := DecodeReceivedRecord(eventstore.RecordedEvent{Stream: "inbox-p", Type: TypeEventsReceived, Data: data}); err == nil {
			t.Errorf("%q: a run of no events was read", data)
		}
	}
	if _, err := DecodeReceivedRecord(eventstore.RecordedEvent{Stream: "inbox-p", Type: TypeEventEnqueued}); err == nil {
		t.Error("an outbox record was read as an inbox record")
	}
}

// Records that do not decode are errors, alone and among others; a run
// whose event bytes do not decode too.
func TestUnreadableInboxRecordsAreErrors(t *testing.T) {
	t.Parallel()
	badEventBytes, err := proto.Marshal(&eventsv1.EventsReceived{Events: []*eventsv1.EventReceived{{EventBytes: []byte{0xff}}, {}}})
	if err != nil {
		t.Fatal(err)
	}
	good, err := NewCodecWithBodies(rand.Reader, BinaryBodies).EncodeReceivedRuns(receivedCases())
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []eventstore.RecordedEvent{
		{Stream: "inbox-p", Type: TypeEventReceived, Data: []byte{0xff}},
		{Stream: "inbox-p", Type: TypeEventsReceived, Data: []byte{0xff}},
		{Stream: "inbox-p", Type: TypeEventsReceived, Data: badEventBytes},
	} {
		if got, err := DecodeReceivedRecord(bad); err == nil {
			t.Errorf("%s %x read as %v", bad.Type, bad.Data, got)
		}
		if got, err := ReceivedOf([]eventstore.RecordedEvent{recorded(good[0]), bad}); err == nil {
			t.Errorf("%s %x among others read as %d events", bad.Type, bad.Data, len(got))
		}
	}
}

func sameReceived(a, b Received) bool {
	eq := func(x, y *uint64) bool { return (x == nil) == (y == nil) && (x == nil || *x == *y) }
	return proto.Equal(a.Event, b.Event) && a.Via == b.Via && eq(a.SenderSeq, b.SenderSeq) && a.SenderEpoch == b.SenderEpoch &&
		bytes.Equal(a.SenderEventID, b.SenderEventID) && a.SenderTerm == b.SenderTerm && eq(a.TooLargeBytes, b.TooLargeBytes)
}

// The records share one buffer: each one's data is capped at its end, so an
// append to one cannot write into the next.
func TestEncodeReceivedRunsKeepsRecordsApart(t *testing.T) {
	t.Parallel()
	c := NewCodecWithBodies(rand.Reader, BinaryBodies)
	recs := make([]Received, 0, 20_000)
	for range 20_000 / len(receivedCases()) {
		recs = append(recs, receivedCases()...)
	}
	got, err := c.EncodeReceivedRuns(recs)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) < 2 {
		t.Fatalf("%d records: nothing to keep apart", len(got))
	}
	want := make([][]byte, len(got))
	for i := range got {
		want[i] = bytes.Clone(got[i].Data)
	}
	for i := range got {
		_ = append(got[i].Data, 0xff)
	}
	for i := range got {
		if !bytes.Equal(got[i].Data, want[i]) {
			t.Fatalf("record %d changed by an append to another: %x, was %x", i, got[i].Data, want[i])
		}
	}
}

// appendReceived writes EventReceived's fields by number: a field added to
// the message must be added there too, or binary records would drop it.
func TestAppendReceivedKnowsEveryField(t *testing.T) {
	t.Parallel()
	fields := (&eventsv1.EventReceived{}).ProtoReflect().Descriptor().Fields()
	known := map[protoreflect.FieldNumber]protoreflect.Name{
		1: "event", 2: "via", 3: "sender_seq", 4: "event_bytes", 5: "sender_epoch", 6: "sender_event_id", 7: "too_large_bytes", 8: "sender_term",
	}
	if fields.Len() != len(known) {
		t.Fatalf("EventReceived has %d fields, appendReceived knows %d: update it", fields.Len(), len(known))
	}
	for i := range fields.Len() {
		f := fields.Get(i)
		if known[f.Number()] != f.Name() {
			t.Errorf("field %d is %s, appendReceived writes it as %s", f.Number(), f.Name(), known[f.Number()])
		}
	}
}

// Any record, encoded field by field, is what proto.Marshal makes of it,
// in a buffer of exactly its size.
func FuzzAppendReceivedIsProtoMarshal(f *testing.F) {
	f.Add([]byte{8, 1}, uint8(2), true, uint64(7), uint64(1), []byte("id"), false, uint64(0), uint64(3))
	f.Add([]byte{}, uint8(0), false, uint64(0), uint64(0), []byte{}, true, uint64(1<<40), uint64(0))
	f.Fuzz(func(t *testing.T, event []byte, via uint8, hasSeq bool, seq, epoch uint64, id []byte, tooLarge bool, size, term uint64) {
		ev := &syncv1.Event{}
		if err := proto.Unmarshal(event, ev); err != nil {
			t.Skip()
		}
		r := Received{Event: ev, Via: eventsv1.EventReceived_Via(via % 3), SenderEpoch: epoch, SenderEventID: id, SenderTerm: term}
		if hasSeq {
			r.SenderSeq = &seq
		}
		if tooLarge {
			r.TooLargeBytes = &size
		}
		c := NewCodecWithBodies(rand.Reader, BinaryBodies)
		m := &eventsv1.EventReceived{}
		if err := c.receivedMessage(m, r); err != nil {
			t.Fatal(err)
		}
		want, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.EncodeReceivedRuns([]Received{r})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[0].Data, want) {
			t.Fatalf("%x, want %x", got[0].Data, want)
		}
		if len(want) > RunMaxBytes/2-16 {
			return // two of it are no run
		}
		// In a run, each event is that record, length-delimited.
		two, err := c.EncodeReceivedRuns([]Received{r, r})
		if err != nil {
			t.Fatal(err)
		}
		wantRun, err := proto.Marshal(&eventsv1.EventsReceived{Events: []*eventsv1.EventReceived{m, m}})
		if err != nil {
			t.Fatal(err)
		}
		if len(two) != 1 || !bytes.Equal(two[0].Data, wantRun) {
			t.Fatalf("a run of two: %d records, %x, want %x", len(two), two[0].Data, wantRun)
		}
		// The buffer is sized by receivedSize, neither grown nor larger
		// than needed.
		eventSize := 0
		if !tooLarge {
			eventSize = proto.Size(ev)
		}
		if n := receivedSize(r, eventSize); n != len(want) {
			t.Fatalf("receivedSize %d, want %d", n, len(want))
		}
	})
}
