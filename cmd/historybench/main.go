// Command historybench measures what a long delivery history costs a start:
// it writes delivery histories directly into an embedded store (outbox
// events, one EventPushed record each, and the snapshots the engine writes
// every 256 records), then starts the delivery engine on it and prints the
// start-up time, the records read, the heap after start and the store's
// size; then again after retention removed what was delivered. It runs a
// small history and a long one, to compare. Not part of CI: the long one
// writes tens of millions of rows.
package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/harmony-postbox/postbox/adapters/clock"
	"github.com/harmony-postbox/postbox/adapters/delivery"
	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "historybench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("historybench", flag.ContinueOnError)
	small := fs.Int("small", 10_000, "delivery records of the small history")
	large := fs.Int("records", 10_000_000, "delivery records of the long history")
	peers := fs.Int("peers", 1000, "peers the records are spread over")
	dir := fs.String("dir", "", "where to write the stores (default: a temporary directory, removed after)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the long history's first start-up to this file")
	rounds := fs.Int("rounds", 5, "start-ups of each history before retention; the ratio compares their medians")
	if err := fs.Parse(args); err != nil {
		return err
	}
	root := *dir
	if root == "" {
		d, err := os.MkdirTemp("", "historybench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		root = d
	}
	fmt.Fprintf(out, "%-10s %-16s %12s %12s %10s %12s\n", "records", "phase", "start-up", "read", "heap MiB", "store MiB")
	var before [2]time.Duration
	for i, n := range []int{*small, *large} {
		profile := ""
		if i == 1 {
			profile = *cpuProfile
		}
		took, err := bench(ctx, out, fmt.Sprintf("%s/%d", root, n), n, *peers, profile, max(*rounds, 1))
		if err != nil {
			return err
		}
		before[i] = took
	}
	fmt.Fprintf(out, "start-up, %d records against %d: %.2fx, medians of %d (target: within 2x)\n", *large, *small,
		float64(before[1])/float64(max(before[0], 1)), max(*rounds, 1))
	return nil
}

// bench writes a history of records and starts the engine on it, before
// (rounds times), during and after retention; it returns the median of the
// start-ups before retention.
func bench(ctx context.Context, out io.Writer, dir string, records, peers int, profile string, rounds int) (time.Duration, error) {
	began := time.Now()
	if err := write(ctx, dir, records, peers); err != nil {
		return 0, err
	}
	fmt.Fprintf(os.Stderr, "historybench: %d records written in %v\n", records, time.Since(began).Round(time.Millisecond))
	var befores []time.Duration
	for range rounds {
		took, err := start(ctx, out, dir, records, "before", 0, peers, profile)
		if err != nil {
			return 0, err
		}
		profile = ""
		befores = append(befores, took)
	}
	for _, phase := range []struct {
		name   string
		retain time.Duration
	}{{"retention", time.Millisecond}, {"after", 0}} {
		if _, err := start(ctx, out, dir, records, phase.name, phase.retain, peers, ""); err != nil {
			return 0, err
		}
	}
	slices.Sort(befores)
	return befores[len(befores)/2], nil
}

// write stores, per peer, records/peers outbox events, each delivered by
// one push, and a delivery snapshot every 256 records as the engine does.
func write(ctx context.Context, dir string, records, peers int) error {
	store, err := embedded.Open(ctx, dir, embedded.Options{})
	if err != nil {
		return err
	}
	defer store.Close()
	codec := streams.NewCodecWithBodies(rand.Reader, streams.BinaryBodies)
	reg, err := registry.Load(ctx, store, codec, rand.Reader, nil)
	if err != nil {
		return err
	}
	db, err := streams.DatabaseID(ctx, store, rand.Reader)
	if err != nil {
		return err
	}
	per := records / peers
	ids := make([]domain.PeerID, peers)
	for i := range ids {
		if ids[i], err = reg.Register(ctx, domain.MustParseServerID(fmt.Sprintf("p%d.example:2289", i))); err != nil {
			return err
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, peers)
	work := make(chan domain.PeerID)
	for range runtime.GOMAXPROCS(0) * 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range work {
				if err := writePeer(ctx, store, codec, db, id, per); err != nil {
					errs <- err
				}
			}
		}()
	}
	for _, id := range ids {
		work <- id
	}
	close(work)
	wg.Wait()
	close(errs)
	return <-errs
}

const snapshotEvery = 256

func writePeer(ctx context.Context, store *embedded.Store, codec *streams.Codec, db string, id domain.PeerID, n int) error {
	const batch = 1024
	var o domain.Outbox
	outbox, deliveryStream := streams.Outbox(id), streams.Delivery(id)
	for from := 0; from < n; from += batch {
		to := min(from+batch, n)
		evs := make([]eventstore.EventData, 0, to-from)
		recs := make([]domain.DeliveryEvent, 0, to-from)
		for seq := from; seq < to; seq++ {
			d, err := codec.EncodeEnqueued(&syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: uint64(seq), GuildId: 1}}})
			if err != nil {
				return err
			}
			evs = append(evs, d)
			recs = append(recs, domain.EventPushed{Seq: uint64(seq), Attempts: 1})
		}
		if _, err := store.Append(ctx, outbox, expectAfter(uint64(from)), evs...); err != nil {
			return err
		}
		data, err := codec.EncodeDelivery(recs...)
		if err != nil {
			return err
		}
		if _, err := store.Append(ctx, deliveryStream, expectAfter(uint64(from)), data...); err != nil {
			return err
		}
		for i, r := range recs {
			o.Apply(r)
			o.Stored(uint64(from + i))
			if rev := uint64(from + i + 1); rev%snapshotEvery == 0 {
				s, err := codec.EncodeSnapshot(streams.NewOutboxSnapshot(db, deliveryStream, rev, o))
				if err != nil {
					return err
				}
				if _, err := store.Append(ctx, streams.DeliverySnapshot(id), eventstore.Any(), s); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func expectAfter(n uint64) eventstore.ExpectedRevision {
	if n == 0 {
		return eventstore.NoStream()
	}
	return eventstore.Exact(n - 1)
}

// idle is a peer client with nothing to say: every event was delivered.
type idle struct{}

func (idle) Push(context.Context, domain.ServerID, uint64, []*syncv1.Event) (domain.PushResult, error) {
	return domain.PushResult{}, fmt.Errorf("nothing should be pushed")
}

func (idle) Pull(context.Context, domain.ServerID, *uint64) (delivery.PullBatch, error) {
	return delivery.PullBatch{}, nil
}

// recordsRead picks records=N out of the engine's start log line.
type recordsRead struct {
	mu   sync.Mutex
	line string
}

func (r *recordsRead) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s := string(p); strings.Contains(s, "delivery state rebuilt") {
		r.line = s
	}
	return len(p), nil
}

func (r *recordsRead) records() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range strings.Fields(r.line) {
		if v, ok := strings.CutPrefix(f, "records="); ok {
			return v
		}
	}
	return "?"
}

func start(ctx context.Context, out io.Writer, dir string, records int, phase string, retain time.Duration, peers int, profile string) (time.Duration, error) {
	runtime.GC()
	stopProfile := func() {}
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return 0, err
		}
		stopProfile = pprof.StopCPUProfile
	}
	began := time.Now()
	store, err := embedded.Open(ctx, dir, embedded.Options{})
	if err != nil {
		stopProfile()
		return 0, err
	}
	defer store.Close()
	opened := time.Since(began)
	codec := streams.NewCodecWithBodies(rand.Reader, streams.BinaryBodies)
	log := &recordsRead{}
	logger := slog.New(slog.NewTextHandler(log, nil))
	reg, err := registry.Load(ctx, store, codec, rand.Reader, logger)
	if err != nil {
		stopProfile()
		return 0, err
	}
	cfg := delivery.DefaultConfig()
	cfg.ResumeProbe, cfg.PullInterval, cfg.RetainDelivered = false, time.Hour, retain
	engine := delivery.New(cfg, store, codec, reg, idle{}, clock.System{}, logger, rand.Reader)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- engine.Run(runCtx) }()
	select {
	case <-engine.Ready():
	case err := <-done:
		cancel()
		stopProfile()
		return 0, err
	}
	took := time.Since(began)
	stopProfile()
	fmt.Fprintf(os.Stderr, "historybench: %d records, %s: store opened in %v, engine ready %v later\n", records, phase,
		opened.Round(time.Millisecond), (took - opened).Round(time.Millisecond))
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	if retain > 0 {
		// Wait until every peer's outbox is down to its last event.
		for _, p := range reg.Peers() {
			for {
				tb, err := store.TruncatedBefore(ctx, streams.Outbox(p.ID))
				if err != nil {
					cancel()
					return 0, err
				}
				if int(tb) >= records/peers-1 {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
	cancel()
	if err := <-done; err != nil {
		return 0, err
	}
	size, err := store.DiskUsage()
	if err != nil {
		return 0, err
	}
	fmt.Fprintf(out, "%-10d %-16s %12v %12s %10.1f %12.1f\n", records, phase, took.Round(time.Millisecond), log.records(),
		float64(m.HeapAlloc)/(1<<20), float64(size)/(1<<20))
	return took, nil
}
