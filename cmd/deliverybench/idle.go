package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/authtoken"
	"github.com/harmony-postbox/postbox/adapters/clock"
	"github.com/harmony-postbox/postbox/adapters/hrpc"
	"github.com/harmony-postbox/postbox/adapters/seqext"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
	"github.com/harmony-postbox/postbox/gen/protocol/sync/v1/syncv1connect"
)

// stubChunk is how many stub peers listen at once.
const stubChunk = 1000

// idleResult is what the idle-peer measurement found.
type idleResult struct {
	peers, perPeer    int
	outbound, both    int64 // heap growth: after sending; after sending and receiving
	goroutines        [3]int
	setupIn, setupOut time.Duration
	// While the last chunk of peers' connections were open: their count,
	// and the heap and goroutines those connections held (both ends).
	connPeers, connGoroutines int
	connBytes                 int64
	heapBefore, heapEnd       uint64
}

// heap is HeapAlloc after collecting garbage until it stops shrinking
// (sync.Pool victims and finalizers need more than one cycle).
func heap() uint64 {
	var m runtime.MemStats
	prev := ^uint64(0)
	for range 5 {
		runtime.GC()
		runtime.ReadMemStats(&m)
		if m.HeapAlloc >= prev {
			break
		}
		prev = m.HeapAlloc
	}
	return m.HeapAlloc
}

// settledGoroutines waits until the goroutine count has not changed for a
// while (connections closing, loops exiting) and returns it.
func settledGoroutines() int {
	n, stable := runtime.NumGoroutine(), 0
	for deadline := time.Now().Add(10 * time.Second); stable < 20 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		if m := runtime.NumGoroutine(); m == n {
			stable++
		} else {
			n, stable = m, 0
		}
	}
	return n
}

// idleRun measures what idle peers cost a server (the hub): its heap and
// goroutines before it knows any peer; then after it has pushed perPeer
// events to each of `peers` peers; then after each peer has also pushed
// perPeer events to it; each time with everything delivered and recorded,
// connections closed and the engine idle. The peers are not full servers:
// each is a server ID and a key, which the hub learns as it would from its
// store at startup (peerkeys.Resolver.Remember) rather than by 10,000
// fetches under the fetch rate limit; their pushes to the hub are signed
// hRPC calls from a bench client, and what the hub pushes to them is
// answered by a stub listener per peer.
func idleRun(ctx context.Context, dir string, peers, perPeer, workers int, cfg nodeConfig, logger *slog.Logger, memprofile string) (idleResult, error) {
	res := idleResult{peers: peers, perPeer: perPeer}
	hub, err := startNode(ctx, "hub", dir, cfg, logger)
	if err != nil {
		return res, err
	}
	defer hub.close(ctx)
	res.goroutines[0] = settledGoroutines()
	res.heapBefore = heap()

	// Stub peers: a listener each, answering pushes.
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return res, err
	}
	var pushed atomic.Int64
	okReply, _ := proto.Marshal(&syncv1.PushResponse{})
	stub := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != syncv1connect.PostboxServicePushProcedure {
			http.NotFound(w, r)
			return
		}
		pushed.Add(1)
		w.Header().Set("Content-Type", hrpc.ContentType)
		w.Header().Set(hrpc.VersionHeader, hrpc.Version)
		_, _ = w.Write(okReply)
	})
	var lc net.ListenConfig
	// startStubs opens n stub peers; the returned function closes them,
	// and with them any connection the hub's client still holds.
	startStubs := func(n int) ([]domain.ServerID, func(), error) {
		var ids []domain.ServerID
		var srvs []*http.Server
		var once sync.Once
		closeAll := func() {
			once.Do(func() {
				var wg sync.WaitGroup
				for _, s := range srvs {
					wg.Go(func() { _ = s.Close() })
				}
				wg.Wait()
			})
		}
		for range n {
			ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
			if err != nil {
				closeAll()
				return nil, nil, fmt.Errorf("stub peer: %w", err)
			}
			srv := &http.Server{Handler: stub, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelError)}
			go func() { _ = srv.Serve(ln) }()
			id := domain.MustParseServerID(ln.Addr().String())
			ids = append(ids, id)
			srvs = append(srvs, srv)
			hub.resolver.Remember(id, pub)
		}
		return ids, closeAll, nil
	}

	// forEach runs fn on every one of n peers from workers goroutines.
	forEach := func(n int, fn func(i int) error) error {
		var next atomic.Int64
		errs := make([]error, workers)
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				for {
					i := int(next.Add(1)) - 1
					if i >= n || errs[w] != nil {
						return
					}
					errs[w] = fn(i)
				}
			})
		}
		wg.Wait()
		return errors.Join(errs...)
	}

	// Outbound: the hub sends perPeer events to every peer; wait until the
	// stubs have them all and the hub has recorded every push. The stubs
	// come and go a chunk at a time, so that their listeners and the idle
	// connections to them stay within the file descriptor limit; they keep
	// connections alive, as a Postbox server does.
	start := time.Now()
	ids := make([]domain.ServerID, 0, peers)
	for len(ids) < peers {
		n := min(stubChunk, peers-len(ids))
		last := len(ids)+n == peers
		var h0, h1 uint64
		var g0, g1 int
		if last {
			g0, h0 = settledGoroutines(), heap()
		}
		chunk, closeChunk, err := startStubs(n)
		if err != nil {
			return res, err
		}
		if last {
			g1, h1 = settledGoroutines(), heap()
		}
		pushed.Store(0)
		err = forEach(len(chunk), func(i int) error {
			for j := range perPeer {
				if _, err := hub.engine.Send(ctx, chunk[i], event(j)); err != nil {
					return err
				}
			}
			return nil
		})
		want := int64(len(chunk) * perPeer)
		if err == nil {
			err = waitFor(ctx, "the pushes to the stub peers", 5*time.Minute, func() (bool, error) {
				return pushed.Load() >= want, nil
			})
		}
		if err == nil {
			err = forEach(len(chunk), func(i int) error {
				pid, err := hub.peerOf(chunk[i])
				if err != nil {
					return err
				}
				return waitFor(ctx, "the hub's delivery records", time.Minute, func() (bool, error) {
					n, err := streamLen(ctx, hub.store, streams.Delivery(pid))
					return n >= uint64(perPeer), err
				})
			})
		}
		if err == nil && last {
			// The hub's client keeps the connections of its last pushes
			// alive (peerclient: 30 s idle timeout, 256 in all); what
			// they cost is what closing them frees, less the stubs'
			// listeners.
			g2, h2 := settledGoroutines(), heap()
			closeChunk()
			g3, h3 := settledGoroutines(), heap()
			res.connPeers = n
			res.connBytes = (int64(h2) - int64(h3)) - (int64(h1) - int64(h0))
			res.connGoroutines = (g2 - g3) - (g1 - g0)
		}
		closeChunk()
		if err != nil {
			return res, err
		}
		ids = append(ids, chunk...)
	}
	res.setupOut = time.Since(start)
	res.goroutines[1] = settledGoroutines()
	res.outbound = int64(heap()) - int64(res.heapBefore)

	// Inbound: every peer pushes perPeer events to the hub, signed as itself.
	start = time.Now()
	signer := authtoken.NewSigner(priv, clock.System{}, rand.Reader)
	client := peerHTTPClient()
	hubURL := hub.id.URL(false)
	err = forEach(peers, func(i int) error {
		for j := range perPeer {
			tok, err := signer.Extended(ids[i], hub.id, "")
			if err != nil {
				return err
			}
			req := &syncv1.PushRequest{Event: event(j)}
			seqext.SetPushSeq(req, uint64(j))
			if err := hrpc.Call(ctx, client, hubURL, syncv1connect.PostboxServicePushProcedure,
				http.Header{authtoken.HeaderName: {tok}}, req, &syncv1.PushResponse{}, 0); err != nil {
				return fmt.Errorf("push from %s: %w", ids[i], err)
			}
		}
		return nil
	})
	client.CloseIdleConnections()
	if err != nil {
		return res, err
	}
	res.setupIn = time.Since(start)

	res.goroutines[2] = settledGoroutines()
	res.heapEnd = heap()
	res.both = int64(res.heapEnd) - int64(res.heapBefore)
	if memprofile != "" {
		f, err := os.Create(memprofile)
		if err != nil {
			return res, err
		}
		defer f.Close()
		if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
			return res, err
		}
	}
	return res, nil
}
