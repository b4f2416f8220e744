// Package esdb implements the event store port over EventStoreDB, through
// the EventStore-Client-Go/v4 client. It is the only package that imports
// the client, so that a switch to its successor (KurrentDB-Client-Go, same
// wire protocol) touches nothing else.
//
// Connection strings are the client's: esdb://host:2113?tls=false for one
// node, esdb+discover://host:2113 or esdb://h1:2113,h2:2113,h3:2113 for a
// cluster found through gossip. The adapter accepts all of them, as the
// client does; its tests run against a test double that serves no gossip,
// so only single-node strings are tested without a real server.
//
// The adapter guards the client's known traps:
//   - subscriptions default to the END: every subscription passes an
//     explicit start, and resumes after the last event it delivered when
//     the server drops it;
//   - servers send a caught-up signal only from 23.10 (for streams that do
//     not exist yet only from 24.2): the adapter works caught-up out itself
//     from the last event in $all the filter selects, read before
//     subscribing, and delivers it once whatever the server sends;
//   - with tls=false the client silently drops credentials: Open warns;
//   - a read panics on an unexpected reply type: calls are guarded and
//     panics become errors;
//   - the client exits the process (log.Fatalf) on an event without
//     "created" metadata: nothing can catch that; EventStoreDB always sends
//     it, and so does the test double;
//   - after a failed rediscovery (about a second without the server) the
//     client closes itself for good, and calls that were waiting on it can
//     stay stuck: the adapter replaces it with a fresh client and closes the
//     old one once its calls are over, or after retireGrace, which releases
//     stuck calls with an error;
//   - the client's discovery ignores contexts: a call may overrun its
//     context while the client looks for the server;
//   - the client never says which server version it found: Open asks
//     ServerFeatures itself and refuses versions before 22.10;
//   - servers refuse appends over MaxAppendSize and the client then sees
//     only EOF: appends are split by a byte budget (see Append);
//   - timeouts answer while the write may still land, and the client
//     applies a 10 s deadline of its own: calls take the caller's
//     deadline, and unclear appends are retried with the same event IDs;
//   - the client's RequiresLeader option never reaches the server: the
//     adapter sends the header itself on appends and reads, and retries
//     a NotLeader answer on the leader the client moves to;
//   - the client reports a missing stream and a gRPC NotFound status
//     (also a follower's answer) with the same code: only the former is
//     eventstore.ErrStreamNotFound;
//   - a $all subscription from a position that is not a record's skips
//     an event (up to 23.10) or fails (from 24.2): subscriptions start
//     only from event positions.
//
// Events are written as JSON (Postbox writes protojson), so that the
// server's UI and projections can read them. Delete is a tombstone; the
// "$streamDeleted" event it leaves in $all is not delivered to subscribers.
// Truncate writes the stream's truncate-before ($tb) metadata; the server
// hides the events from reads but keeps them in $all, and on disk, until a
// scavenge, so subscriptions look up each stream's point once and skip
// what lies below it.
//
// Reading and subscribing to $all needs a user allowed to read $all (by
// default only admins) on a secure server; Truncate writes streams'
// metadata, and it and subscriptions read it.
package esdb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
)

// Store is an event store on EventStoreDB. It is safe for concurrent use.
type Store struct {
	logger *slog.Logger
	conf   esdb.Configuration
	// maxAppendBytes is the append budget: appends larger by the
	// strictest count are split.
	maxAppendBytes int
	version        serverVersion

	// ctx ends on Close, ending every call and subscription under way.
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	cur    *clientRef
	closed bool
	// calls counts calls, subscriptions and client retirements under way,
	// for Close to wait for.
	calls sync.WaitGroup
}

// clientRef is a client and the calls under way inside it. The client
// must not be closed while calls run inside it: its Close closes a channel
// those calls may be sending on.
type clientRef struct {
	client *esdb.Client
	calls  sync.WaitGroup
}

// retireGrace bounds the wait for calls to leave a client being retired.
// A call can be stuck for good inside a client whose connection loop has
// stopped; only closing the client under it releases it (with a panic,
// which the call's guard turns into an error).
const retireGrace = 5 * time.Second

var _ eventstore.Store = (*Store)(nil)

// Option adjusts a Store.
type Option func(*Store)

// WithMaxAppendBytes sets the append budget (DefaultMaxAppendBytes when
// not set or not positive). It must not exceed the server's MaxAppendSize.
func WithMaxAppendBytes(n int) Option {
	return func(s *Store) {
		if n > 0 {
			s.maxAppendBytes = n
		}
	}
}

// Open connects to EventStoreDB at connString, checks the server's version
// and that it answers, by reading the head of $all. A nil logger discards
// logs. Besides the client's settings, the connection string may carry
// maxAppendBytes=N, the append budget (see WithMaxAppendBytes), which
// options override.
func Open(ctx context.Context, connString string, logger *slog.Logger, opts ...Option) (*Store, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "esdb")
	connString, budget, err := takeAppendBudget(connString)
	if err != nil {
		return nil, fmt.Errorf("esdb: parse connection string: %w", err)
	}
	conf, err := esdb.ParseConnectionString(connString)
	if err != nil {
		return nil, fmt.Errorf("esdb: parse connection string: %w", redactURLError(err))
	}
	conf.Logger = clientLogger(logger)
	if conf.DisableTLS && (conf.Username != "" || conf.Password != "") {
		logger.Warn("the connection string has credentials but tls=false: the client sends no credentials without TLS, so calls run unauthenticated",
			"user", conf.Username)
	}
	if conf.DnsDiscover || len(conf.GossipSeeds) > 0 {
		logger.Info("connecting to a cluster through gossip")
	}

	s := &Store{logger: logger, conf: *conf, maxAppendBytes: DefaultMaxAppendBytes}
	WithMaxAppendBytes(budget)(s)
	for _, o := range opts {
		o(s)
	}
	s.version, err = s.checkServer(ctx)
	if err != nil {
		return nil, fmt.Errorf("esdb: connect: %w", err)
	}
	logger.Info("connected", "server_version", s.version.String(), "max_append_bytes", s.maxAppendBytes)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	client, err := esdb.NewClient(s.newConf())
	if err != nil {
		s.cancel()
		return nil, fmt.Errorf("esdb: new client: %w", err)
	}
	s.cur = &clientRef{client: client}
	if err := s.ping(ctx); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("esdb: connect: %w", err)
	}
	return s, nil
}

// newConf returns a fresh copy of the configuration for a new client.
func (s *Store) newConf() *esdb.Configuration {
	c := s.conf
	return &c
}

// ping reads the head of $all, which makes the client discover the server.
// The client's discovery ignores contexts, so the wait for it does not.
func (s *Store) ping(ctx context.Context) error {
	ctx, cancel := s.bind(ctx)
	defer cancel()
	ref, err := s.acquire()
	if err != nil {
		return err
	}
	result := make(chan error, 1)
	go func() {
		defer s.release(ref)
		_, err := s.readAllBackward(leaderOnly(ctx), ref, esdb.End{}, 1)
		result <- err
	}()
	select {
	case err := <-result:
		if err != nil {
			return s.mapError(ctx, ref, err)
		}
		return nil
	case <-ctx.Done():
		return s.mapError(ctx, ref, ctx.Err())
	}
}

// bind returns a context that also ends on Close.
func (s *Store) bind(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.ctx, cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}

// acquire registers a call on the current client; release ends it.
func (s *Store) acquire() (*clientRef, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, eventstore.ErrClosed
	}
	s.calls.Add(1)
	s.cur.calls.Add(1)
	return s.cur, nil
}

func (s *Store) release(ref *clientRef) {
	ref.calls.Done()
	s.calls.Done()
}

// track registers work that Close must wait for, such as a subscription's
// goroutine; the returned func ends it.
func (s *Store) track() (func(), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, eventstore.ErrClosed
	}
	s.calls.Add(1)
	return s.calls.Done, nil
}

func (s *Store) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// renew replaces a client that closed itself: after a failed rediscovery
// (about a second of the server being away) the client refuses every call
// for good.
func (s *Store) renew(old *clientRef) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.cur != old {
		return
	}
	client, err := esdb.NewClient(s.newConf())
	if err != nil {
		s.logger.Error("cannot replace the closed client", "err", err)
		return
	}
	s.logger.Warn("the client lost its connection for good; replaced it with a new one")
	s.cur = &clientRef{client: client}
	s.calls.Add(1)
	go func() {
		defer s.calls.Done()
		s.retire(old)
	}()
}

// retire closes a client once the calls inside it are over, or after
// retireGrace if some are stuck.
func (s *Store) retire(ref *clientRef) {
	idle := make(chan struct{})
	go func() {
		ref.calls.Wait()
		close(idle)
	}()
	t := time.NewTimer(retireGrace)
	defer t.Stop()
	select {
	case <-idle:
	case <-t.C:
		s.logger.Warn("calls still stuck inside a client being closed; closing it under them")
	}
	// Closing a client whose connection loop has already stopped may panic
	// inside it, which changes nothing.
	_ = guard(ref.client.Close)
}

// Close ends every call and subscription under way and closes the client.
// Later calls return eventstore.ErrClosed; closing again does nothing.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	cur := s.cur
	s.mu.Unlock()
	s.cancel()
	s.retire(cur)
	s.calls.Wait()
	return nil
}

// guard runs f, turning a panic inside the client into an error.
func guard(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = clientPanicError{value: r}
		}
	}()
	return f()
}

// clientPanicError is a panic inside the client, caught.
type clientPanicError struct {
	value any
}

func (e clientPanicError) Error() string { return fmt.Sprintf("esdb client panicked: %v", e.value) }

// takeAppendBudget removes the maxAppendBytes setting, which the client
// does not know, from a connection string and returns it (0 if absent).
func takeAppendBudget(connString string) (string, int, error) {
	base, query, ok := strings.Cut(connString, "?")
	if !ok {
		return connString, 0, nil
	}
	var kept []string
	budget := 0
	for _, kv := range strings.Split(query, "&") {
		k, v, _ := strings.Cut(kv, "=")
		if !strings.EqualFold(k, "maxAppendBytes") {
			kept = append(kept, kv)
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return "", 0, fmt.Errorf("maxAppendBytes=%q: want a positive number of bytes", v)
		}
		budget = n
	}
	if len(kept) == 0 {
		return base, budget, nil
	}
	return base + "?" + strings.Join(kept, "&"), budget, nil
}

// redactURLError drops the connection string, which may hold a password,
// from a parse error.
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s: %w", ue.Op, ue.Err)
	}
	return err
}

// backoff is the wait between attempts to resubscribe.
type backoff struct {
	next time.Duration
}

const (
	backoffMin = 50 * time.Millisecond
	backoffMax = 5 * time.Second
)

func (b *backoff) reset() { b.next = 0 }

// wait sleeps for the next delay, or until ctx ends.
func (b *backoff) wait(ctx context.Context) error {
	if b.next == 0 {
		b.next = backoffMin
	}
	t := time.NewTimer(b.next)
	defer t.Stop()
	b.next = min(b.next*2, backoffMax)
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
