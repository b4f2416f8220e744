package fakestreams

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Revisions the server uses in place of a number.
const (
	// deletedRevision is the revision of a tombstone event (long.MaxValue on
	// the server).
	deletedRevision = math.MaxInt64
	// firstPosition leaves room before the first event, as the server's own
	// records do: no event sits at position 0.
	firstPosition = 4096
)

// record is one stored event; records never change once written.
type record struct {
	stream   string
	revision uint64
	id       [16]byte
	// metadata holds the system metadata: type, content-type and created.
	metadata map[string]string
	custom   []byte
	data     []byte
	commit   uint64
	prepare  uint64
}

func (r *record) eventType() string { return r.metadata["type"] }

// after reports whether r comes after the position (commit, prepare).
func (r *record) after(commit, prepare uint64) bool {
	if r.commit != commit {
		return r.commit > commit
	}
	return r.prepare > prepare
}

type streamState struct {
	events []*record
	// truncated counts the events hidden by a soft delete.
	truncated  int
	tombstoned bool
}

func (st *streamState) last() (uint64, bool) {
	if len(st.events) == 0 {
		return 0, false
	}
	return st.events[len(st.events)-1].revision, true
}

// visible reports whether reads see the stream: it has events that no soft
// delete hides.
func (st *streamState) visible() bool { return len(st.events) > st.truncated }

// expectation is an append's or delete's expected revision.
type expectation struct {
	kind     expectKind
	revision uint64
}

type expectKind int

const (
	expectAny expectKind = iota
	expectNoStream
	expectExists
	expectRevision
)

// serverNumber is the expected version as the server prints it in errors.
func (e expectation) serverNumber() int64 {
	switch e.kind {
	case expectNoStream:
		return -1
	case expectExists:
		return -4
	case expectRevision:
		return int64(e.revision)
	default:
		return -2
	}
}

// errWrongExpected reports a failed expectation with the stream's current
// revision (-1 for no stream).
type errWrongExpected struct {
	current int64
}

func (e errWrongExpected) Error() string {
	return fmt.Sprintf("wrong expected version, current %d", e.current)
}

type errDeleted struct{}

func (errDeleted) Error() string { return "stream deleted" }

// eventLog is the whole store: $all in order plus an index by stream.
type eventLog struct {
	mu      sync.Mutex
	all     []*record
	streams map[string]*streamState
	next    uint64
	// changed is closed and replaced on every write, to wake subscriptions.
	changed chan struct{}
	// drop is closed and replaced by dropSubscriptions.
	drop chan struct{}
	subs int
	now  func() time.Time
	// recent is the weak idempotency cache of recent event IDs.
	recent *idCache
}

func newEventLog() *eventLog {
	return &eventLog{
		streams: map[string]*streamState{},
		next:    firstPosition,
		changed: make(chan struct{}),
		drop:    make(chan struct{}),
		now:     time.Now,
		recent:  newIDCache(defaultRecentIDs),
	}
}

// proposed is an event to append.
type proposed struct {
	id          [16]byte
	eventType   string
	contentType string
	custom      []byte
	data        []byte
}

// appendResult tells where an append landed: the stream's last revision
// and the last event's position, also for an idempotent retry, as the
// server reports them (Services/RequestManager/Managers/WriteEvents.cs,
// Services/Storage/ReaderIndex/IndexWriter.cs).
type appendResult struct {
	current     uint64
	noStream    bool
	commit      uint64
	prepare     uint64
	hasPosition bool
}

func (l *eventLog) append(stream string, exp expectation, events []proposed) (appendResult, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.streams[stream]
	if st != nil && st.tombstoned {
		return appendResult{}, errDeleted{}
	}
	if orig, ok := strings.CutPrefix(stream, "$$"); ok {
		// The metadata of a deleted stream cannot be written either.
		if o := l.streams[orig]; o != nil && o.tombstoned {
			return appendResult{}, errDeleted{}
		}
	}
	last, exists := int64(-1), false
	if st != nil {
		if r, ok := st.last(); ok {
			last, exists = int64(r), true
		}
	}
	current := appendResult{current: uint64(max(last, 0)), noStream: !exists}

	// The idempotency checks of Services/Storage/ReaderIndex/IndexWriter.cs
	// (CheckCommit): a retry is recognised by its event IDs; a partial
	// match is "corrupted idempotency", which the client sees as a wrong
	// expected version.
	switch exp.kind {
	case expectNoStream:
		if exists {
			return l.strongRetry(st, 0, events, last)
		}
	case expectRevision:
		if !exists || uint64(last) != exp.revision {
			if !exists {
				return appendResult{}, errWrongExpected{current: last}
			}
			return l.strongRetry(st, exp.revision+1, events, last)
		}
	default:
		if exp.kind == expectExists && !exists {
			return appendResult{}, errWrongExpected{current: last}
		}
		// Any and StreamExists: only the in-memory cache of recent event
		// IDs tells a retry (weak); what it forgot is written again.
		if len(events) > 0 && st != nil {
			if at, ok := l.recent.lookup(events[0].id, stream); ok {
				return l.matchFrom(st, at, events, last)
			}
		}
	}
	if len(events) == 0 {
		return current, nil
	}

	if st == nil {
		st = &streamState{}
		l.streams[stream] = st
	}
	created := strconv.FormatInt(l.now().UnixNano()/100, 10)
	var lastRec *record
	for i, e := range events {
		// Every event is its own prepare and commit record:
		// commit = prepare = its own position
		// (Services/Storage/StorageWriterService.cs, ReaderIndex/AllReader.cs).
		r := &record{
			stream:   stream,
			revision: uint64(last + 1 + int64(i)),
			id:       e.id,
			metadata: map[string]string{
				"type":         e.eventType,
				"content-type": e.contentType,
				"created":      created,
			},
			custom:  e.custom,
			data:    e.data,
			commit:  l.next,
			prepare: l.next,
		}
		// Advance by roughly a record's size, as a log offset would.
		l.next += uint64(64 + len(e.eventType) + len(e.data) + len(e.custom))
		st.events = append(st.events, r)
		l.all = append(l.all, r)
		l.recent.add(e.id, stream, r.revision)
		lastRec = r
	}
	l.notify()
	return appendResult{current: lastRec.revision, commit: lastRec.commit, prepare: lastRec.prepare, hasPosition: true}, nil
}

// strongRetry is the index check for an exact or no-stream expectation that
// the stream is past: the events must be the stream's from revision from
// on. It has no time window and survives restarts.
func (l *eventLog) strongRetry(st *streamState, from uint64, events []proposed, last int64) (appendResult, error) {
	if len(events) == 0 || from >= uint64(len(st.events)) || st.events[from].id != events[0].id {
		return appendResult{}, errWrongExpected{current: last}
	}
	return l.matchFrom(st, from, events, last)
}

// matchFrom reports an idempotent retry if every event sits in st from
// revision from on, and a wrong expected version if only some do.
func (l *eventLog) matchFrom(st *streamState, from uint64, events []proposed, last int64) (appendResult, error) {
	if from+uint64(len(events)) > uint64(len(st.events)) {
		return appendResult{}, errWrongExpected{current: last}
	}
	for i, e := range events {
		if st.events[from+uint64(i)].id != e.id {
			return appendResult{}, errWrongExpected{current: last}
		}
	}
	r := st.events[from+uint64(len(events))-1]
	return appendResult{current: r.revision, commit: r.commit, prepare: r.prepare, hasPosition: true}, nil
}

// forgetRecent empties the weak idempotency cache, as a restart does.
func (l *eventLog) forgetRecent() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recent.reset()
}

// isBoundary reports whether a $all position is a record's own, or the
// end of the log, which the server accepts as a start.
func (l *eventLog) isBoundary(commit, prepare uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if commit != prepare {
		return false
	}
	if commit == 0 || commit == l.next {
		return true
	}
	i := firstAtOrAfter(l.all, commit, prepare)
	return i < len(l.all) && l.all[i].commit == commit
}

// remove deletes a stream: softly (later appends continue its revisions)
// or for good with a tombstone. It returns the position of the record that
// marks the deletion.
func (l *eventLog) remove(stream string, exp expectation, hard bool) (commit, prepare uint64, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.streams[stream]
	if st != nil && st.tombstoned {
		return 0, 0, errDeleted{}
	}
	last, exists := int64(-1), false
	if st != nil {
		if r, ok := st.last(); ok {
			last, exists = int64(r), true
		}
	}
	switch exp.kind {
	case expectNoStream:
		if exists {
			return 0, 0, errWrongExpected{current: last}
		}
	case expectExists:
		if !exists {
			return 0, 0, errWrongExpected{current: last}
		}
	case expectRevision:
		if !exists || uint64(last) != exp.revision {
			return 0, 0, errWrongExpected{current: last}
		}
	}
	if st == nil {
		st = &streamState{}
		l.streams[stream] = st
	}
	created := strconv.FormatInt(l.now().UnixNano()/100, 10)
	r := &record{
		commit:   l.next,
		prepare:  l.next,
		metadata: map[string]string{"content-type": "application/json", "created": created},
		custom:   []byte{},
	}
	if hard {
		st.tombstoned = true
		r.stream = stream
		r.revision = deletedRevision
		r.metadata["type"] = "$streamDeleted"
		r.data = []byte{}
	} else {
		// A soft delete writes the stream's metadata with a truncate-before.
		st.truncated = len(st.events)
		r.stream = "$$" + stream
		r.metadata["type"] = "$metadata"
		r.data = fmt.Appendf(nil, `{"$tb":%d}`, last+1)
	}
	l.next += uint64(64 + len(r.data))
	l.all = append(l.all, r)
	l.notify()
	return r.commit, r.prepare, nil
}

// notify wakes every subscription waiting for new records; l.mu is held.
func (l *eventLog) notify() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// readStream returns the stream's visible events in the order asked for.
// found is false when the stream has no visible events.
func (l *eventLog) readStream(stream string, backwards bool, from uint64, fromEnd bool, count uint64) (out []*record, found bool, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.streams[stream]
	if st != nil && st.tombstoned {
		return nil, false, errDeleted{}
	}
	if st == nil || !st.visible() {
		return nil, false, nil
	}
	events := st.events[st.truncated:]
	// Reads start at the truncation point: the stream's $tb, or for a
	// metadata stream its last event, as its $maxCount is 1
	// (Services/Storage/ReaderIndex/IndexReader.cs, ReadStreamEventsForward
	// and Backward: minEventNumber). A stream whose every event is
	// truncated still exists and reads as empty.
	minRev := l.truncateBefore(stream)
	if strings.HasPrefix(stream, "$$") {
		minRev = events[len(events)-1].revision
	}
	if k := sort.Search(len(events), func(i int) bool { return events[i].revision >= minRev }); k > 0 {
		events = events[k:]
	}
	if len(events) == 0 {
		return nil, true, nil
	}
	first := events[0].revision
	if !backwards {
		if fromEnd {
			return nil, true, nil
		}
		i := 0
		if from > first {
			i = int(min(from-first, uint64(len(events))))
		}
		for ; i < len(events) && uint64(len(out)) < count; i++ {
			out = append(out, events[i])
		}
		return out, true, nil
	}
	i := len(events) - 1
	if !fromEnd {
		if from < first {
			return nil, true, nil
		}
		i = int(min(from-first, uint64(len(events)-1)))
	}
	for ; i >= 0 && uint64(len(out)) < count; i-- {
		out = append(out, events[i])
	}
	return out, true, nil
}

// truncateBefore returns the $tb of the stream's metadata, 0 if none; l.mu
// is held. The server keeps any value it is given.
func (l *eventLog) truncateBefore(stream string) uint64 {
	meta := l.streams["$$"+stream]
	if meta == nil || len(meta.events) == 0 {
		return 0
	}
	var props struct {
		TB *float64 `json:"$tb"`
	}
	if err := json.Unmarshal(meta.events[len(meta.events)-1].data, &props); err != nil || props.TB == nil || *props.TB < 0 {
		return 0
	}
	return uint64(*props.TB)
}

// streamTruncateBefore is truncateBefore for callers without the lock.
func (l *eventLog) streamTruncateBefore(stream string) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.truncateBefore(stream)
}

// allPosition is where a read or subscription of $all starts.
type allPosition struct {
	start, end      bool
	commit, prepare uint64
}

// readAll returns up to count records of $all that match. Forwards from a
// position includes the record at it; backwards excludes it.
func (l *eventLog) readAll(from allPosition, backwards bool, count uint64, match func(*record) bool) []*record {
	l.mu.Lock()
	all := l.all
	l.mu.Unlock()
	var out []*record
	if !backwards {
		i := 0
		switch {
		case from.end:
			i = len(all)
		case !from.start:
			i = firstAtOrAfter(all, from.commit, from.prepare)
		}
		for ; i < len(all) && uint64(len(out)) < count; i++ {
			if match(all[i]) {
				out = append(out, all[i])
			}
		}
		return out
	}
	i := len(all) - 1
	switch {
	case from.start:
		i = -1
	case !from.end:
		i = firstAtOrAfter(all, from.commit, from.prepare) - 1
	}
	for ; i >= 0 && uint64(len(out)) < count; i-- {
		if match(all[i]) {
			out = append(out, all[i])
		}
	}
	return out
}

// firstAtOrAfter returns the index of the first record at or after the
// position (commit, prepare).
func firstAtOrAfter(all []*record, commit, prepare uint64) int {
	return sort.Search(len(all), func(i int) bool {
		r := all[i]
		return (r.commit == commit && r.prepare == prepare) || r.after(commit, prepare)
	})
}

// subscribe registers a subscription and returns its starting index in $all
// (chosen by start, called with the log locked) and the index at which it is
// caught up.
func (l *eventLog) subscribe(start func(all []*record) int) (from, caughtUp int, drop <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.subs++
	return start(l.all), len(l.all), l.drop
}

func (l *eventLog) unsubscribe() {
	l.mu.Lock()
	l.subs--
	l.mu.Unlock()
}

// since returns the records from index i on and a channel closed on the
// next write.
func (l *eventLog) since(i int) ([]*record, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if i >= len(l.all) {
		return nil, l.changed
	}
	return l.all[i:], l.changed
}

func (l *eventLog) dropSubscriptions() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	close(l.drop)
	l.drop = make(chan struct{})
	return l.subs
}

func (l *eventLog) subscriptionCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.subs
}

func (l *eventLog) length() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.all)
}

// streamStartAfter returns the index in all of the first event of stream
// after revision rev.
func streamStartAfter(all []*record, stream string, rev uint64) int {
	for i, r := range all {
		if r.stream == stream && r.revision > rev {
			return i
		}
	}
	return len(all)
}
