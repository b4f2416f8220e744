package fakestreams

// defaultRecentIDs bounds the weak idempotency cache. The server's is
// bounded by bytes (8 MiB, Settings/ESConsts.cs); the test double counts
// entries, which is what tests need to see it forget.
const defaultRecentIDs = 100_000

// idCache remembers where recent events were written, by ID, forgetting
// the oldest past its bound.
type idCache struct {
	limit int
	where map[[16]byte]idPlace
	order [][16]byte
}

type idPlace struct {
	stream   string
	revision uint64
}

func newIDCache(limit int) *idCache {
	return &idCache{limit: limit, where: map[[16]byte]idPlace{}}
}

func (c *idCache) add(id [16]byte, stream string, revision uint64) {
	if _, ok := c.where[id]; !ok {
		c.order = append(c.order, id)
	}
	c.where[id] = idPlace{stream: stream, revision: revision}
	for len(c.order) > c.limit {
		delete(c.where, c.order[0])
		c.order = c.order[1:]
	}
}

func (c *idCache) lookup(id [16]byte, stream string) (uint64, bool) {
	p, ok := c.where[id]
	if !ok || p.stream != stream {
		return 0, false
	}
	return p.revision, true
}

func (c *idCache) reset() {
	c.where = map[[16]byte]idPlace{}
	c.order = nil
}
