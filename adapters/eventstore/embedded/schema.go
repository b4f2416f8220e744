package embedded

import (
	"net/url"
)

// Schema creates the store's tables. It is exported, with WriterDSN, so that
// cmd/storebench can measure the bare engine on the same table shape.
//
// events.position is the rowid: the global order, assigned by SQLite as
// max+1. It is never reused because the event at the largest position is
// never deleted (a truncation leaves that one row to the truncation point
// to hide). The unique index serves reads by stream, gives a stream's last
// revision in one lookup and guards the revision sequence. A streams row
// changes only when the stream is created, truncated or deleted, so an
// append's commit writes no page but the events' and the index's.
// streams.truncate_before is the first revision reads return; it also
// keeps the revision of a stream whose events were all removed.
const Schema = `
CREATE TABLE IF NOT EXISTS streams (
	id              INTEGER PRIMARY KEY,
	name            TEXT    NOT NULL UNIQUE,
	deleted         INTEGER NOT NULL DEFAULT 0,
	truncate_before INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
	position  INTEGER PRIMARY KEY,
	stream_id INTEGER NOT NULL,
	revision  INTEGER NOT NULL,
	event_id  BLOB    NOT NULL,
	type      TEXT    NOT NULL,
	data      BLOB,
	created   INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_stream ON events (stream_id, revision);
`

// NewDatabase runs once, on a database without tables, before Schema:
// incremental auto-vacuum lets truncation give disk space back without a
// full VACUUM, and only a database without tables takes it up directly
// (Open converts older ones once). Exported, like Schema, for
// cmd/storebench.
const NewDatabase = `PRAGMA auto_vacuum = INCREMENTAL`

// WriterDSN is the modernc.org/sqlite data source name of the writing
// connection. WAL lets readers, in this process or another, read while the
// writer commits; synchronous=FULL makes SQLite fsync the WAL at every
// commit, so an acknowledged append survives a crash or power loss.
// (Incremental auto-vacuum is in NewDatabase, not here: setting it on a
// database that has it rewrites the header, a write at every start that
// fails on a full disk.)
func WriterDSN(path string) string {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(5000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Add("_pragma", "foreign_keys(OFF)")
	// The store is the only writer; BEGIN IMMEDIATE takes the write lock at
	// once instead of upgrading mid-transaction.
	q.Set("_txlock", "immediate")
	return (&url.URL{Scheme: "file", OmitHost: true, Path: path, RawQuery: q.Encode()}).String()
}

// readerDSN opens the database read-only: these connections serve reads and
// subscriptions, and, in another process, a live server's data directory
// must never be written by them.
func readerDSN(path string) string {
	q := url.Values{}
	q.Set("mode", "ro")
	q.Add("_pragma", "busy_timeout(5000)")
	q.Add("_pragma", "query_only(1)")
	return (&url.URL{Scheme: "file", OmitHost: true, Path: path, RawQuery: q.Encode()}).String()
}
