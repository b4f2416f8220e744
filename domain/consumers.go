package domain

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// A durable consumer is a reader of received events (the homeserver) whose
// position this server keeps: it acknowledges what it has processed, and a
// Watch under its name resumes after that. Delivery to it is at least once:
// whatever it processed but had not acknowledged when it stopped is given to
// it again.

// ConsumerEvent is a record of the consumers stream.
type ConsumerEvent interface{ consumerEvent() }

// ConsumerAcknowledged records that a consumer processed every received
// event through Position.
type ConsumerAcknowledged struct {
	Consumer string
	Position uint64
	At       time.Time
}

// ConsumerDeleted records that an operator deleted a consumer.
type ConsumerDeleted struct{ Consumer string }

func (ConsumerAcknowledged) consumerEvent() {}
func (ConsumerDeleted) consumerEvent()      {}

// Consumer is one durable consumer's state.
type Consumer struct {
	Name           string
	Position       uint64
	AcknowledgedAt time.Time
}

// IdleSince reports whether c has acknowledged nothing for longer than
// after, as of now.
func (c Consumer) IdleSince(now time.Time, after time.Duration) bool {
	return now.Sub(c.AcknowledgedAt) > after
}

// Consumers is the fold of the consumers stream.
type Consumers struct {
	byName map[string]Consumer
}

// Apply folds one recorded event. Positions only move forward, whatever
// order two writers' records landed in.
func (cs *Consumers) Apply(e ConsumerEvent) {
	if cs.byName == nil {
		cs.byName = map[string]Consumer{}
	}
	switch e := e.(type) {
	case ConsumerAcknowledged:
		c, ok := cs.byName[e.Consumer]
		if ok && e.Position <= c.Position {
			return
		}
		cs.byName[e.Consumer] = Consumer{Name: e.Consumer, Position: e.Position, AcknowledgedAt: e.At}
	case ConsumerDeleted:
		delete(cs.byName, e.Consumer)
	}
}

// Get returns a consumer's state.
func (cs *Consumers) Get(name string) (Consumer, bool) {
	c, ok := cs.byName[name]
	return c, ok
}

// All returns every consumer, by name.
func (cs *Consumers) All() []Consumer {
	all := make([]Consumer, 0, len(cs.byName))
	for _, c := range cs.byName {
		all = append(all, c)
	}
	slices.SortFunc(all, func(a, b Consumer) int { return strings.Compare(a.Name, b.Name) })
	return all
}

// Ack decides what acknowledging position for consumer name records: an
// event when it moves the consumer forward, none when the consumer is
// already there or past it (a repeated or late acknowledgement), so retries
// are harmless. Position 0, which Watch gives the events of a first run of
// events before any other, acknowledges nothing. It returns the consumer's
// position after the acknowledgement.
func (cs *Consumers) Ack(name string, position uint64, at time.Time) (recorded []ConsumerEvent, now uint64, err error) {
	if err := CheckConsumerName(name); err != nil {
		return nil, 0, err
	}
	if c, ok := cs.byName[name]; (ok && position <= c.Position) || position == 0 {
		return nil, c.Position, nil
	}
	return []ConsumerEvent{ConsumerAcknowledged{Consumer: name, Position: position, At: at}}, position, nil
}

// Delete decides what deleting consumer name records.
func (cs *Consumers) Delete(name string) ([]ConsumerEvent, error) {
	if err := CheckConsumerName(name); err != nil {
		return nil, err
	}
	if _, ok := cs.byName[name]; !ok {
		return nil, fmt.Errorf("%w: no consumer named %q (postbox consumers lists them)", ErrNotFound, name)
	}
	return []ConsumerEvent{ConsumerDeleted{Consumer: name}}, nil
}

// MaxConsumerNameLen bounds a consumer's name.
const MaxConsumerNameLen = 64

// CheckConsumerName accepts 1 to 64 of a-z, 0-9, '.', '_' and '-': names an
// operator can type and a log line can show as they are.
func CheckConsumerName(name string) error {
	if name == "" || len(name) > MaxConsumerNameLen {
		return fmt.Errorf("%w: consumer: %q: want 1 to %d characters, e.g. homeserver", ErrInvalidArgument, name, MaxConsumerNameLen)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Errorf("%w: consumer: %q: only a-z, 0-9, '.', '_' and '-', e.g. homeserver", ErrInvalidArgument, name)
		}
	}
	return nil
}
