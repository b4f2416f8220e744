// Command deliverybench measures the delivery engine end to end, in one
// run, on this machine: Postbox servers assembled in-process (each with its
// own embedded store, engine, verifier and hRPC listener on 127.0.0.1)
// deliver to one receiver by push, from one sender and from many senders at
// once (so the receiver groups the syncs of concurrent pushes into shared
// commits), and drain a large backlog by Pull. Baselines are measured in
// the same rounds: the embedded store's one-append-per-transaction rate and
// a no-op hRPC call over the same transport. Last, the memory and
// goroutines an idle peer costs, with many peers. Rates are medians of
// several interleaved rounds, because a shared machine is noisy; every
// server shares the same CPUs and disk, which a real federation does not.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/harmony-postbox/postbox/adapters/delivery"
	"github.com/harmony-postbox/postbox/domain"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "deliverybench:", err)
		}
		os.Exit(1)
	}
}

type config struct {
	phases           map[string]bool // nil: all
	dir              string
	keep             bool
	rounds           int
	duration         time.Duration
	events           int
	eventsOne        int
	peers            int
	eventsPerPeer    int
	eventsPerPeerOne int
	backlog          int
	idlePeers        int
	idleEvents       int
	timeout          time.Duration
	cpuprofile       string
	memprofile       string
	verbose          bool
	writers          int
	clients          int
	batch            int
	liveRates        []float64
	liveDuration     time.Duration
}

func run(ctx context.Context, args []string, out io.Writer) error {
	var c config
	fs := flag.NewFlagSet("deliverybench", flag.ContinueOnError)
	fs.StringVar(&c.dir, "dir", "", "directory in which each run makes a new directory for the servers' data (default: the system's temporary directory)")
	fs.BoolVar(&c.keep, "keep", false, "keep the data after the run")
	fs.IntVar(&c.rounds, "rounds", 5, "rounds of every rate measurement (the median is reported)")
	fs.DurationVar(&c.duration, "duration", time.Second, "length of each baseline measurement")
	fs.IntVar(&c.events, "events", 20000, "events pushed by the single sender in each 1-peer push measurement of a backlog")
	fs.IntVar(&c.eventsOne, "events-one", 2000, "the same, in the measurements of one event per push and of events sent one by one")
	fs.IntVar(&c.peers, "peers", 32, "senders pushing into one receiver at once, and concurrent callers of the no-op baseline")
	fs.IntVar(&c.eventsPerPeer, "events-per-peer", 1500, "events pushed by each sender in each many-peer push measurement of a backlog")
	fs.IntVar(&c.eventsPerPeerOne, "events-per-peer-one", 150, "the same, in the measurements of one event per push and of events sent one by one")
	fs.IntVar(&c.backlog, "backlog", 100000, "events in the queue the receiver drains by Pull")
	fs.IntVar(&c.idlePeers, "idle-peers", 10000, "peers of the server whose idle memory is measured (0: skip)")
	fs.IntVar(&c.idleEvents, "idle-events", 3, "events delivered each way per idle peer")
	fs.DurationVar(&c.timeout, "timeout", 2*time.Minute, "longest wait for any one delivery before the run fails")
	fs.StringVar(&c.cpuprofile, "cpuprofile", "", "write a CPU profile of each measured phase of each round to `prefix`.<phase>.r<round>.pprof (the live phase: live<rate>)\n(merge rounds: go tool pprof prefix.pushN.r*.pprof; split servers: -tagfocus=server=receiver or =sender)")
	fs.StringVar(&c.memprofile, "memprofile", "", "write a heap profile of the idle server with all its peers to `file`")
	fs.BoolVar(&c.verbose, "v", false, "log the servers' warnings to stderr")
	fs.IntVar(&c.writers, "writers", 64, "writers of the store's many-writer append baseline")
	fs.IntVar(&c.clients, "clients", 64, "concurrent admin API clients sending with SendBatch")
	fs.IntVar(&c.batch, "batch", 64, "events per SendBatch")
	phases := fs.String("phases", "", "measure only these phases, comma-separated (store, push1, push1single, push1stream, push1callers, noop1, noopN, pushN, pushNsingle, pushNstream, pull, backlogread, storeN, sendbatch, live); default: all")
	liveRates := fs.String("live-rates", "100,1000,4000", "send rates offered in the live phase, events/s, comma-separated; the first and last are compared")
	fs.DurationVar(&c.liveDuration, "live-duration", 2*time.Second, "length of each offered rate in each round")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *phases != "" {
		c.phases = map[string]bool{}
		for _, ph := range strings.Split(*phases, ",") {
			c.phases[strings.TrimSpace(ph)] = true
		}
	}
	for _, f := range strings.Split(*liveRates, ",") {
		r, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || r <= 0 {
			return fmt.Errorf("-live-rates: %q is not a positive rate", f)
		}
		c.liveRates = append(c.liveRates, r)
	}
	if c.writers < 1 || c.clients < 1 || c.batch < 1 || c.batch > domain.MaxBatchSends || c.liveDuration <= 0 {
		return fmt.Errorf("-writers, -clients and -live-duration must be positive, -batch 1 to %d", domain.MaxBatchSends)
	}
	if c.rounds < 1 || c.duration <= 0 || c.events < 1 || c.eventsOne < 1 || c.peers < 1 || c.eventsPerPeer < 1 || c.eventsPerPeerOne < 1 || c.backlog < 2 ||
		c.idlePeers < 0 || c.idleEvents < 1 || c.timeout <= 0 {
		return errors.New("-rounds, -duration, -events*, -peers, -events-per-peer*, -idle-events and -timeout must be positive, -backlog at least 2")
	}
	// Always a fresh directory: the servers must start without peers.
	dir, err := os.MkdirTemp(c.dir, "deliverybench-")
	if err != nil {
		return err
	}
	c.dir = dir
	if !c.keep {
		defer os.RemoveAll(dir)
	}
	return bench(ctx, c, out)
}

// measures reports whether phase is to be measured.
func (c config) measures(phase string) bool { return c.phases == nil || c.phases[phase] }

// series holds one measurement's result from each round.
type series struct {
	name    string
	unit    string
	samples []result
}

func (s *series) rates() []float64 {
	var v []float64
	for _, r := range s.samples {
		v = append(v, r.rate)
	}
	return v
}

func (s *series) median() float64 { return median(s.rates()) }

func (s *series) cpuPer() time.Duration {
	var v []float64
	for _, r := range s.samples {
		v = append(v, float64(r.cpuPer))
	}
	return time.Duration(median(v))
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Sorted(slices.Values(v))
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// benchDelivery is the engine configuration of the rate measurements: the
// defaults, except that a failing push enters queue mode within
// milliseconds (the pull measurement takes its receiver down to get
// there), resume probes and periodic pulls are pushed past the end of the
// run so that nothing but the measured traffic moves events, and a pull may
// take as long as the run allows.
func benchDelivery(c config) delivery.Config {
	cfg := delivery.DefaultConfig()
	cfg.PushBackoff = domain.Backoff{First: time.Millisecond, Max: 5 * time.Millisecond}
	cfg.ProbeBackoff.First = time.Hour
	cfg.PullInterval = time.Hour
	cfg.PullTimeout = c.timeout
	return cfg
}

func bench(ctx context.Context, c config, out io.Writer) error {
	level := slog.LevelError
	if c.verbose {
		level = slog.LevelWarn
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	nc := nodeConfig{delivery: benchDelivery(c), authWindow: domain.DefaultAuthWindow}

	fmt.Fprintf(out, "deliverybench: %d rounds, medians; %d CPUs (GOMAXPROCS %d); %s\n",
		c.rounds, runtime.NumCPU(), runtime.GOMAXPROCS(0), c.dir)
	fmt.Fprintf(out, "  push, 1 peer: a backlog of %d events in the outbox, one sender -> one receiver; pushes carry up to %d events\n", c.events, nc.delivery.PushBatchEvents)
	fmt.Fprintf(out, "  push, %d peers: a backlog of %d events in each of %d sender servers -> one receiver\n",
		c.peers, c.eventsPerPeer, c.peers)
	fmt.Fprintf(out, "  ... one event per push: other senders, configured --push-batch 1 (what an upstream receiver gets); %d events, %d per peer\n", c.eventsOne, c.eventsPerPeerOne)
	fmt.Fprintf(out, "  ... sent one by one: no backlog; each sender's caller sends %d events (%d per peer), each Send synced before the next, while pushes go out\n", c.eventsOne, c.eventsPerPeerOne)
	fmt.Fprintf(out, "  ... sent by %d callers: the same %d events of the one sender, sent by %d callers at once, each one by one\n", c.peers, c.eventsOne, c.peers)
	fmt.Fprintf(out, "  pull: a %d-event queue, from the receiver's first Pull to its inbox holding all of it (replies of up to %d events)\n",
		c.backlog, nc.delivery.PullReplyMaxEvents)
	fmt.Fprintf(out, "  baselines for %v each: embedded store, 1 append per transaction, 1 writer; no-op hRPC call over HTTP/1.1 loopback\n", c.duration)
	fmt.Fprintf(out, "  store read: the same %d events read back from the sender's outbox by a subscription (the store's catch-up read)\n", c.backlog)
	fmt.Fprintf(out, "  SendBatch: %d clients of the sender's admin API, each sending %d events per call one call after the other, for %v; pushes go on meanwhile\n", c.clients, c.batch, c.duration)
	fmt.Fprintf(out, "  store, %d writers: one outbox-sized event per append, each writer to its own stream, for %v\n", c.writers, c.duration)
	fmt.Fprintf(out, "  every server runs in this process: senders and receiver share the CPUs and the disk\n")
	fmt.Fprintf(out, "  live: after every round above, with their servers closed: two servers and the senders' and watcher's clients\n")

	setupStart := time.Now()
	recv, err := startNode(ctx, "receiver", filepath.Join(c.dir, "receiver"), nc, logger)
	if err != nil {
		return err
	}
	senders := make([]*node, 0, c.peers)
	singles := make([]*node, 0, c.peers) // one event per push
	closeServers := func() {
		for _, s := range append(senders, singles...) {
			s.close(ctx)
		}
		senders, singles = nil, nil
		if recv != nil {
			recv.close(ctx)
			recv = nil
		}
	}
	defer closeServers()
	for i := range c.peers {
		s, err := startNode(ctx, "sender", filepath.Join(c.dir, fmt.Sprintf("sender%02d", i)), nc, logger)
		if err != nil {
			return err
		}
		senders = append(senders, s)
	}
	singleCfg := nc
	singleCfg.delivery.PushBatchEvents = 1
	for i := range c.peers {
		s, err := startNode(ctx, "sender", filepath.Join(c.dir, fmt.Sprintf("single%02d", i)), singleCfg, logger)
		if err != nil {
			return err
		}
		singles = append(singles, s)
		// The receiver limits its key fetches across all peers, and the
		// warm-up has it fetch the first senders' keys; these it is given,
		// as an operator may pin a peer's key.
		recv.resolver.Remember(s.id, s.pub)
	}
	base, err := openStoreBaseline(ctx, filepath.Join(c.dir, "baseline"), logger)
	if err != nil {
		return err
	}
	defer base.s.Close()
	noop, err := startNoop(ctx, logger)
	if err != nil {
		return err
	}
	defer noop.close(ctx)
	callers := newNoopCallers(noop, c.peers)
	defer callers.close()
	writers, err := newStoreWriters(base.s, c.writers)
	if err != nil {
		return err
	}
	sendAPI, err := senders[0].serveAdmin(ctx, logger)
	if err != nil {
		return err
	}
	defer sendAPI.close(ctx)
	// The live phase has servers of its own, so that the receiver's Watch
	// carries only its events.
	// With the default configuration: what a homeserver's server runs.
	liveCfg := nodeConfig{delivery: delivery.DefaultConfig(), authWindow: domain.DefaultAuthWindow}
	liveSend, err := startNode(ctx, "sender", filepath.Join(c.dir, "live-sender"), liveCfg, logger)
	if err != nil {
		return err
	}
	defer liveSend.close(ctx)
	liveRecv, err := startNode(ctx, "receiver", filepath.Join(c.dir, "live-receiver"), liveCfg, logger)
	if err != nil {
		return err
	}
	defer liveRecv.close(ctx)
	liveRecv.resolver.Remember(liveSend.id, liveSend.pub)
	liveSendAPI, err := liveSend.serveAdmin(ctx, logger)
	if err != nil {
		return err
	}
	defer liveSendAPI.close(ctx)
	liveRecvAPI, err := liveRecv.serveAdmin(ctx, logger)
	if err != nil {
		return err
	}
	defer liveRecvAPI.close(ctx)
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	watch, err := startLiveWatch(watchCtx, liveRecvAPI)
	if err != nil {
		return err
	}
	liveUser := uint64(1 << 40) // user IDs of the live events, each one once

	// Warm up every path: each sender's first push registers it at the
	// receiver, which fetches its key; a small pull makes the sender fetch
	// the receiver's key; connections open; pages get cached.
	for _, set := range [][]*node{senders, singles} {
		if _, err := pushRun(ctx, noProfile, set, recv, 3, backlog, c.timeout); err != nil {
			return fmt.Errorf("warm-up push: %w", err)
		}
	}
	if _, err := pullRun(ctx, noProfile, senders[0], recv, 1000, c.timeout); err != nil {
		return fmt.Errorf("warm-up pull: %w", err)
	}
	if _, err := base.run(ctx, noProfile, c.duration/5); err != nil {
		return err
	}
	if _, err := callers.run(ctx, noProfile, c.peers, c.duration/5); err != nil {
		return err
	}
	if _, err := liveRun(ctx, liveSendAPI, liveRecv, watch, liveUser, 100, 200*time.Millisecond, c.timeout); err != nil {
		return fmt.Errorf("warm-up live: %w", err)
	}
	liveUser += 1000
	if _, err := batchSendRun(ctx, noProfile, senders[0], sendAPI, recv, c.clients, c.batch, c.duration/5, c.timeout); err != nil {
		return fmt.Errorf("warm-up SendBatch: %w", err)
	}
	fmt.Fprintf(out, "  setup and warm-up: %v\n", time.Since(setupStart).Round(time.Millisecond))

	storeOne := &series{name: "store, 1 append per tx", unit: "appends/s"}
	noopOne := &series{name: "no-op call, 1 caller", unit: "calls/s"}
	noopMany := &series{name: fmt.Sprintf("no-op call, %d callers", c.peers), unit: "calls/s"}
	pushOne := &series{name: "push, 1 peer", unit: "events/s"}
	pushMany := &series{name: fmt.Sprintf("push, %d peers", c.peers), unit: "events/s"}
	pushOneSingle := &series{name: "  ... one event per push", unit: "events/s"}
	pushManySingle := &series{name: "  ... one event per push", unit: "events/s"}
	pushOneStream := &series{name: "  ... sent one by one", unit: "events/s"}
	pushManyStream := &series{name: "  ... sent one by one", unit: "events/s"}
	pushOneCallers := &series{name: fmt.Sprintf("  ... sent by %d callers", c.peers), unit: "events/s"}
	pull := &series{name: fmt.Sprintf("pull, %d backlog", c.backlog), unit: "events/s"}
	storeMany := &series{name: fmt.Sprintf("store, %d writers", c.writers), unit: "appends/s"}
	batchSend := &series{name: fmt.Sprintf("SendBatch, %d clients", c.clients), unit: "events/s"}
	backlogRead := &series{name: fmt.Sprintf("store read, %d backlog", c.backlog), unit: "events/s"}
	live := make([][]liveResult, len(c.liveRates)) // by rate, a result per round

	var profErr error
	measure := func(s *series, phase string, round int, fn func(profiler) (result, error)) error {
		if !c.measures(phase) {
			return nil
		}
		prof := func() func() {
			stop, err := startProfile(c.cpuprofile, phase, round)
			if err != nil {
				profErr = err
				return func() {}
			}
			return stop
		}
		r, err := fn(prof)
		if err == nil {
			err = profErr
		}
		if err != nil {
			return fmt.Errorf("%s, round %d: %w", s.name, round, err)
		}
		s.samples = append(s.samples, r)
		return nil
	}
	for round := 1; round <= c.rounds; round++ {
		// Each baseline next to what it is compared with, so that a noisy
		// moment hurts both alike.
		steps := []struct {
			s     *series
			phase string
			fn    func(profiler) (result, error)
		}{
			{storeOne, "store", func(p profiler) (result, error) { return base.run(ctx, p, c.duration) }},
			{pushOne, "push1", func(p profiler) (result, error) {
				return pushRun(ctx, p, senders[:1], recv, c.events, backlog, c.timeout)
			}},
			{pushOneSingle, "push1single", func(p profiler) (result, error) {
				return pushRun(ctx, p, singles[:1], recv, c.eventsOne, backlog, c.timeout)
			}},
			{pushOneStream, "push1stream", func(p profiler) (result, error) {
				return pushRun(ctx, p, senders[:1], recv, c.eventsOne, oneByOne, c.timeout)
			}},
			{pushOneCallers, "push1callers", func(p profiler) (result, error) {
				return pushRun(ctx, p, senders[:1], recv, c.eventsOne, manyCallers, c.timeout, c.peers)
			}},
			{noopOne, "noop1", func(p profiler) (result, error) { return callers.run(ctx, p, 1, c.duration) }},
			{noopMany, "noopN", func(p profiler) (result, error) { return callers.run(ctx, p, c.peers, c.duration) }},
			{pushMany, "pushN", func(p profiler) (result, error) {
				return pushRun(ctx, p, senders, recv, c.eventsPerPeer, backlog, c.timeout)
			}},
			{pushManySingle, "pushNsingle", func(p profiler) (result, error) {
				return pushRun(ctx, p, singles, recv, c.eventsPerPeerOne, backlog, c.timeout)
			}},
			{pushManyStream, "pushNstream", func(p profiler) (result, error) {
				return pushRun(ctx, p, senders, recv, c.eventsPerPeerOne, oneByOne, c.timeout)
			}},
			{pull, "pull", func(p profiler) (result, error) { return pullRun(ctx, p, senders[0], recv, c.backlog, c.timeout) }},
			{backlogRead, "backlogread", func(p profiler) (result, error) {
				return backlogReadRun(ctx, p, senders[0], recv, c.backlog)
			}},
			{storeMany, "storeN", func(p profiler) (result, error) { return writers.run(ctx, p, c.duration) }},
			{batchSend, "sendbatch", func(p profiler) (result, error) {
				return batchSendRun(ctx, p, senders[0], sendAPI, recv, c.clients, c.batch, c.duration, c.timeout)
			}},
		}
		for _, st := range steps {
			if err := measure(st.s, st.phase, round, st.fn); err != nil {
				return err
			}
		}
	}

	// The rate servers go before the live phase, so that it measures its
	// two servers and their clients alone, not the garbage collection and
	// background work of some seventy servers the rounds above left loaded;
	// and before the idle measurement, so that nothing else allocates while
	// it reads the heap.
	sendAPI.close(ctx)
	closeServers()
	callers.close()
	noop.close(ctx)
	runtime.GC()
	for round := 1; round <= c.rounds; round++ {
		for i, rate := range c.liveRates {
			if !c.measures("live") {
				break
			}
			stop, err := startProfile(c.cpuprofile, fmt.Sprintf("live%.0f", rate), round)
			if err != nil {
				return err
			}
			r, err := liveRun(ctx, liveSendAPI, liveRecv, watch, liveUser, rate, c.liveDuration, c.timeout)
			stop()
			if err != nil {
				return fmt.Errorf("live %.0f/s, round %d: %w", rate, round, err)
			}
			liveUser += uint64(r.sent)
			live[i] = append(live[i], r)
		}
	}

	fmt.Fprintln(out)
	fmt.Fprintf(out, "%-28s %10s %10s %10s  %-10s %12s\n", "", "median", "min", "max", "", "CPU/unit")
	for _, s := range []*series{storeOne, noopOne, noopMany, pushOne, pushOneSingle, pushOneStream, pushOneCallers, pushMany, pushManySingle, pushManyStream, pull, backlogRead, storeMany, batchSend} {
		if len(s.samples) == 0 {
			continue
		}
		note := ""
		if n := s.samples[len(s.samples)/2].note; n != "" {
			note = "  " + n
		}
		fmt.Fprintf(out, "%-28s %10.0f %10.0f %10.0f  %-10s %10.1fµs%s\n",
			s.name, s.median(), slices.Min(s.rates()), slices.Max(s.rates()), s.unit,
			float64(s.cpuPer())/float64(time.Microsecond), note)
	}
	fmt.Fprintln(out, "(CPU/unit: user+system time of the whole process, every server in it, per event or call)")
	fmt.Fprintln(out)
	fmt.Fprintf(out, "live: Send (admin API) on one server to Watch (admin API) on another, each send due at its moment of a fixed offered rate, for %v per rate per round; medians of the rounds\n", c.liveDuration)
	fmt.Fprintf(out, "%-28s %10s %10s %10s\n", "offered", "p50", "p99", "max")
	for i, rate := range c.liveRates {
		if len(live[i]) == 0 {
			break
		}
		fmt.Fprintf(out, "%-28s %10s %10s %10s\n", fmt.Sprintf("%.0f events/s", rate),
			liveMedian(live[i], func(r liveResult) time.Duration { return r.p50 }),
			liveMedian(live[i], func(r liveResult) time.Duration { return r.p99 }),
			liveMedian(live[i], func(r liveResult) time.Duration { return r.max }))
	}

	var idle idleResult
	if c.idlePeers > 0 {
		idleCfg := nc
		idleCfg.delivery = delivery.DefaultConfig()
		// The default periodic pull (a minute after a peer's last push)
		// would start 10,000 pulls of stub peers mid-measurement.
		idleCfg.delivery.PullInterval = time.Hour
		idle, err = idleRun(ctx, filepath.Join(c.dir, "idle"), c.idlePeers, c.idleEvents, 32, idleCfg, logger, c.memprofile)
		if err != nil {
			return fmt.Errorf("idle peers: %w", err)
		}
		fmt.Fprintln(out)
		fmt.Fprintf(out, "idle peers: %d peers, %d events delivered to and from each (%v out, %v in); heap after GC %s before any peer, %s after\n",
			idle.peers, idle.perPeer, idle.setupOut.Round(time.Millisecond), idle.setupIn.Round(time.Millisecond),
			mib(idle.heapBefore), mib(idle.heapEnd))
		fmt.Fprintf(out, "  per peer, after sending to each:               %6d bytes\n", idle.outbound/int64(idle.peers))
		fmt.Fprintf(out, "  per peer, after also receiving from each:      %6d bytes\n", idle.both/int64(idle.peers))
		fmt.Fprintf(out, "  goroutines: %d before any peer, %d after sending, %d after receiving (engine idle)\n",
			idle.goroutines[0], idle.goroutines[1], idle.goroutines[2])
		if idle.connPeers > 0 {
			fmt.Fprintf(out, "  before that, while the keep-alive connections of the last pushes to %d peers were open (peerclient keeps them 30 s):\n"+
				"    %d bytes and %.1f goroutines per peer (client and stub server ends together)\n",
				idle.connPeers, idle.connBytes/int64(idle.connPeers), float64(idle.connGoroutines)/float64(idle.connPeers))
		}
	}

	fmt.Fprintln(out)
	fmt.Fprintln(out, "targets:")
	ratio(out, "push 1 peer / store 1 append per tx", pushOne, storeOne, 0.8)
	ratio(out, fmt.Sprintf("push %d peers / no-op %d callers", c.peers, c.peers), pushMany, noopMany, 0.5)
	fmt.Fprintln(out, "  not targets, the same ratios for the other ways of sending:")
	ratio(out, "  one event per push, 1 peer / store", pushOneSingle, storeOne, 0)
	ratio(out, "  sent one by one, 1 peer / store", pushOneStream, storeOne, 0)
	ratio(out, fmt.Sprintf("  one event per push, %d peers / no-op", c.peers), pushManySingle, noopMany, 0)
	ratio(out, fmt.Sprintf("  sent one by one, %d peers / no-op", c.peers), pushManyStream, noopMany, 0)
	if len(pull.samples) > 0 {
		verdict(out, fmt.Sprintf("pull %d backlog, events/s", c.backlog), pull.median(), ">=", 100000, pull.median() >= 100000)
	}
	fmt.Fprintln(out, "  sending and receiving, as a homeserver sees them:")
	ratio(out, fmt.Sprintf("SendBatch %d clients / store %d writers", c.clients, c.writers), batchSend, storeMany, 0.5)
	if n := len(c.liveRates); n > 1 && len(live[0]) > 0 {
		p99 := func(i int) time.Duration {
			return liveMedian(live[i], func(r liveResult) time.Duration { return r.p99 })
		}
		r := float64(p99(n-1)) / float64(p99(0))
		fmt.Fprintf(out, "  %-44s %9.2f  (%v / %v)  target <= 3.00: %s\n",
			fmt.Sprintf("live p99 at %.0f/s / at %.0f/s", c.liveRates[n-1], c.liveRates[0]), r, p99(n-1), p99(0), passMiss(r <= 3))
	}
	ratio(out, fmt.Sprintf("pull %d backlog / store read of it", c.backlog), pull, backlogRead, 0.7)
	if c.idlePeers > 0 {
		per := float64(idle.both) / float64(idle.peers)
		verdict(out, fmt.Sprintf("bytes per idle peer, %d peers", idle.peers), per, "<=", 4096, per <= 4096)
		held := idle.goroutines[2] - idle.goroutines[0]
		fmt.Fprintf(out, "  %-44s %9d  (idle peers hold no goroutine: %s)\n", "goroutines held by idle peers", held, passMiss(held <= 0))
	}
	return nil
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func passMiss(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

func verdict(out io.Writer, name string, v float64, op string, target float64, ok bool) {
	fmt.Fprintf(out, "  %-44s %9.0f  target %s %.0f: %s\n", name, v, op, target, passMiss(ok))
}

// ratio prints num/den from the medians, and the median of the ratios of
// each round's pair, which a slow drift of the machine disturbs less.
func ratio(out io.Writer, name string, num, den *series, target float64) {
	if len(num.samples) == 0 || len(den.samples) == 0 {
		return // a phase not measured
	}
	r := num.median() / den.median()
	var paired []float64
	for i := range num.samples {
		paired = append(paired, num.samples[i].rate/den.samples[i].rate)
	}
	if target <= 0 {
		fmt.Fprintf(out, "  %-44s %9.2f  (paired median %.2f)\n", name, r, median(paired))
		return
	}
	fmt.Fprintf(out, "  %-44s %9.2f  (paired median %.2f)  target >= %.2f: %s\n", name, r, median(paired), target, passMiss(r >= target))
}

// startProfile starts a CPU profile of one phase of one round, if asked.
func startProfile(prefix, phase string, round int) (func(), error) {
	if prefix == "" {
		return func() {}, nil
	}
	f, err := os.Create(fmt.Sprintf("%s.%s.r%d.pprof", prefix, phase, round))
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// liveMedian is the median over the rounds of one figure of the live phase.
func liveMedian(rs []liveResult, f func(liveResult) time.Duration) time.Duration {
	v := make([]float64, 0, len(rs))
	for _, r := range rs {
		v = append(v, float64(f(r)))
	}
	return time.Duration(median(v)).Round(10 * time.Microsecond)
}
