package main

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/harmony-postbox/postbox/adapters/authtoken"
	"github.com/harmony-postbox/postbox/adapters/clock"
	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/hrpc"
	"github.com/harmony-postbox/postbox/adapters/httpserver"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
	"github.com/harmony-postbox/postbox/gen/protocol/sync/v1/syncv1connect"
)

// result is one measurement: a rate, and the CPU time the whole process
// spent per unit of work (every server in the bench shares the CPUs).
type result struct {
	rate   float64
	cpuPer time.Duration
	note   string
}

// event is the i-th bench event: a small UserAddedToGuild, like most of
// what federation carries.
func event(i int) *syncv1.Event {
	return &syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{UserAddedToGuild: &syncv1.Event_UserAddedToGuild{
		UserId: uint64(1_000_000 + i), GuildId: 4242,
	}}}
}

// profiler starts profiling the timed part of a measurement and returns
// what stops it.
type profiler func() (stop func())

func noProfile() func() { return func() {} }

// timed measures n units of work done by fn, profiled by prof.
func timed(prof profiler, n func() int64, fn func() error) (result, error) {
	stop := prof()
	cpu0, t0 := cpuTime(), time.Now()
	err := fn()
	elapsed, cpu := time.Since(t0), cpuTime()-cpu0
	stop()
	if err != nil {
		return result{}, err
	}
	units := n()
	if units <= 0 {
		return result{}, errors.New("no work done")
	}
	return result{rate: float64(units) / elapsed.Seconds(), cpuPer: cpu / time.Duration(units)}, nil
}

// storeBaseline appends one small event per call, sequentially, to the
// embedded store: each append is one transaction and one sync, the best a
// receiver that applies one push at a time can do. The body is an inbox
// record, the size a received push writes.
type storeBaseline struct {
	s    *embedded.Store
	body []byte
	next uint64
	ids  uint64
}

func openStoreBaseline(ctx context.Context, dir string, logger *slog.Logger) (*storeBaseline, error) {
	s, err := embedded.Open(ctx, dir, embedded.Options{Logger: logger})
	if err != nil {
		return nil, err
	}
	seq := uint64(7)
	d, err := streams.NewCodecWithBodies(rand.Reader, streams.BinaryBodies).EncodeReceived(streams.Received{Event: event(0), Via: eventsv1.EventReceived_VIA_PUSH, SenderSeq: &seq})
	if err != nil {
		_ = s.Close()
		return nil, err
	}
	return &storeBaseline{s: s, body: d.Data}, nil
}

func (b *storeBaseline) run(ctx context.Context, prof profiler, d time.Duration) (result, error) {
	var n int64
	return timed(prof, func() int64 { return n }, func() error {
		for deadline := time.Now().Add(d); time.Now().Before(deadline); {
			expected := eventstore.NoStream()
			if b.next > 0 {
				expected = eventstore.Exact(b.next - 1)
			}
			b.ids++
			var id eventstore.EventID
			binary.BigEndian.PutUint64(id[:8], uint64(time.Now().UnixNano()))
			binary.BigEndian.PutUint64(id[8:], b.ids)
			if _, err := b.s.Append(ctx, "baseline", expected, eventstore.EventData{ID: id, Type: streams.TypeEventReceived, Data: b.body}); err != nil {
				return err
			}
			b.next++
			n++
		}
		return nil
	})
}

// noopServer serves one hRPC procedure that does nothing, on the same
// listener setup as the federation listener (httpserver.Listen).
type noopServer struct {
	srv  *httpserver.Server
	base string
	// header is a real signed Authorization header, sent but not checked,
	// so requests weigh what pushes weigh.
	header http.Header
}

func startNoop(ctx context.Context, logger *slog.Logger) (*noopServer, error) {
	h := hrpc.NewHandler(logger, hrpc.Options{},
		hrpc.Unary(syncv1connect.PostboxServicePushProcedure,
			func(context.Context, *connect.Request[syncv1.PushRequest]) (*connect.Response[syncv1.PushResponse], error) {
				return connect.NewResponse(&syncv1.PushResponse{}), nil
			}))
	srv, err := httpserver.Listen(ctx, "noop", "127.0.0.1:0", h, httpserver.TLSFiles{}, logger)
	if err != nil {
		return nil, err
	}
	go func() { _ = srv.Serve() }()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	id := domain.MustParseServerID(srv.Addr().String())
	tok, err := authtoken.NewSigner(priv, clock.System{}, rand.Reader).Extended(id, id, "")
	if err != nil {
		return nil, err
	}
	return &noopServer{srv: srv, base: id.URL(false), header: http.Header{authtoken.HeaderName: {tok}}}, nil
}

func (s *noopServer) close(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
}

// peerHTTPClient is an http.Client with peerclient's transport settings
// (peerclient keeps its own unexported): HTTP/1.1 and HTTP/2, 256 idle
// connections in all and 16 per host, 30 s idle timeout.
func peerHTTPClient() *http.Client {
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetHTTP2(true)
	return &http.Client{Transport: &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		Protocols:           p,
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     30 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
	}}
}

// noopCallers holds one client per caller, as each sender server has its
// own peer client.
type noopCallers struct {
	s       *noopServer
	clients []*http.Client
}

func newNoopCallers(s *noopServer, n int) *noopCallers {
	c := &noopCallers{s: s}
	for range n {
		c.clients = append(c.clients, peerHTTPClient())
	}
	return c
}

func (c *noopCallers) close() {
	for _, cl := range c.clients {
		cl.CloseIdleConnections()
	}
}

// run makes calls from callers concurrent callers for d.
func (c *noopCallers) run(ctx context.Context, prof profiler, callers int, d time.Duration) (result, error) {
	var total atomic.Int64
	return timed(prof, total.Load, func() error {
		deadline := time.Now().Add(d)
		errs := make([]error, callers)
		var wg sync.WaitGroup
		for i := range callers {
			client := c.clients[i]
			wg.Go(func() {
				req := &syncv1.PushRequest{Event: event(i)}
				for n := 0; time.Now().Before(deadline); n++ {
					if err := hrpc.Call(ctx, client, c.s.base, syncv1connect.PostboxServicePushProcedure, c.s.header, req, &syncv1.PushResponse{}, 0); err != nil {
						errs[i] = err
						return
					}
					total.Add(1)
				}
			})
		}
		wg.Wait()
		return errors.Join(errs...)
	})
}

// sending is how the events of a push measurement reach the senders.
type sending int

const (
	// backlog: all but the last event are in the outbox beforehand; the
	// last is sent with Send, which starts the push loop.
	backlog sending = iota
	// oneByOne: the clock starts before the first event exists; each
	// sender's caller sends its events one after the other with Send, each
	// durable in the outbox before the next, while pushes go out.
	oneByOne
	// manyCallers: as oneByOne, but each sender's events are sent by
	// several callers at once (callers of pushRun), each one by one: Sends
	// to one peer that meet go in one outbox append.
	manyCallers
)

// pushRun measures delivery by push from each sender to recv, perSender
// events each: the clock runs from the first Send to the moment recv has
// accepted every event (durable in its inbox). Afterwards it waits,
// untimed, for the senders' delivery records and checks the inbox streams.
func pushRun(ctx context.Context, prof profiler, senders []*node, recv *node, perSender int, how sending, timeout time.Duration, callers ...int) (result, error) {
	type before struct{ inbox, outbox uint64 }
	was := make([]before, len(senders))
	for i, s := range senders {
		if how == backlog {
			if err := s.preload(ctx, recv.id, perSender-1, event); err != nil {
				return result{}, err
			}
		}
		in, err := recv.inboxLen(ctx, s.id)
		if err != nil {
			return result{}, err
		}
		pid, err := s.peerOf(recv.id)
		if err != nil {
			return result{}, err
		}
		out, err := streamLen(ctx, s.store, streams.Outbox(pid))
		if err != nil {
			return result{}, err
		}
		if how == backlog {
			out++ // the event Send adds
		} else {
			out += uint64(perSender)
		}
		was[i] = before{in, out}
	}
	total := int64(perSender * len(senders))
	pushes0 := recv.pushes.Load()
	commits0 := recv.store.Stats()
	var senderCommits0 uint64
	for _, s := range senders {
		senderCommits0 += s.store.Stats().Commits
	}
	done := recv.accepted.await(total)
	var sendsTook, allTook time.Duration
	r, err := timed(prof, func() int64 { return total }, func() error {
		start := time.Now()
		defer func() { allTook = time.Since(start) }()
		errs := make(chan error, len(senders))
		for _, s := range senders {
			go s.as(ctx, func(ctx context.Context) {
				if how == backlog {
					_, err := s.engine.Send(ctx, recv.id, event(perSender-1))
					errs <- err
					return
				}
				if how == manyCallers {
					n := max(callers[0], 1)
					callerErrs := make(chan error, n)
					for c := range n {
						go func() {
							for i := c; i < perSender; i += n {
								if _, err := s.engine.Send(ctx, recv.id, event(i)); err != nil {
									callerErrs <- err
									return
								}
							}
							callerErrs <- nil
						}()
					}
					var first error
					for range n {
						first = cmp.Or(first, <-callerErrs)
					}
					errs <- first
					return
				}
				for i := range perSender {
					if _, err := s.engine.Send(ctx, recv.id, event(i)); err != nil {
						errs <- err
						return
					}
				}
				errs <- nil
			})
		}
		for range senders {
			if err := <-errs; err != nil {
				return err
			}
		}
		sendsTook = time.Since(start)
		select {
		case <-done:
			return nil
		case <-time.After(timeout):
			return fmt.Errorf("push: %d of %d events accepted after %v", recv.accepted.n.Load(), total, timeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	if err != nil {
		return result{}, err
	}
	commits := recv.store.Stats()
	var senderCommits uint64
	for _, s := range senders {
		senderCommits += s.store.Stats().Commits
	}
	if c := commits.Commits - commits0.Commits; c > 0 {
		// Commits are syncs: what the disk does per delivered event. The
		// senders' are their delivery records (one append per push) and
		// the last event's enqueue.
		r.note = fmt.Sprintf("%.1f events per push; receiver: %.1f appends per commit; senders: %.2f commits per event",
			float64(total)/float64(max(recv.pushes.Load()-pushes0, 1)),
			float64(commits.Appends-commits0.Appends)/float64(c), float64(senderCommits-senderCommits0)/float64(total))
		if how != backlog {
			// How long the callers took to send it all, against the whole
			// delivery: near 100% means delivery kept pace with sending.
			r.note += fmt.Sprintf("; sends done at %.0f%% of the time", 100*sendsTook.Seconds()/allTook.Seconds())
		}
	}
	// Untimed: every push recorded by its sender, every event in the inbox.
	for i, s := range senders {
		pid, _ := s.peerOf(recv.id)
		want := was[i].outbox
		if err := waitFor(ctx, "the senders' delivery records", timeout, func() (bool, error) {
			n, err := pushedThrough(ctx, s.store, streams.Delivery(pid))
			return n >= want, err
		}); err != nil {
			return result{}, err
		}
		in, err := recv.inboxLen(ctx, s.id)
		if err != nil {
			return result{}, err
		}
		if in != was[i].inbox+uint64(perSender) {
			return result{}, fmt.Errorf("inbox from %s grew by %d, want %d", s.id, in-was[i].inbox, perSender)
		}
	}
	return r, nil
}

// pullRun measures draining a backlog by Pull: recv goes down (503), the
// sender's push of one event fails until the sender enters queue mode,
// the backlog is completed in the sender's outbox, recv comes back up,
// and the clock runs while recv pulls (PullFrom: again and again until a
// reply is empty, acknowledging as it goes) until its inbox holds the
// whole backlog.
func pullRun(ctx context.Context, prof profiler, send, recv *node, backlog int, timeout time.Duration) (result, error) {
	if backlog < 2 {
		return result{}, errors.New("the backlog must be at least 2 events")
	}
	pid, err := send.peerOf(recv.id)
	if err != nil {
		return result{}, err
	}
	recv.door.down.Store(true)
	send.as(ctx, func(ctx context.Context) { _, err = send.engine.Send(ctx, recv.id, event(0)) })
	if err != nil {
		return result{}, err
	}
	err = waitFor(ctx, "queue mode", timeout, func() (bool, error) {
		t, err := lastType(ctx, send.store, streams.Delivery(pid))
		return t == streams.TypeQueueModeEntered, err
	})
	if err == nil {
		err = send.preload(ctx, recv.id, backlog-2, event)
	}
	if err == nil {
		send.as(ctx, func(ctx context.Context) { _, err = send.engine.Send(ctx, recv.id, event(backlog-1)) })
	}
	recv.door.down.Store(false)
	if err != nil {
		return result{}, err
	}
	in0, err := recv.inboxLen(ctx, send.id)
	if err != nil {
		return result{}, err
	}
	pullCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	r, err := timed(prof, func() int64 { return int64(backlog) }, func() error {
		var err error
		recv.as(pullCtx, func(ctx context.Context) { err = recv.engine.PullFrom(ctx, send.id) })
		return err
	})
	if err != nil {
		return result{}, err
	}
	in, err := recv.inboxLen(ctx, send.id)
	if err != nil {
		return result{}, err
	}
	if in-in0 != uint64(backlog) {
		return result{}, fmt.Errorf("pull: inbox grew by %d, want %d", in-in0, backlog)
	}
	if t, err := lastType(ctx, send.store, streams.Delivery(pid)); err != nil || t != streams.TypePushResumed {
		return result{}, fmt.Errorf("pull: the sender's last delivery record is %q (%v), want %s", t, err, streams.TypePushResumed)
	}
	return r, nil
}
