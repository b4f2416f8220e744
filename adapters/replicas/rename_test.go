package replicas

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/domain"
)

// Given replica a of a server renamed (postbox rename at a) from its first
// ID to a second,
// when replica b, started before the rename, still heartbeats the first,
// and replica c starts under the second (the first a former ID),
// then a counts b and c as replicas of this server, heartbeats the second
// ID itself, and still refuses a replica of an ID never this server's.
func TestAReplicaFollowsItsServersRename(t *testing.T) {
	t.Parallel()
	eachStore(t, func(t *testing.T, store eventstore.Store) {
		clock := newFakeClock()
		first := domain.MustParseServerID(testServerID)
		second := domain.MustParseServerID("renamed.example.org:2289")
		identity := domain.NewIdentity(first, 7*24*time.Hour)
		a := newReplica(t, store, clock, "a", func(c *Config) { c.Identity = identity })
		b := newReplica(t, store, clock, "b")
		mustStart(t, a, b)
		identity.Rename(second, clock.Now())
		if err := a.Beat(t.Context()); err != nil {
			t.Fatal(err)
		}
		c := newReplica(t, store, clock, "c", func(c *Config) {
			// Started after the rename: its identity, from the history
			// in the store, has the first ID as a former one.
			c.ServerID = second.String()
			c.Identity = domain.IdentityFromHistory([]domain.OwnID{{ID: first}, {ID: second, Since: clock.Now()}}, time.Hour)
		})
		mustStart(t, c)
		refreshAll(t, a)
		if v := a.View(); !slices.Equal(v.Live, []string{"a", "b", "c"}) {
			t.Fatalf("a's live replicas %v, want a, b (the former ID) and c (the new one)", v.Live)
		}
		if h := a.records["a"]; h.ServerID != second.String() {
			t.Fatalf("a heartbeats %s, want its new ID %s", h.ServerID, second)
		}
		d := newReplica(t, store, clock, "d", func(c *Config) {
			c.ServerID = "other.example.org:2289"
			c.Identity = domain.NewIdentity(domain.MustParseServerID(c.ServerID), time.Hour)
		})
		if err := d.Start(t.Context(), noWait(t)); !errors.Is(err, ErrIdentityMismatch) {
			t.Fatalf("a replica of another server ID: Start = %v, want ErrIdentityMismatch", err)
		}
	})
}
