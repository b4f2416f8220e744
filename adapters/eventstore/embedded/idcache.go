package embedded

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
)

// idCacheSize is how many recent event IDs the writer remembers for
// idempotent appends with eventstore.Any.
const idCacheSize = 1 << 16

// idKey scopes an event ID to its stream: EventStoreDB's idempotence is per
// stream, so the same ID may be written to two streams.
type idKey struct {
	stream int64
	id     eventstore.EventID
}

// idCache remembers the revisions of the most recently written event IDs,
// like EventStoreDB's cache behind idempotent appends with expected revision
// Any. A ring evicts the oldest entries. Both grow as IDs come, up to size:
// a store that has written little holds little (a full cache is about 6 MB).
type idCache struct {
	revs map[idKey]uint64
	ring []idKey
	size int
	next int
	full bool
}

func newIDCache(size int) *idCache {
	return &idCache{revs: map[idKey]uint64{}, size: size}
}

func (c *idCache) lookup(k idKey) (uint64, bool) {
	rev, ok := c.revs[k]
	return rev, ok
}

func (c *idCache) add(k idKey, rev uint64) {
	if !c.full {
		c.ring = append(c.ring, k)
		c.revs[k] = rev
		c.full = len(c.ring) == c.size
		return
	}
	delete(c.revs, c.ring[c.next])
	c.ring[c.next] = k
	c.revs[k] = rev
	c.next++
	if c.next == len(c.ring) {
		c.next = 0
	}
}

// load fills the cache with the newest events, so that a retry across a
// restart of the store is still recognised.
func (c *idCache) load(ctx context.Context, conn *sql.Conn) error {
	rows, err := conn.QueryContext(ctx,
		`SELECT stream_id, revision, event_id FROM (
			SELECT position, stream_id, revision, event_id FROM events ORDER BY position DESC LIMIT ?
		) ORDER BY position`, c.size)
	if err != nil {
		return fmt.Errorf("load recent event IDs: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var k idKey
		var rev int64
		var id []byte
		if err := rows.Scan(&k.stream, &rev, &id); err != nil {
			return fmt.Errorf("load recent event IDs: %w", err)
		}
		copy(k.id[:], id)
		c.add(k, uint64(rev))
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("load recent event IDs: %w", err)
	}
	return nil
}
