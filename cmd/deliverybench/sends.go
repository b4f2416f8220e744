package main

// What a homeserver sees of sending: sustained SendBatch from concurrent
// clients of the admin API against the store's own many-writer append rate;
// latency from Send on one server to Watch on another at fixed offered
// rates; and the store's own read of the backlog a Pull drains.

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"

	"github.com/harmony-postbox/postbox/adapters/admin"
	"github.com/harmony-postbox/postbox/adapters/clock"
	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/httpserver"
	"github.com/harmony-postbox/postbox/adapters/metrics"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	"github.com/harmony-postbox/postbox/gen/postbox/admin/v1/adminv1connect"
)

// adminAPI is a node's admin API (Send, SendBatch, Watch) on a 127.0.0.1
// listener, and a client of it.
type adminAPI struct {
	srv    *httpserver.Server
	client adminv1connect.AdminServiceClient
	http   *http.Client
}

func (n *node) serveAdmin(ctx context.Context, logger *slog.Logger) (*adminAPI, error) {
	svc := admin.NewService(domain.NewIdentity(n.id, domain.DefaultAudienceGrace), n.pub, "deliverybench", n.engine, nil,
		n.store, n.registry, nil, nil)
	// The server's own admin handler, as postbox serve mounts it (with no
	// token), so that the bench measures what a homeserver gets.
	m := metrics.New(metrics.NewCounters(peerIDs{n.registry}), n.engine)
	h := httpserver.NewAdminHandler(ctx, svc, grpchealth.NewStaticChecker(), m, "", clock.System{}, logger)
	srv, err := httpserver.Listen(ctx, "admin", "127.0.0.1:0", h, httpserver.TLSFiles{}, logger)
	if err != nil {
		return nil, err
	}
	go func() { _ = srv.Serve() }()
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 512}}
	return &adminAPI{srv: srv, http: hc, client: adminv1connect.NewAdminServiceClient(hc, "http://"+srv.Addr().String())}, nil
}

// peerIDs names peers in metrics by their stable IDs, as the server does.
type peerIDs struct{ registry *registry.Registry }

func (p peerIDs) PeerIDOf(server domain.ServerID) (string, bool) {
	id, ok := p.registry.Lookup(server)
	return string(id), ok
}

func (a *adminAPI) close(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	a.http.CloseIdleConnections()
	_ = a.srv.Shutdown(ctx)
}

// storeWriters appends one outbox-sized event per append from many
// writers at once, each to its own stream: what the embedded store takes
// when its group commit has company, the ceiling of Sends from as many
// clients.
type storeWriters struct {
	s    *embedded.Store
	body []byte
	next []uint64
	ids  atomic.Uint64
}

func newStoreWriters(s *embedded.Store, writers int) (*storeWriters, error) {
	d, err := streams.NewCodec(rand.Reader).EncodeEnqueued(event(0))
	if err != nil {
		return nil, err
	}
	return &storeWriters{s: s, body: d.Data, next: make([]uint64, writers)}, nil
}

func (w *storeWriters) run(ctx context.Context, prof profiler, d time.Duration) (result, error) {
	var n atomic.Int64
	return timed(prof, n.Load, func() error {
		deadline := time.Now().Add(d)
		errs := make(chan error, len(w.next))
		for i := range w.next {
			go func() {
				stream := fmt.Sprintf("writers-%d", i)
				for time.Now().Before(deadline) {
					var id eventstore.EventID
					binary.BigEndian.PutUint64(id[:8], uint64(time.Now().UnixNano()))
					binary.BigEndian.PutUint64(id[8:], w.ids.Add(1))
					if _, err := w.s.Append(ctx, stream, expectAfter(w.next[i]), eventstore.EventData{ID: id, Type: streams.TypeEventEnqueued, Data: w.body}); err != nil {
						errs <- err
						return
					}
					w.next[i]++
					n.Add(1)
				}
				errs <- nil
			}()
		}
		var first error
		for range w.next {
			if err := <-errs; err != nil && first == nil {
				first = err
			}
		}
		return first
	})
}

func expectAfter(n uint64) eventstore.ExpectedRevision {
	if n == 0 {
		return eventstore.NoStream()
	}
	return eventstore.Exact(n - 1)
}

// batchSendRun measures sustained sending: clients callers of the sender's
// admin API each send batches of batch events for recv with SendBatch, one
// after the other, for d; the rate is events stored per second. Pushes to
// recv go on meanwhile, as they would; afterwards the run waits, untimed,
// until recv has them all, so the next measurement starts with no backlog.
func batchSendRun(ctx context.Context, prof profiler, send *node, api *adminAPI, recv *node, clients, batch int, d, timeout time.Duration) (result, error) {
	in0, err := recv.inboxLen(ctx, send.id)
	if err != nil {
		return result{}, err
	}
	var stored atomic.Int64
	var base atomic.Int64
	r, err := timed(prof, stored.Load, func() error {
		deadline := time.Now().Add(d)
		errs := make(chan error, clients)
		for range clients {
			go func() {
				req := &adminv1.SendBatchRequest{Sends: make([]*adminv1.SendRequest, batch)}
				for time.Now().Before(deadline) {
					first := int(base.Add(int64(batch))) - batch
					for i := range req.Sends {
						req.Sends[i] = &adminv1.SendRequest{To: recv.id.String(), Event: event(first + i)}
					}
					res, err := api.client.SendBatch(ctx, connect.NewRequest(req))
					if err != nil {
						errs <- err
						return
					}
					for _, r := range res.Msg.GetResults() {
						if r.GetError() != "" {
							errs <- errors.New(r.GetError())
							return
						}
					}
					stored.Add(int64(batch))
				}
				errs <- nil
			}()
		}
		var first error
		for range clients {
			if err := <-errs; err != nil && first == nil {
				first = err
			}
		}
		return first
	})
	if err != nil {
		return result{}, err
	}
	want := in0 + uint64(stored.Load())
	err = waitFor(ctx, "the receiver to take the batches", timeout, func() (bool, error) {
		in, err := recv.inboxLen(ctx, send.id)
		return in >= want, err
	})
	r.note = fmt.Sprintf("%d clients, %d events per SendBatch", clients, batch)
	return r, err
}

// liveWatch follows the receiver's Watch and notes when each live event
// (by user ID) arrives.
type liveWatch struct {
	mu      sync.Mutex
	arrived map[uint64]time.Time
	last    uint64 // position of the last event watched
	err     error  // why the Watch ended, if it did
	notify  chan struct{}
	ctx     context.Context // of the Watch calls
	api     *adminAPI       // the receiver's
}

func startLiveWatch(ctx context.Context, api *adminAPI) (*liveWatch, error) {
	w := &liveWatch{arrived: map[uint64]time.Time{}, notify: make(chan struct{}, 1), ctx: ctx, api: api}
	return w, w.follow()
}

// renew watches again, after the last event watched, if the Watch ended
// (the admin listener's read and write timeouts end a call of more than a
// minute).
func (w *liveWatch) renew() error {
	w.mu.Lock()
	ended := w.err != nil
	w.err = nil
	w.mu.Unlock()
	if !ended {
		return nil
	}
	return w.follow()
}

func (w *liveWatch) follow() error {
	w.mu.Lock()
	after := w.last
	w.mu.Unlock()
	stream, err := w.api.client.Watch(w.ctx, connect.NewRequest(&adminv1.WatchRequest{Follow: true, After: after}))
	if err != nil {
		return err
	}
	go func() {
		defer stream.Close()
		defer func() {
			w.mu.Lock()
			w.err = fmt.Errorf("the receiver's Watch ended: %w", cmpOr(stream.Err(), errors.New("no error")))
			w.mu.Unlock()
			select {
			case w.notify <- struct{}{}:
			default:
			}
		}()
		for stream.Receive() {
			ev := stream.Msg().GetEvent()
			if ev == nil {
				continue
			}
			now := time.Now()
			w.mu.Lock()
			w.arrived[ev.GetEvent().GetUserAddedToGuild().GetUserId()] = now
			w.last = ev.GetPosition()
			w.mu.Unlock()
			select {
			case w.notify <- struct{}{}:
			default:
			}
		}
	}()
	return nil
}

// liveResult is the latency from the moment each send was due to its
// arrival at the receiver's Watch.
type liveResult struct {
	rate          float64 // offered, events/s
	p50, p99, max time.Duration
	sent          int
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// liveClients is how many connections the live phase's homeserver sends
// on, each one Send at a time.
const liveClients = 64

// liveRun offers rate sends per second for d, each due at its own moment
// and handed then to the first free one of liveClients clients of the
// sender's admin API, whether or not earlier sends have returned (an open
// loop: a slow server does not slow the offer, and the time a send waits
// for a free client counts), and measures each event's latency from its
// due time to the receiver's Watch.
func liveRun(ctx context.Context, api *adminAPI, recv *node, watch *liveWatch, firstUser uint64, rate float64, d, timeout time.Duration) (liveResult, error) {
	if err := watch.renew(); err != nil {
		return liveResult{}, err
	}
	total := max(int(rate*d.Seconds()), 1)
	due := make([]time.Time, total)
	interval := time.Duration(float64(time.Second) / rate)
	start := time.Now().Add(10 * time.Millisecond)
	for i := range due {
		due[i] = start.Add(time.Duration(i) * interval)
	}
	jobs := make(chan uint64, total)
	errs := make(chan error, liveClients)
	for range liveClients {
		go func() {
			var first error
			for user := range jobs {
				ev := event(0)
				ev.GetUserAddedToGuild().UserId = user
				if _, err := api.client.Send(ctx, connect.NewRequest(&adminv1.SendRequest{To: recv.id.String(), Event: ev})); err != nil && first == nil {
					first = err
				}
			}
			errs <- first
		}()
	}
	for i := 0; i < total; {
		if wait := time.Until(due[i]); wait > 0 {
			time.Sleep(wait)
		}
		for now := time.Now(); i < total && !due[i].After(now); i++ {
			jobs <- firstUser + uint64(i)
		}
	}
	close(jobs)
	var sendErr error
	for range liveClients {
		sendErr = cmpOr(sendErr, <-errs)
	}
	if sendErr != nil {
		return liveResult{}, sendErr
	}
	deadline := time.After(timeout)
	var lat []time.Duration
	for {
		watch.mu.Lock()
		lat = lat[:0]
		for i := range total {
			if at, ok := watch.arrived[firstUser+uint64(i)]; ok {
				lat = append(lat, at.Sub(due[i]))
			}
		}
		werr := watch.err
		watch.mu.Unlock()
		if len(lat) == total {
			break
		}
		if werr != nil {
			if err := watch.renew(); err != nil {
				return liveResult{}, fmt.Errorf("%w; watching again: %w", werr, err)
			}
			continue
		}
		select {
		case <-watch.notify:
		case <-deadline:
			return liveResult{}, fmt.Errorf("live %.0f/s: %d of %d events watched after %v", rate, len(lat), total, timeout)
		case <-ctx.Done():
			return liveResult{}, ctx.Err()
		}
	}
	slices.Sort(lat)
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(math.Ceil(p*float64(len(lat))))-1)] }
	return liveResult{rate: rate, p50: pct(0.50), p99: pct(0.99), max: lat[len(lat)-1], sent: total}, nil
}

// backlogReadRun reads the last backlog events of the sender's outbox for
// recv through a subscription (the store's catch-up read, as storebench
// measures it), from the event before them until it has them all: the
// store's own read of the events a Pull drain moves.
func backlogReadRun(ctx context.Context, prof profiler, send, recv *node, backlog int) (result, error) {
	pid, err := send.peerOf(recv.id)
	if err != nil {
		return result{}, err
	}
	stream := streams.Outbox(pid)
	head, err := streamLen(ctx, send.store, stream)
	if err != nil {
		return result{}, err
	}
	if head < uint64(backlog) {
		return result{}, fmt.Errorf("the outbox holds %d events, fewer than the backlog", head)
	}
	if head <= uint64(backlog) {
		return result{}, fmt.Errorf("the outbox holds %d events: none before the backlog to start after", head)
	}
	before, err := send.store.ReadStream(ctx, stream, head-uint64(backlog)-1, 1)
	if err != nil || len(before) != 1 {
		return result{}, fmt.Errorf("read %s before the backlog: %d events, %w", stream, len(before), err)
	}
	var n int64
	return timed(prof, func() int64 { return n }, func() error {
		sub, err := send.store.Subscribe(ctx, eventstore.Filter{StreamPrefix: stream}, eventstore.After(before[0].Position))
		if err != nil {
			return err
		}
		defer sub.Close()
		for n < int64(backlog) {
			item, err := sub.Recv(ctx)
			if err != nil {
				return err
			}
			if item.CaughtUp {
				return fmt.Errorf("caught up after %d of %d events", n, backlog)
			}
			if item.Event.Stream == stream {
				n++
			}
		}
		return nil
	})
}
