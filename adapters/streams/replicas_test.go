package streams

import (
	"bytes"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/domain"
)

func TestReplicaRecordsRoundTripInBothBodies(t *testing.T) {
	t.Parallel()
	at := time.UnixMilli(1_790_000_000_123)
	hb := Heartbeat{
		ReplicaHeartbeat: domain.ReplicaHeartbeat{Replica: "host-1a2b", At: at, Lease: 10 * time.Second, Leaving: true},
		Instance:         []byte{1, 2, 3, 4, 5, 6, 7, 8},
		ServerID:         "chat.example.org:2289",
		KeyFingerprint:   bytes.Repeat([]byte{0xab}, 32),
	}
	for _, body := range []Body{JSONBodies, BinaryBodies} {
		c := NewCodecWithBodies(rand.Reader, body)
		d, err := c.EncodeHeartbeat(hb)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeHeartbeat(recorded(d))
		if err != nil || got.Replica != hb.Replica || !got.At.Equal(at) || got.Lease != hb.Lease || !got.Leaving ||
			!bytes.Equal(got.Instance, hb.Instance) || got.ServerID != hb.ServerID || !bytes.Equal(got.KeyFingerprint, hb.KeyFingerprint) {
			t.Fatalf("body %d: heartbeat %+v, %v; want %+v", body, got, err, hb)
		}

		d, err = c.EncodeOwnerTerm(domain.OwnerTerm{Term: 7, Replica: "b"}, "a")
		if err != nil {
			t.Fatal(err)
		}
		term, err := DecodeOwnerTerm(recorded(d))
		if err != nil || term != (domain.OwnerTerm{Term: 7, Replica: "b"}) {
			t.Fatalf("body %d: owner term %+v, %v", body, term, err)
		}

		exp := time.Unix(1_790_000_060, 0)
		d, err = c.EncodeNonce(NonceAccepted{ServerID: "b.example:2289", Nonce: []byte("0123456789abcdef"), Expiry: exp})
		if err != nil {
			t.Fatal(err)
		}
		n, err := DecodeNonce(recorded(d))
		if err != nil || n.ServerID != "b.example:2289" || string(n.Nonce) != "0123456789abcdef" || !n.Expiry.Equal(exp) {
			t.Fatalf("body %d: nonce %+v, %v", body, n, err)
		}

		for _, u := range []PullUnderWay{{Replica: "r2", Until: at}, {Replica: "r2", Until: time.UnixMilli(0), Ended: true}} {
			d, err = c.EncodePullUnderWay(u)
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodePullUnderWay(recorded(d))
			if err != nil || got.Replica != u.Replica || !got.Until.Equal(u.Until) || got.Ended != u.Ended {
				t.Fatalf("body %d: pull %+v, %v; want %+v", body, got, err, u)
			}
			if _, err := DecodeNonce(recorded(d)); err == nil {
				t.Fatalf("body %d: a pull record decoded as a nonce", body)
			}
			if _, err := DecodePullUnderWay(recorded(hb0(c))); err == nil {
				t.Fatalf("body %d: a heartbeat decoded as a pull record", body)
			}
		}
	}
	if got := Pulling("p1"); got != "pulling-p1" {
		t.Errorf("Pulling = %q", got)
	}
}

func hb0(c *Codec) eventstore.EventData {
	d, _ := c.EncodeHeartbeat(Heartbeat{ReplicaHeartbeat: domain.ReplicaHeartbeat{Replica: "a"}})
	return d
}

func TestReplicaRecordsOfTheWrongTypeOrIncompleteAreRefused(t *testing.T) {
	t.Parallel()
	c := NewCodec(rand.Reader)
	hb, _ := c.EncodeHeartbeat(Heartbeat{ReplicaHeartbeat: domain.ReplicaHeartbeat{Replica: "a"}})
	term, _ := c.EncodeOwnerTerm(domain.OwnerTerm{Term: 1, Replica: "a"}, "")
	nonce, _ := c.EncodeNonce(NonceAccepted{})
	if _, err := DecodeHeartbeat(recorded(term)); err == nil {
		t.Error("an owner record decoded as a heartbeat")
	}
	if _, err := DecodeOwnerTerm(recorded(hb)); err == nil {
		t.Error("a heartbeat decoded as an owner record")
	}
	if _, err := DecodeNonce(recorded(hb)); err == nil {
		t.Error("a heartbeat decoded as a nonce")
	}
	if _, err := DecodeNonce(recorded(nonce)); err != nil {
		t.Errorf("an empty nonce record: %v", err)
	}
	noName, _ := c.EncodeHeartbeat(Heartbeat{})
	if _, err := DecodeHeartbeat(recorded(noName)); err == nil || !strings.Contains(err.Error(), "replica name") {
		t.Errorf("a heartbeat without a name: %v", err)
	}
	for _, bad := range []domain.OwnerTerm{{Term: 0, Replica: "a"}, {Term: 1}} {
		d, _ := c.EncodeOwnerTerm(bad, "")
		if _, err := DecodeOwnerTerm(recorded(d)); err == nil {
			t.Errorf("owner record %+v decoded", bad)
		}
	}
	garbled := recorded(hb)
	garbled.Data = []byte("{not json")
	if _, err := DecodeHeartbeat(garbled); err == nil {
		t.Error("a garbled heartbeat decoded")
	}
	if got := Nonces(29_833_333, 7); got != "nonces-29833333-07" {
		t.Errorf("Nonces = %q", got)
	}
}
