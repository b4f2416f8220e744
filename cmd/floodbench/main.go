// Command floodbench attacks a real Postbox server process with request
// bodies nobody authenticated, and prints what that costs it: many
// concurrent unauthenticated 4 MiB Pushes over HTTP/1.1, then one h2c
// connection opening hundreds of streams of 4 MiB bodies. Throughout, a real
// peer (this process, with its own key, which the server fetches) pushes
// signed events, and the command prints whether they still got through. The
// server's memory is read from /proc/PID/status (VmRSS sampled during each
// attack, VmHWM at the end), so it runs on Linux.
//
//	go run ./cmd/floodbench [-duration 10s] [-conns 256] [-streams 200]
package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/harmony-postbox/postbox/adapters/authtoken"
	"github.com/harmony-postbox/postbox/adapters/clock"
	"github.com/harmony-postbox/postbox/adapters/federation"
	"github.com/harmony-postbox/postbox/adapters/httpserver"
	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/domain"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
	"github.com/harmony-postbox/postbox/gen/protocol/sync/v1/syncv1connect"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "floodbench:", err)
		}
		os.Exit(1)
	}
}

const pushPath = "/protocol.sync.v1.PostboxService/Push"

type config struct {
	duration time.Duration
	conns    int
	streams  int
	body     int
	bin      string
	keep     bool
	extra    string
}

func run(ctx context.Context, args []string, out io.Writer) error {
	var cfg config
	fs := flag.NewFlagSet("floodbench", flag.ContinueOnError)
	fs.DurationVar(&cfg.duration, "duration", 10*time.Second, "length of each attack")
	fs.IntVar(&cfg.conns, "conns", 256, "concurrent HTTP/1.1 connections of the first attack")
	fs.IntVar(&cfg.streams, "streams", 200, "streams the h2c connection of the second attack opens")
	fs.IntVar(&cfg.body, "body", 4<<20, "announced and sent body size of each request")
	fs.StringVar(&cfg.bin, "bin", "", "postbox binary to attack (default: build ./cmd/postbox)")
	fs.BoolVar(&cfg.keep, "keep", false, "keep the temporary directory")
	fs.StringVar(&cfg.extra, "serve-flags", "", "more flags for postbox serve, space-separated")
	if err := fs.Parse(args); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "floodbench-")
	if err != nil {
		return err
	}
	if !cfg.keep {
		defer os.RemoveAll(dir)
	}
	if cfg.bin == "" {
		cfg.bin = filepath.Join(dir, "postbox")
		build := exec.CommandContext(ctx, "go", "build", "-o", cfg.bin, "github.com/harmony-postbox/postbox/cmd/postbox")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("build postbox: %w", err)
		}
	}

	logger := slog.New(slog.DiscardHandler)
	pr, err := startPeer(ctx, logger)
	if err != nil {
		return err
	}
	defer pr.close()
	tgt, err := startTarget(ctx, cfg, dir)
	if err != nil {
		return err
	}
	defer tgt.stop()
	fmt.Fprintf(out, "target: postbox serve pid %d on %s (log %s)\n", tgt.cmd.Process.Pid, tgt.id, tgt.log)

	// First contact: the server fetches the peer's key.
	if err := pr.push(ctx, tgt.id); err != nil {
		return fmt.Errorf("a signed push before any attack: %w (see %s)", err, tgt.log)
	}
	idle, _ := tgt.memory()
	fmt.Fprintf(out, "before the attacks: RSS %s\n\n", mib(idle.rss))

	attacks := []struct {
		name string
		run  func(ctx context.Context, target *target, peer *peer, cfg config) (string, error)
	}{
		{fmt.Sprintf("%d concurrent unauthenticated %s Pushes over HTTP/1.1", cfg.conns, mib(int64(cfg.body))), floodHTTP1},
		{fmt.Sprintf("one h2c connection opening %d streams of unauthenticated %s Pushes", cfg.streams, mib(int64(cfg.body))), floodH2C},
	}
	worst := int64(0)
	for _, a := range attacks {
		fmt.Fprintf(out, "attack: %s, for %s\n", a.name, cfg.duration)
		actx, cancel := context.WithTimeout(ctx, cfg.duration)
		peak := tgt.sample(actx)
		pushes := pr.pushLoop(actx, tgt.id)
		summary, err := a.run(actx, tgt, pr, cfg)
		cancel()
		p, ok, failed, slowest := pushes()
		rss := peak()
		worst = max(worst, rss)
		if err != nil {
			return fmt.Errorf("%s: %w", a.name, err)
		}
		fmt.Fprintf(out, "  attack requests: %s\n", summary)
		fmt.Fprintf(out, "  signed pushes from a real peer during the attack: %d of %d succeeded (slowest %s)", ok, p, slowest.Round(time.Millisecond))
		if failed != "" {
			fmt.Fprintf(out, "; last failure: %s", failed)
		}
		fmt.Fprintf(out, "\n  server RSS during the attack: peak %s\n", mib(rss))
		time.Sleep(2 * time.Second)
		after, _ := tgt.memory()
		fmt.Fprintf(out, "  server RSS 2 s after: %s\n\n", mib(after.rss))
	}
	final, err := tgt.memory()
	if err != nil {
		return err
	}
	verdict := "met"
	if final.hwm >= 256<<20 {
		verdict = "NOT met"
	}
	fmt.Fprintf(out, "server peak RSS over the whole run (VmHWM): %s; highest sampled during an attack: %s; target under 256 MiB: %s\n", mib(final.hwm), mib(worst), verdict)
	return nil
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// target is the server process under attack.
type target struct {
	id  domain.ServerID
	cmd *exec.Cmd
	log string
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func startTarget(ctx context.Context, cfg config, dir string) (*target, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	admin, err := freePort()
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "postbox.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	args := []string{"serve", "--insecure-peers", "--server-id", addr, "--listen", addr, "--admin-listen", admin, "--data-dir", filepath.Join(dir, "data")}
	args = append(args, strings.Fields(cfg.extra)...)
	cmd := exec.CommandContext(ctx, cfg.bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	t := &target{id: domain.MustParseServerID(addr), cmd: cmd, log: logPath}
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return t, nil
		}
		if time.Now().After(deadline) {
			t.stop()
			return nil, fmt.Errorf("server did not listen on %s (see %s)", addr, logPath)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (t *target) stop() {
	_ = t.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = t.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = t.cmd.Process.Kill()
		<-done
	}
}

type memory struct{ rss, hwm int64 }

// memory reads VmRSS and VmHWM of the server process.
func (t *target) memory() (memory, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(t.cmd.Process.Pid) + "/status")
	if err != nil {
		return memory{}, err
	}
	var m memory
	for line := range strings.SplitSeq(string(b), "\n") {
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if err != nil {
			continue
		}
		switch name {
		case "VmRSS":
			m.rss = kb << 10
		case "VmHWM":
			m.hwm = kb << 10
		}
	}
	return m, nil
}

// sample reads the server's RSS every 20 ms until ctx ends; the returned
// func waits for that and gives the highest reading.
func (t *target) sample(ctx context.Context) func() int64 {
	var peak atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if m, err := t.memory(); err == nil && m.rss > peak.Load() {
				peak.Store(m.rss)
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return func() int64 { <-done; return peak.Load() }
}

// peer is a real federation peer: its key served on its own listener (its
// ID is that address), its pushes signed by the real client.
type peer struct {
	id     domain.ServerID
	srv    *httpserver.Server
	client *peerclient.Client
	forger *authtoken.Signer // another key, to forge tokens naming this peer
	seq    atomic.Uint64
}

type self domain.ServerID

func (s self) IDFor(domain.ServerID) domain.ServerID { return domain.ServerID(s) }

func startPeer(ctx context.Context, logger *slog.Logger) (*peer, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	_, other, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	h := httpserver.NewFederationHandler(syncv1connect.UnimplementedPostboxServiceHandler{}, federation.NewKeyService(pub), 4<<20, logger)
	srv, err := httpserver.Listen(ctx, "peer", "127.0.0.1:0", h, httpserver.TLSFiles{}, logger)
	if err != nil {
		return nil, err
	}
	go func() { _ = srv.Serve() }()
	id := domain.MustParseServerID(srv.Addr().String())
	var sys clock.System
	return &peer{
		id:     id,
		srv:    srv,
		client: peerclient.New(peerclient.Config{Insecure: true}, authtoken.NewSigner(priv, sys, rand.Reader), self(id)),
		forger: authtoken.NewSigner(other, sys, rand.Reader),
	}, nil
}

func (p *peer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = p.srv.Shutdown(ctx)
}

func (p *peer) push(ctx context.Context, to domain.ServerID) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	seq := p.seq.Add(1) - 1
	ev := &syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: seq + 1, GuildId: 7}}}
	_, err := p.client.Push(ctx, to, seq, []*syncv1.Event{ev})
	return err
}

// pushLoop pushes a signed event every 200 ms until ctx ends; the returned
// func waits for the last and tells how they went.
func (p *peer) pushLoop(ctx context.Context, to domain.ServerID) func() (pushes, ok int, lastFailure string, slowest time.Duration) {
	var pushes, ok int
	var last string
	var slowest time.Duration
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(500 * time.Millisecond) // once the attack is under way
		for ctx.Err() == nil {
			start := time.Now()
			err := p.push(context.WithoutCancel(ctx), to)
			slowest = max(slowest, time.Since(start))
			pushes++
			if err == nil {
				ok++
			} else {
				last = err.Error()
			}
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return func() (int, int, string, time.Duration) { <-done; return pushes, ok, last, slowest }
}

// forged is a token naming the real peer, signed with another key.
func (p *peer) forged(to domain.ServerID) string {
	h, _ := p.forger.Extended(p.id, to, "")
	return h
}

// tally counts outcomes by name.
type tally struct {
	mu sync.Mutex
	n  map[string]int
}

func (t *tally) add(what string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == nil {
		t.n = map[string]int{}
	}
	t.n[what]++
}

func (t *tally) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var parts []string
	for k, v := range t.n {
		parts = append(parts, fmt.Sprintf("%s: %d", k, v))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// floodHTTP1 keeps conns requests in flight, each sending a whole body of
// cfg.body bytes: half without a token, half with a forged one naming the
// real peer.
func floodHTTP1(ctx context.Context, t *target, p *peer, cfg config) (string, error) {
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	tr := &http.Transport{Protocols: protocols, MaxConnsPerHost: cfg.conns, MaxIdleConnsPerHost: cfg.conns}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	body := make([]byte, cfg.body)
	var results tally
	var wg sync.WaitGroup
	for i := range cfg.conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+t.id.String()+pushPath, bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/hrpc")
				if i%2 == 1 {
					req.Header.Set("Authorization", p.forged(t.id))
				}
				resp, err := client.Do(req)
				switch {
				case ctx.Err() != nil:
					return
				case err != nil:
					results.add("connection closed by the server")
					time.Sleep(10 * time.Millisecond)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				results.add(resp.Status)
			}
		}()
	}
	wg.Wait()
	return results.String(), nil
}

// floodH2C opens one h2c connection and keeps cfg.streams Push streams
// open on it, each announcing cfg.body bytes and sending as much of them as
// flow control allows, without a token; a stream the server ends is
// replaced by a new one. A connection the server closes is opened again.
func floodH2C(ctx context.Context, t *target, _ *peer, cfg config) (string, error) {
	var results tally
	for ctx.Err() == nil {
		if err := h2cConnection(ctx, t.id.String(), cfg, &results); err != nil && ctx.Err() == nil {
			results.add("connection ended: " + err.Error())
			time.Sleep(50 * time.Millisecond)
		}
	}
	return results.String(), nil
}

// h2cStream is one attacking stream: its send window and the bytes of its
// body still to send.
type h2cStream struct {
	window int64
	left   int
}

// h2cConnection attacks over one connection until ctx ends or the server
// closes it. It honours HTTP/2 flow control, as a well-behaved client whose
// bodies the server reads would, so every byte the server lets in is sent.
func h2cConnection(ctx context.Context, addr string, cfg config, results *tally) error {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		return err
	}
	fr := http2.NewFramer(conn, conn)
	var wmu sync.Mutex // the framer's writes
	write := func(fn func() error) error { wmu.Lock(); defer wmu.Unlock(); return fn() }
	if err := write(func() error { return fr.WriteSettings() }); err != nil {
		return err
	}

	var mu sync.Mutex // the flow control state below
	connWindow, streamWindow := int64(65535), int64(65535)
	streams := map[uint32]*h2cStream{}
	kick := make(chan struct{}, 1)
	wake := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	ended := func(id uint32) {
		mu.Lock()
		delete(streams, id)
		mu.Unlock()
		wake()
	}
	readErr := make(chan error, 1)
	go func() {
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				readErr <- err
				return
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if f.IsAck() {
					continue
				}
				if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
					mu.Lock()
					streamWindow = int64(v)
					mu.Unlock()
				}
				_ = write(func() error { return fr.WriteSettingsAck() })
			case *http2.PingFrame:
				if !f.IsAck() {
					_ = write(func() error { return fr.WritePing(true, f.Data) })
				}
			case *http2.WindowUpdateFrame:
				mu.Lock()
				if f.StreamID == 0 {
					connWindow += int64(f.Increment)
				} else if st := streams[f.StreamID]; st != nil {
					st.window += int64(f.Increment)
				}
				mu.Unlock()
				wake()
			case *http2.HeadersFrame:
				results.add("stream answered")
				if f.StreamEnded() {
					ended(f.StreamID)
				}
			case *http2.DataFrame:
				if f.StreamEnded() {
					ended(f.StreamID)
				}
			case *http2.RSTStreamFrame:
				results.add("stream reset: " + f.ErrCode.String())
				ended(f.StreamID)
			case *http2.GoAwayFrame:
				results.add("goaway: " + f.ErrCode.String())
			}
		}
	}()

	var hbuf bytes.Buffer
	enc := hpack.NewEncoder(&hbuf)
	chunk := make([]byte, 16<<10)
	next := uint32(1)
	openStream := func() error {
		id := next
		next += 2
		mu.Lock()
		streams[id] = &h2cStream{window: streamWindow, left: cfg.body}
		mu.Unlock()
		hbuf.Reset()
		for _, f := range [][2]string{
			{":method", "POST"}, {":scheme", "http"}, {":authority", addr}, {":path", pushPath},
			{"content-type", "application/hrpc"}, {"content-length", strconv.Itoa(cfg.body)},
		} {
			_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		return write(func() error {
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hbuf.Bytes(), EndHeaders: true})
		})
	}
	// sendData sends one frame on each stream the windows allow; it reports
	// whether it sent anything.
	sendData := func() (bool, error) {
		type frame struct {
			id   uint32
			n    int
			last bool
		}
		var frames []frame
		mu.Lock()
		for id, st := range streams {
			n := int(min(int64(len(chunk)), int64(st.left), st.window, connWindow))
			if n <= 0 {
				continue
			}
			st.window -= int64(n)
			st.left -= n
			connWindow -= int64(n)
			frames = append(frames, frame{id, n, st.left == 0})
		}
		mu.Unlock()
		for _, f := range frames {
			if err := write(func() error { return fr.WriteData(f.id, f.last, chunk[:f.n]) }); err != nil {
				return false, err
			}
		}
		return len(frames) > 0, nil
	}
	for ctx.Err() == nil {
		mu.Lock()
		room := len(streams) < cfg.streams
		mu.Unlock()
		if room {
			if err := openStream(); err != nil {
				return err
			}
			continue
		}
		sent, err := sendData()
		if err != nil {
			return err
		}
		if sent {
			continue
		}
		select {
		case <-kick:
		case err := <-readErr:
			return err
		case <-ctx.Done():
		}
	}
	return nil
}
