// Command storebench measures the embedded event store against the bare
// SQLite engine under it, in one run, on this machine: durable appends per
// second for one writer and for many concurrent writers (group commit),
// against one INSERT per transaction and many INSERTs per transaction on a
// scratch database with the same pragmas and table; then reads and
// subscription catch-up. Every figure is the median of several repetitions,
// interleaved, because a shared machine is noisy.
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
	"slices"
	"time"

	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "storebench:", err)
		}
		os.Exit(1)
	}
}

type config struct {
	dir        string
	keep       bool
	duration   time.Duration
	warmup     time.Duration
	reps       int
	slices     int
	writers    int
	readEvents int
	page       int
	dataSize   int
}

func run(ctx context.Context, args []string, out io.Writer) error {
	var c config
	fs := flag.NewFlagSet("storebench", flag.ContinueOnError)
	fs.StringVar(&c.dir, "dir", "", "directory for the store and the scratch database (default: a new temporary directory)")
	fs.BoolVar(&c.keep, "keep", false, "keep the databases after the run")
	fs.DurationVar(&c.duration, "duration", time.Second, "length of each append measurement")
	fs.DurationVar(&c.warmup, "warmup", 200*time.Millisecond, "unmeasured run before the append measurements")
	fs.IntVar(&c.reps, "reps", 5, "repetitions of each measurement (the median is reported)")
	fs.IntVar(&c.slices, "slices", 4, "store and engine alternate this many times within each append measurement")
	fs.IntVar(&c.writers, "writers", 64, "concurrent writers, and INSERTs per transaction for the engine baseline")
	fs.IntVar(&c.readEvents, "read-events", 20000, "events in the stream read back by the read measurement")
	fs.IntVar(&c.page, "page", 256, "events per ReadStream call")
	fs.IntVar(&c.dataSize, "data-size", 200, "bytes of event body")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if c.reps < 1 || c.slices < 1 || c.writers < 1 || c.duration <= 0 || c.page < 1 || c.readEvents < 1 {
		return errors.New("-reps, -slices, -writers, -duration, -page and -read-events must be positive")
	}
	if c.dir == "" {
		dir, err := os.MkdirTemp("", "storebench-")
		if err != nil {
			return err
		}
		c.dir = dir
		if !c.keep {
			defer os.RemoveAll(dir)
		}
	}
	return bench(ctx, c, out)
}

// series holds one measurement's figure from each repetition.
type series struct {
	name    string
	unit    string
	samples []float64
	note    string
}

func (s *series) median() float64 { return median(s.samples) }

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

func bench(ctx context.Context, c config, out io.Writer) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	storeDir := filepath.Join(c.dir, "store")
	store, err := embedded.Open(ctx, storeDir, embedded.Options{Logger: log})
	if err != nil {
		return err
	}
	defer store.Close()
	eng, err := openEngine(ctx, filepath.Join(c.dir, "engine", "scratch.db"), c.dataSize)
	if err != nil {
		return err
	}
	defer eng.close()

	fmt.Fprintf(out, "storebench: %d repetitions, medians; appends for %v each, store and engine alternating %d times; %d CPUs (GOMAXPROCS %d); %d-byte event bodies; %s\n",
		c.reps, c.duration, c.slices, runtime.NumCPU(), runtime.GOMAXPROCS(0), c.dataSize, c.dir)

	one := &series{name: "store, 1 writer", unit: "appends/s"}
	many := &series{name: fmt.Sprintf("store, %d writers", c.writers), unit: "appends/s"}
	engOne := &series{name: "engine, 1 INSERT per tx", unit: "rows/s"}
	engMany := &series{name: fmt.Sprintf("engine, %d INSERTs per tx", c.writers), unit: "rows/s"}
	sw := newStoreWriters(store, c.writers, c.dataSize)

	// Warm up every path once (page cache, prepared statements, file growth).
	if c.warmup > 0 {
		if _, _, err := pair(ctx, 1, c.warmup, sw.runner(1), eng.runner(1)); err != nil {
			return err
		}
		if _, _, err := pair(ctx, 1, c.warmup, sw.runner(c.writers), eng.runner(c.writers)); err != nil {
			return err
		}
	}
	var batchSizes []float64
	for range c.reps {
		s, e, err := pair(ctx, c.slices, c.duration, sw.runner(1), eng.runner(1))
		if err != nil {
			return err
		}
		one.samples = append(one.samples, s.rate())
		engOne.samples = append(engOne.samples, e.rate())
		if s, e, err = pair(ctx, c.slices, c.duration, sw.runner(c.writers), eng.runner(c.writers)); err != nil {
			return err
		}
		many.samples = append(many.samples, s.rate())
		engMany.samples = append(engMany.samples, e.rate())
		batchSizes = append(batchSizes, s.perCommit())
	}
	many.note = fmt.Sprintf("%.1f appends per commit", median(batchSizes))

	reads := &series{name: fmt.Sprintf("ReadStream, %d per page", c.page), unit: "events/s"}
	catchUp := &series{name: "subscription catch-up", unit: "events/s"}
	if err := fillReadStream(ctx, store, c.readEvents, c.dataSize); err != nil {
		return err
	}
	for range c.reps {
		rate, err := readStream(ctx, store, c.page)
		if err != nil {
			return err
		}
		reads.samples = append(reads.samples, rate)
		rate, n, err := catchUpAll(ctx, store)
		if err != nil {
			return err
		}
		catchUp.samples = append(catchUp.samples, rate)
		catchUp.note = fmt.Sprintf("%d events", n)
	}
	reads.note = fmt.Sprintf("%d events", c.readEvents)

	fmt.Fprintln(out)
	fmt.Fprintf(out, "%-30s %12s %12s %12s  %-10s\n", "", "median", "min", "max", "")
	for _, s := range []*series{one, engOne, many, engMany, reads, catchUp} {
		fmt.Fprintf(out, "%-30s %12.0f %12.0f %12.0f  %-10s %s\n",
			s.name, s.median(), slices.Min(s.samples), slices.Max(s.samples), s.unit, s.note)
	}
	fmt.Fprintln(out)
	ratio(out, fmt.Sprintf("store %d writers / engine %d per tx", c.writers, c.writers), many, engMany, 0.5)
	ratio(out, "store 1 writer / engine 1 per tx", one, engOne, 0.8)
	return nil
}

type runner func(ctx context.Context, d time.Duration) (result, error)

// pair runs a and b for d each, alternating in slices, so that both meet
// the same moments of a noisy machine and their ratio is fair.
func pair(ctx context.Context, slices int, d time.Duration, a, b runner) (ra, rb result, err error) {
	slice := d / time.Duration(slices)
	for range slices {
		r, err := a(ctx, slice)
		if err != nil {
			return ra, rb, err
		}
		ra.add(r)
		if r, err = b(ctx, slice); err != nil {
			return ra, rb, err
		}
		rb.add(r)
	}
	return ra, rb, nil
}

// ratio prints num/den from the medians, and the median of the ratios of
// each repetition's pair, which a slow drift of the machine disturbs less.
func ratio(out io.Writer, name string, num, den *series, target float64) {
	r := num.median() / den.median()
	var paired []float64
	for i := range num.samples {
		paired = append(paired, num.samples[i]/den.samples[i])
	}
	verdict := "met"
	if r < target {
		verdict = "NOT met"
	}
	fmt.Fprintf(out, "%-42s %5.2f (paired median %.2f)  target >= %.2f: %s\n", name+":", r, median(paired), target, verdict)
}
