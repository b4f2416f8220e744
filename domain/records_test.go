package domain

import (
	"reflect"
	"testing"
)

// An inbox record holds one received event or a run of them; ReceivedIn
// gives them in order either way, and nothing for any other record.
func TestReceivedInGivesTheEventsOfEitherInboxRecord(t *testing.T) {
	t.Parallel()
	one := EventReceived{Event: UserAddedToGuild{UserID: 1, GuildID: 2}}
	two := EventReceived{Event: UserRemovedFromGuild{UserID: 1, GuildID: 2}, ViaPull: true}
	for _, c := range []struct {
		name   string
		record any
		want   []EventReceived
		ok     bool
	}{
		{"one event", one, []EventReceived{one}, true},
		{"a run", EventsReceived{Events: []EventReceived{one, two}}, []EventReceived{one, two}, true},
		{"an outbox record", EventEnqueued{}, nil, false},
		{"nothing", nil, nil, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, ok := ReceivedIn(c.record)
			if ok != c.ok || !reflect.DeepEqual(got, c.want) {
				t.Fatalf("ReceivedIn(%v) = %v, %v; want %v, %v", c.record, got, ok, c.want, c.ok)
			}
		})
	}
}
