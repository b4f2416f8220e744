package streams

import (
	"crypto/rand"
	"reflect"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/domain"
)

// fillEvery sets every field of v, recursively, to a value that is not its
// zero: a field added to the fold later is then set here too, and the round
// trip below fails until the snapshot carries it.
func fillEvery(t *testing.T, v reflect.Value, n *uint64) {
	t.Helper()
	*n++
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			fillEvery(t, v.Field(i), n)
		}
	case reflect.Uint64, reflect.Uint32, reflect.Uint8, reflect.Uint, reflect.Int, reflect.Int64:
		if v.CanUint() {
			v.SetUint(*n)
		} else {
			v.SetInt(int64(*n % 2)) // enum-like ints: a valid non-zero value
			if v.Int() == 0 {
				v.SetInt(1)
			}
		}
	case reflect.Bool:
		v.SetBool(true)
	case reflect.String:
		v.SetString("r" + string(rune('a'+*n%26)))
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), 2, 2)
		for i := range 2 {
			fillEvery(t, s.Index(i), n)
		}
		v.Set(s)
	default:
		t.Fatalf("fillEvery: field of kind %s: teach the test", v.Kind())
	}
}

func TestADeliverySnapshotKeepsEveryFieldOfTheFold(t *testing.T) {
	t.Parallel()
	var o domain.Outbox
	var n uint64
	fillEvery(t, reflect.ValueOf(&o).Elem(), &n)
	d, err := NewCodec(rand.Reader).EncodeSnapshot(NewOutboxSnapshot("db1", "delivery-p1", 7, o))
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeOutboxSnapshot(recorded(d))
	if err != nil {
		t.Fatal(err)
	}
	if got := back.Outbox(); !reflect.DeepEqual(got, o) {
		t.Fatalf("the snapshot gave back\n%+v\nof the fold\n%+v", got, o)
	}
	if err := back.Check("db1", "delivery-p1", 8, true); err != nil {
		t.Fatalf("Check of a snapshot of this format: %v", err)
	}
	back.Format = SnapshotFormat - 1
	if err := back.Check("db1", "delivery-p1", 8, true); err == nil {
		t.Fatal("a snapshot of an older format, which lacks fields, was trusted")
	}
}

// An inbox snapshot mirrors domain.Inbox field by field: one added to the
// fold (the owner's term, say) fails this until the snapshot carries it.
func TestAnInboxSnapshotKeepsEveryFieldOfTheFold(t *testing.T) {
	t.Parallel()
	var in domain.Inbox
	var n uint64
	fillEvery(t, reflect.ValueOf(&in).Elem(), &n)
	d, err := NewCodec(rand.Reader).EncodeSnapshot(NewInboxSnapshot("db1", "inbox-p1", 7, in))
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeInboxSnapshot(recorded(d))
	if err != nil {
		t.Fatal(err)
	}
	if got := back.Inbox(); !reflect.DeepEqual(got, in) {
		t.Fatalf("the snapshot gave back\n%+v\nof the fold\n%+v", got, in)
	}
	if err := back.Check("db1", "inbox-p1", 7, true); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if _, err := DecodeInboxSnapshot(recorded(eventstore.EventData{Type: "Other", Data: d.Data})); err == nil {
		t.Fatal("a record of another type read as an inbox snapshot")
	}
}
