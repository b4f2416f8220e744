package streams

import (
	"bytes"
	"crypto/rand"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// Every way an inbox record is written keeps where the sender's sequence
// stands (number, epoch and outbox ID): the receiver's account to a
// continuity-checking sender is read from the newest such record.
func TestInboxRecordsKeepTheSendersEpochAndOutboxID(t *testing.T) {
	t.Parallel()
	seq, size := uint64(41), uint64(9)
	id := []byte("0123456789abcdef")
	ev := &syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: 1, GuildId: 2}}}
	want := Received{Event: ev, Via: eventsv1.EventReceived_VIA_PUSH, SenderSeq: &seq, SenderEpoch: 77, SenderEventID: id}
	for _, body := range []Body{JSONBodies, BinaryBodies} {
		codec := NewCodecWithBodies(rand.Reader, body)
		encode := map[string]func() (eventstore.EventData, error){
			"as an event":  func() (eventstore.EventData, error) { return codec.EncodeReceived(want) },
			"as its bytes": func() (eventstore.EventData, error) { return codec.EncodeReceivedAsBytes(want) },
			"as a size marker": func() (eventstore.EventData, error) {
				marker := want
				marker.TooLargeBytes = &size
				return codec.EncodeReceived(marker)
			},
		}
		for name, enc := range encode {
			d, err := enc()
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeReceived(eventstore.RecordedEvent{Type: d.Type, Data: d.Data})
			if err != nil {
				t.Fatal(err)
			}
			if got.SenderSeq == nil || *got.SenderSeq != seq || got.SenderEpoch != 77 || !bytes.Equal(got.SenderEventID, id) {
				t.Errorf("%s (%v): sequence %v, epoch %d, ID %x; want 41, 77 and the ID", name, body, got.SenderSeq, got.SenderEpoch, got.SenderEventID)
			}
		}
	}
}
