package domain

// BatchSend is one send of a batch: an event of type E for a peer, with an
// optional idempotency key.
type BatchSend[E any] struct {
	To    ServerID
	Event E
	Key   string
}

// SendOutcome is what became of one send of a batch: its sequence number
// in the peer's outbox, or why it was not stored.
type SendOutcome struct {
	Seq uint64
	Err error
}

// MaxBatchSends bounds the sends of one batch.
const MaxBatchSends = 10000
