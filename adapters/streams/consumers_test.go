package streams

import (
	"crypto/rand"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/domain"
)

func TestConsumerRecordsRoundTripInBothBodies(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 11, 29, 12, 0, 0, 5, time.UTC)
	want := []domain.ConsumerEvent{
		domain.ConsumerAcknowledged{Consumer: "homeserver", Position: 1 << 40, At: at},
		domain.ConsumerDeleted{Consumer: "homeserver"},
	}
	for _, body := range []Body{JSONBodies, BinaryBodies} {
		d, err := NewCodecWithBodies(rand.Reader, body).EncodeConsumers(want...)
		if err != nil {
			t.Fatal(err)
		}
		for i := range want {
			got, err := DecodeConsumers(recorded(d[i]))
			if err != nil || got != want[i] {
				t.Fatalf("body %d: decoded %#v, %v; want %#v", body, got, err, want[i])
			}
		}
	}
	d, _ := NewCodec(rand.Reader).Encode("ConsumerRenamed", nil)
	if _, err := DecodeConsumers(recorded(d)); err == nil {
		t.Fatal("an unknown record type decoded")
	}
}
