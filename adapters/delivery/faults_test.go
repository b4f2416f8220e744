package delivery

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
)

// errInjected is the store failure the fault-injecting store returns.
var errInjected = errors.New("injected store failure")

// faults fails the store calls a test chooses: an operation ("append",
// "read", "readBackward") on streams with a prefix, the next n times (n < 0:
// until cleared). It stands between an engine and its store (world.wrap).
type faults struct {
	Store
	mu    sync.Mutex
	rules []*faultRule
	// conflicts counts the appends the store itself refused as
	// conflicting.
	conflicts int
	// calls counts the calls per operation and stream.
	calls map[string]int
}

// callCount is how many calls of op were made on streams with prefix.
func (f *faults) callCount(op, prefix string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for k, c := range f.calls {
		if strings.HasPrefix(k, op+" "+prefix) {
			n += c
		}
	}
	return n
}

type faultRule struct {
	op, prefix string
	n          int
	err        error
	hits       int
	// skip: the first calls it matches pass.
	skip int
	// hold, if set, is waited for (then the call is made as usual).
	hold chan struct{}
	// through: the call is made, then its answer replaced: err, or for
	// an append with a nil err a result naming another revision.
	through bool
}

// fail makes the next n calls of op on streams starting with prefix fail
// (n < 0: every call until clear). It returns the rule, to count its hits.
func (f *faults) fail(op, prefix string, n int) *faultRule {
	return f.failWith(op, prefix, n, errInjected)
}

// failAfter is fail, once skip calls have passed.
func (f *faults) failAfter(op, prefix string, skip, n int) *faultRule {
	r := f.fail(op, prefix, n)
	f.mu.Lock()
	r.skip = skip
	f.mu.Unlock()
	return r
}

// failWith is fail with the error the calls return.
func (f *faults) failWith(op, prefix string, n int, err error) *faultRule {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := &faultRule{op: op, prefix: prefix, n: n, err: err}
	f.rules = append(f.rules, r)
	return r
}

// landedButFailed makes the next n appends to streams with prefix happen
// and answer err (an outcome lost on the way), or with err nil answer a
// revision 5 past the real one (a store that put them elsewhere).
func (f *faults) landedButFailed(prefix string, n int, err error) *faultRule {
	r := f.failWith("append", prefix, n, err)
	f.mu.Lock()
	r.through = true
	f.mu.Unlock()
	return r
}

// conflictCount is how many appends the store refused as conflicting.
func (f *faults) conflictCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conflicts
}

func (f *faults) clear() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules = nil
}

func (f *faults) hit(op, stream string) error {
	r := f.match(op, stream)
	if r != nil && r.hold != nil {
		<-r.hold
		return nil
	}
	if r == nil || r.through {
		return nil
	}
	return r.err
}

// holdNext makes the next call of op on streams with prefix wait until
// the returned channel is closed, then go on as usual.
func (f *faults) holdNext(op, prefix string) chan struct{} {
	hold := make(chan struct{})
	r := f.fail(op, prefix, 1)
	f.mu.Lock()
	r.hold = hold
	f.mu.Unlock()
	return hold
}

// match returns the rule a call meets, counting it, or nil.
func (f *faults) match(op, stream string) *faultRule {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.calls == nil {
		f.calls = map[string]int{}
	}
	f.calls[op+" "+stream]++
	for _, r := range f.rules {
		if r.op == op && strings.HasPrefix(stream, r.prefix) && r.n != 0 {
			if r.skip > 0 {
				r.skip--
				continue
			}
			if r.n > 0 {
				r.n--
			}
			r.hits++
			return r
		}
	}
	return nil
}

func (r *faultRule) count(f *faults) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return r.hits
}

func (f *faults) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	r := f.match("append", stream)
	if r != nil && !r.through {
		return eventstore.AppendResult{}, r.err
	}
	res, err := f.Store.Append(ctx, stream, expected, events...)
	if errors.Is(err, eventstore.ErrWrongExpectedRevision) {
		f.mu.Lock()
		f.conflicts++
		f.mu.Unlock()
	}
	switch {
	case r == nil || err != nil:
		return res, err
	case r.err != nil:
		return eventstore.AppendResult{}, r.err
	}
	res.NextExpectedRevision += 5
	return res, nil
}

func (f *faults) ReadStream(ctx context.Context, stream string, from uint64, limit int) ([]eventstore.RecordedEvent, error) {
	if err := f.hit("read", stream); err != nil {
		return nil, err
	}
	return f.Store.ReadStream(ctx, stream, from, limit)
}

func (f *faults) ReadStreamBackward(ctx context.Context, stream string, limit int) ([]eventstore.RecordedEvent, error) {
	if err := f.hit("readBackward", stream); err != nil {
		return nil, err
	}
	return f.Store.ReadStreamBackward(ctx, stream, limit)
}

// Truncate passes on to the store, failing as told ("truncate").
func (f *faults) Truncate(ctx context.Context, stream string, before uint64) error {
	if err := f.hit("truncate", stream); err != nil {
		return err
	}
	return f.Store.(truncater).Truncate(ctx, stream, before)
}

// faultWorld opens a world whose store fails what the returned faults is
// told to, logging to a buffer the test reads.
func faultWorld(t *testing.T, cfg Config) (*world, *faults) {
	t.Helper()
	f := &faults{}
	w := &world{t: t, dir: t.TempDir(), peers: &fakePeers{}, cfg: cfg, logs: &logBuffer{},
		wrap: func(s Store) Store { f.Store = s; return f }}
	w.open()
	return w, f
}
