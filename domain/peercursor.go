package domain

// PeerCursor is one peer's sender-side state as the engine holds it now:
// its stable peer ID (which names its streams and which a rename keeps),
// its current server ID, and its outbox.
type PeerCursor struct {
	PeerID   string
	ServerID ServerID
	Outbox   Outbox
	// RetainedFrom is the first outbox event still stored: retention
	// (--retain-delivered) removed the delivered ones before it.
	RetainedFrom uint64
}
