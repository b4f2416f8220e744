package domain

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func givenConsumers(past ...ConsumerEvent) *Consumers {
	var cs Consumers
	for _, e := range past {
		cs.Apply(e)
	}
	return &cs
}

func TestConsumerAck(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	t.Run("a new consumer's first acknowledgement is recorded", func(t *testing.T) {
		cs := givenConsumers()
		rec, now, err := cs.Ack("homeserver", 7, t0)
		want := []ConsumerEvent{ConsumerAcknowledged{Consumer: "homeserver", Position: 7, At: t0}}
		if err != nil || now != 7 || !reflect.DeepEqual(rec, want) {
			t.Fatalf("got %v, %d, %v; want %v, 7", rec, now, err, want)
		}
	})
	t.Run("an acknowledgement past the consumer's position moves it", func(t *testing.T) {
		cs := givenConsumers(ConsumerAcknowledged{Consumer: "hs", Position: 7, At: t0})
		rec, now, err := cs.Ack("hs", 8, t0.Add(time.Second))
		if err != nil || now != 8 || len(rec) != 1 {
			t.Fatalf("got %v, %d, %v", rec, now, err)
		}
	})
	for _, pos := range []uint64{7, 3} {
		t.Run("a repeated or late acknowledgement records nothing", func(t *testing.T) {
			cs := givenConsumers(ConsumerAcknowledged{Consumer: "hs", Position: 7, At: t0})
			rec, now, err := cs.Ack("hs", pos, t0)
			if err != nil || now != 7 || len(rec) != 0 {
				t.Fatalf("ack %d: got %v, %d, %v; want nothing recorded, still at 7", pos, rec, now, err)
			}
		})
	}
	t.Run("position 0 acknowledges nothing", func(t *testing.T) {
		for _, cs := range []*Consumers{givenConsumers(), givenConsumers(ConsumerAcknowledged{Consumer: "hs", Position: 7, At: t0})} {
			before := cs.byName["hs"].Position
			rec, now, err := cs.Ack("hs", 0, t0)
			if err != nil || now != before || len(rec) != 0 {
				t.Fatalf("got %v, %d, %v; want nothing recorded, still at %d", rec, now, err, before)
			}
		}
	})
	t.Run("consumers are independent", func(t *testing.T) {
		cs := givenConsumers(ConsumerAcknowledged{Consumer: "a", Position: 9, At: t0})
		rec, now, err := cs.Ack("b", 2, t0)
		if err != nil || now != 2 || len(rec) != 1 {
			t.Fatalf("got %v, %d, %v", rec, now, err)
		}
	})
}

func TestConsumerFold(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	t.Run("records out of order never move a consumer back", func(t *testing.T) {
		cs := givenConsumers(
			ConsumerAcknowledged{Consumer: "hs", Position: 9, At: t0.Add(time.Second)},
			ConsumerAcknowledged{Consumer: "hs", Position: 5, At: t0},
		)
		if c, _ := cs.Get("hs"); c.Position != 9 || !c.AcknowledgedAt.Equal(t0.Add(time.Second)) {
			t.Fatalf("got %+v, want position 9 acknowledged at %v", c, t0.Add(time.Second))
		}
	})
	t.Run("of two records of one position, the first stands", func(t *testing.T) {
		cs := givenConsumers(
			ConsumerAcknowledged{Consumer: "hs", Position: 9, At: t0},
			ConsumerAcknowledged{Consumer: "hs", Position: 9, At: t0.Add(time.Hour)},
		)
		if c, _ := cs.Get("hs"); !c.AcknowledgedAt.Equal(t0) {
			t.Fatalf("got %+v, want it acknowledged at %v", c, t0)
		}
	})
	t.Run("a deleted consumer is gone, and starts again from nothing", func(t *testing.T) {
		cs := givenConsumers(
			ConsumerAcknowledged{Consumer: "hs", Position: 9, At: t0},
			ConsumerDeleted{Consumer: "hs"},
		)
		if _, ok := cs.Get("hs"); ok {
			t.Fatal("deleted consumer still listed")
		}
		cs.Apply(ConsumerAcknowledged{Consumer: "hs", Position: 2, At: t0})
		if c, _ := cs.Get("hs"); c.Position != 2 {
			t.Fatalf("got %+v, want position 2", c)
		}
	})
	t.Run("All lists by name", func(t *testing.T) {
		cs := givenConsumers(
			ConsumerAcknowledged{Consumer: "b", Position: 1, At: t0},
			ConsumerAcknowledged{Consumer: "a", Position: 2, At: t0},
			ConsumerAcknowledged{Consumer: "c", Position: 3, At: t0},
		)
		var names []string
		for _, c := range cs.All() {
			names = append(names, c.Name)
		}
		if strings.Join(names, ",") != "a,b,c" {
			t.Fatalf("got %v", names)
		}
	})
	t.Run("idle once nothing was acknowledged for longer than the limit", func(t *testing.T) {
		c := Consumer{Name: "hs", Position: 1, AcknowledgedAt: t0}
		if c.IdleSince(t0.Add(time.Hour), time.Hour) {
			t.Fatal("idle at exactly the limit")
		}
		if !c.IdleSince(t0.Add(time.Hour+time.Second), time.Hour) {
			t.Fatal("not idle past the limit")
		}
	})
}

func TestConsumerDelete(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	cs := givenConsumers(ConsumerAcknowledged{Consumer: "hs", Position: 9, At: t0})
	rec, err := cs.Delete("hs")
	if err != nil || !reflect.DeepEqual(rec, []ConsumerEvent{ConsumerDeleted{Consumer: "hs"}}) {
		t.Fatalf("got %v, %v", rec, err)
	}
	if _, err := cs.Delete("other"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleting an unknown consumer: %v, want ErrNotFound", err)
	}
}

func TestConsumerNames(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"homeserver", "a", "hs-1.worker_2", "z09", strings.Repeat("x", 64)} {
		if err := CheckConsumerName(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", strings.Repeat("x", 65), "Home", "a b", "a/b", "é"} {
		if err := CheckConsumerName(bad); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%q: %v, want ErrInvalidArgument", bad, err)
		}
		if _, _, err := givenConsumers().Ack(bad, 1, time.Time{}); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("ack as %q: %v, want ErrInvalidArgument", bad, err)
		}
		if _, err := givenConsumers().Delete(bad); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("delete %q: %v, want ErrInvalidArgument", bad, err)
		}
	}
}
