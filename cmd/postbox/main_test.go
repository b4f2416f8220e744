package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/authtoken"
	"github.com/harmony-postbox/postbox/adapters/seqext"
	"github.com/harmony-postbox/postbox/domain"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	"github.com/harmony-postbox/postbox/gen/postbox/admin/v1/adminv1connect"
	authv1 "github.com/harmony-postbox/postbox/gen/protocol/auth/v1"
	harmonytypesv1 "github.com/harmony-postbox/postbox/gen/protocol/harmonytypes/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// binDir holds the postbox binary built for the multi-process tests.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "postbox-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// postboxBinary builds this command once per test run.
func postboxBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		goTool, err := exec.LookPath("go")
		if err != nil {
			goTool = "go"
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		binPath = filepath.Join(binDir, "postbox")
		out, err := exec.CommandContext(ctx, goTool, "build", "-buildvcs=auto", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// cleanEnv is the test's environment without POSTBOX_* variables, so the
// processes see only the flags the test gives them.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "POSTBOX_") {
			env = append(env, kv)
		}
	}
	return env
}

// freePort returns a loopback port nothing listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	var lc net.ListenConfig
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func loopback(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

// process is one running `postbox serve`.
type process struct {
	name   string
	id     string // its server ID
	listen string
	admin  string
	cmd    *exec.Cmd
	log    string
	done   chan struct{}
	err    error // set when done is closed
}

// startServe starts `postbox serve` on loopback, its federation listener
// on port (0: a free one); its server ID names advertised as the port (0:
// the listener's).
func startServe(t *testing.T, name string, advertised, port int) *process {
	t.Helper()
	bin := postboxBinary(t)
	dir := t.TempDir()
	if port == 0 {
		port = freePort(t)
	}
	adminPort := freePort(t)
	if advertised == 0 {
		advertised = port
	}
	p := &process{
		name: name, id: loopback(advertised), listen: loopback(port), admin: loopback(adminPort),
		log: filepath.Join(dir, "stderr.log"), done: make(chan struct{}),
	}
	logFile, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	p.cmd = exec.Command(bin, "serve",
		"--server-id", p.id, "--listen", p.listen, "--admin-listen", p.admin,
		"--data-dir", filepath.Join(dir, "data"), "--insecure-peers")
	p.cmd.Env = cleanEnv()
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("%s log:\n%s", name, p.logText())
		}
	})
	p.waitListening(t, 30*time.Second)
	return p
}

func (p *process) logText() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// waitListening waits until both listeners accept connections.
func (p *process) waitListening(t *testing.T, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for _, addr := range []string{p.listen, p.admin} {
		for {
			select {
			case <-p.done:
				t.Fatalf("%s exited before listening: %v\n%s", p.name, p.err, p.logText())
			default:
			}
			d := net.Dialer{Timeout: time.Second}
			if c, err := d.DialContext(t.Context(), "tcp", addr); err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not listening on %s after %s\n%s", p.name, addr, within, p.logText())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// stop asks the process to shut down, then kills it if it lingers; it
// returns the exit error of a graceful stop.
func (p *process) stop(t *testing.T) error {
	select {
	case <-p.done:
		return p.err
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Errorf("%s ignored SIGTERM for 15 s and was killed", p.name)
		return errors.New("killed")
	}
}

// runCLI runs one postbox command to completion, bounded in time.
func runCLI(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, postboxBinary(t), args...)
	cmd.Env = cleanEnv()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatalf("postbox %s: %v", strings.Join(args, " "), err)
	}
	if ctx.Err() != nil {
		t.Fatalf("postbox %s did not finish in time", strings.Join(args, " "))
	}
	return out.String(), errb.String(), code
}

const addedEvent = `{"userAddedToGuild":{"userId":"42","guildId":"7"}}`

// exchange is one request a recordingProxy passed on, with its reply.
type exchange struct {
	Path   string
	Caller string // server_id of the request's token, if it had one
	Token  domain.SignedToken
	Body   []byte
	Status int
	Reply  []byte
}

// recordingProxy stands at a server's advertised ID and forwards to where it
// really listens, recording what passes: the test sees the federation
// traffic between two processes.
type recordingProxy struct {
	addr string
	mu   sync.Mutex
	log  []exchange
}

type captureWriter struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (c *captureWriter) WriteHeader(status int) {
	c.status = status
	c.ResponseWriter.WriteHeader(status)
}

func (c *captureWriter) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	c.body.Write(b)
	return c.ResponseWriter.Write(b)
}

func (c *captureWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

func startProxy(t *testing.T, target string) *recordingProxy {
	t.Helper()
	p := &recordingProxy{}
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(&url.URL{Scheme: "http", Host: target})
	}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		x := exchange{Path: r.URL.Path, Body: body}
		if tok, err := authtoken.Decode(r.Header.Get("Authorization")); err == nil {
			x.Token, x.Caller = tok, tok.Claims.ServerID
		}
		cw := &captureWriter{ResponseWriter: w}
		rp.ServeHTTP(cw, r)
		x.Status, x.Reply = cw.status, cw.body.Bytes()
		p.mu.Lock()
		p.log = append(p.log, x)
		p.mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	p.addr = srv.Listener.Addr().String()
	return p
}

func (p *recordingProxy) exchanges(path string) []exchange {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []exchange
	for _, x := range p.log {
		if x.Path == path {
			out = append(out, x)
		}
	}
	return out
}

// pollUntil polls cond until it holds or the time is up.
func pollUntil(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", within, what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// proxied starts a proxy and a `postbox serve` whose server ID is the
// proxy's address, so every federation call to it passes the proxy.
func proxied(t *testing.T, name string) (*process, *recordingProxy) {
	t.Helper()
	listen := freePort(t)
	proxy := startProxy(t, loopback(listen))
	_, port, _ := net.SplitHostPort(proxy.addr)
	advertised, _ := strconv.Atoi(port)
	return startServe(t, name, advertised, listen), proxy
}

const (
	pushPath = "/protocol.sync.v1.PostboxService/Push"
	keyPath  = "/protocol.auth.v1.AuthService/Key"
)

// pushesFrom returns the pushes a proxy saw from one sender.
func pushesFrom(p *recordingProxy, sender *process) []exchange {
	var out []exchange
	for _, x := range p.exchanges(pushPath) {
		if x.Caller == sender.id {
			out = append(out, x)
		}
	}
	return out
}

// TestTwoServersFederate runs real postbox processes on loopback, each
// behind a recording proxy at its server ID. A send through one's admin API
// is pushed to the other, which accepts it only after fetching the sender's
// key from the sender over the network and verifying the token.
func TestTwoServersFederate(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	t.Parallel()
	a, aProxy := proxied(t, "A")
	b, bProxy := proxied(t, "B")

	send := func(from, to *process, want string) {
		t.Helper()
		out, errOut, code := runCLI(t, "send", "--admin", from.admin, "--to", to.id, "--event", addedEvent)
		if code != 0 {
			t.Fatalf("send %s → %s: exit %d\n%s", from.name, to.name, code, errOut)
		}
		if strings.TrimSpace(out) != want {
			t.Errorf("send %s → %s printed %q, want the sequence number %s", from.name, to.name, out, want)
		}
	}
	for _, tc := range []struct {
		from, to           *process
		fromProxy, toProxy *recordingProxy
	}{{a, b, aProxy, bProxy}, {b, a, bProxy, aProxy}} {
		send(tc.from, tc.to, "0")
		send(tc.from, tc.to, "1")
		pollUntil(t, 30*time.Second, tc.to.name+" accepted both pushes from "+tc.from.name, func() bool {
			ok := 0
			for _, x := range pushesFrom(tc.toProxy, tc.from) {
				if x.Status == http.StatusOK {
					ok++
				}
			}
			return ok >= 2
		})
		// In order, with their sequence numbers, signed for the receiver.
		var seqs []uint64
		for _, x := range pushesFrom(tc.toProxy, tc.from) {
			if x.Status != http.StatusOK {
				t.Errorf("push %s → %s answered %d: %x", tc.from.name, tc.to.name, x.Status, x.Reply)
				continue
			}
			var req syncv1.PushRequest
			if err := proto.Unmarshal(x.Body, &req); err != nil {
				t.Fatal(err)
			}
			seq, _ := seqext.PushSeq(&req)
			seqs = append(seqs, seq)
			if got := req.GetEvent().GetUserAddedToGuild(); got.GetUserId() != 42 || got.GetGuildId() != 7 {
				t.Errorf("pushed event %v", req.GetEvent())
			}
			if x.Token.Claims.Audience != tc.to.id {
				t.Errorf("push token audience %q, want %s", x.Token.Claims.Audience, tc.to.id)
			}
		}
		if !slices.Equal(seqs, []uint64{0, 1}) {
			t.Errorf("pushes %s → %s carried seqs %v, want [0 1]", tc.from.name, tc.to.name, seqs)
		}
		// The receiver fetched the sender's key from the sender, once, and
		// that key is the one the sender's admin API reports and the one
		// that verifies the push.
		keys := tc.fromProxy.exchanges(keyPath)
		if len(keys) != 1 || keys[0].Status != http.StatusOK {
			t.Fatalf("%s served its key %d times (%v), want once", tc.from.name, len(keys), keys)
		}
		var keyRes authv1.KeyResponse
		if err := proto.Unmarshal(keys[0].Reply, &keyRes); err != nil {
			t.Fatal(err)
		}
		info, err := adminv1connect.NewAdminServiceClient(http.DefaultClient, "http://"+tc.from.admin).
			GetServerInfo(t.Context(), connect.NewRequest(&adminv1.GetServerInfoRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(info.Msg.GetPublicKey(), keyRes.GetKey()) || info.Msg.GetServerId() != tc.from.id {
			t.Errorf("%s's admin API reports %s %x; its federation listener served key %x", tc.from.name, info.Msg.GetServerId(), info.Msg.GetPublicKey(), keyRes.GetKey())
		}
		push := pushesFrom(tc.toProxy, tc.from)[0]
		if !ed25519.Verify(keyRes.GetKey(), push.Token.Data, push.Token.Sig) {
			t.Errorf("the push from %s does not verify with the key it served", tc.from.name)
		}
	}

	// A sender whose server ID points where it does not serve its key: the
	// receiver cannot fetch the key, so it refuses the push.
	c := startServe(t, "C", freePort(t), 0)
	send(c, b, "0")
	pollUntil(t, 30*time.Second, "B refused C's push for want of its key", func() bool {
		for _, x := range pushesFrom(bProxy, c) {
			var e harmonytypesv1.Error
			if x.Status == http.StatusBadGateway && proto.Unmarshal(x.Reply, &e) == nil && e.GetIdentifier() == "postbox.key-unavailable" {
				return true
			}
		}
		return false
	})
	for _, x := range pushesFrom(bProxy, c) {
		if x.Status == http.StatusOK {
			t.Error("B accepted a push it could not verify")
		}
	}

	// A server nobody listens on: the event is accepted into the outbox
	// (it waits there for the peer to pull), and the sender logs why its
	// pushes fail.
	gone := loopback(freePort(t))
	if _, errOut, code := runCLI(t, "send", "--admin", a.admin, "--to", gone, "--event", addedEvent); code != 0 {
		t.Fatalf("send to an unreachable peer: exit %d\n%s", code, errOut)
	}
	pollUntil(t, 30*time.Second, "A logged its failed push to "+gone, func() bool {
		log := a.logText()
		return strings.Contains(log, `msg="push failed; retrying" peer=`+gone) && strings.Contains(log, "connection refused")
	})

	// What send itself refuses, with a non-zero exit and a clear message.
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--admin", a.admin, "--to", b.id, "--event", `{"nope":1}`}, 2, "--event"},
		{[]string{"--admin", a.admin, "--to", b.id, "--event", `{}`}, 1, "invalid_argument"},
		{[]string{"--admin", a.admin, "--to", "no-port", "--event", addedEvent}, 1, "invalid server ID"},
		{[]string{"--admin", loopback(freePort(t)), "--to", b.id, "--event", addedEvent}, 1, "connection refused"},
	} {
		_, errOut, code := runCLI(t, append([]string{"send"}, tc.args...)...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("send %q: exit %d, stderr %q; want exit %d mentioning %q", tc.args, code, errOut, tc.code, tc.want)
		}
	}

	// SIGTERM shuts every process down gracefully.
	for _, p := range []*process{a, b, c} {
		if err := p.stop(t); err != nil {
			t.Errorf("%s after SIGTERM: %v", p.name, err)
		}
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	var out, errb bytes.Buffer
	if err := run(t.Context(), []string{"version"}, &out, &errb, envOf(nil)); err != nil {
		t.Fatal(err)
	}
	if v, ok := strings.CutPrefix(strings.TrimSpace(out.String()), "postbox "); !ok || v == "" {
		t.Errorf("version printed %q", out.String())
	}
	if testing.Short() {
		return
	}
	stdout, _, code := runCLI(t, "version")
	if code != 0 || !strings.HasPrefix(stdout, "postbox ") || len(strings.TrimSpace(stdout)) <= len("postbox") {
		t.Errorf("postbox version: exit %d, printed %q", code, stdout)
	}
	// Built in a git checkout, the binary names its revision (the Go
	// toolchain stamps it where the top level has a .git directory; a git
	// worktree's .git file is not enough).
	top, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		return
	}
	if fi, err := os.Stat(filepath.Join(strings.TrimSpace(string(top)), ".git")); err != nil || !fi.IsDir() {
		return
	}
	if rev, err := exec.Command("git", "rev-parse", "HEAD").Output(); err == nil && len(rev) >= 12 {
		// " rev X", or inside the pseudo-version the toolchain stamps.
		if !strings.Contains(stdout, string(rev[:12])) {
			t.Errorf("postbox version printed %q, want it to name revision %s", stdout, rev[:12])
		}
	}
}

func TestVersionOfABuild(t *testing.T) {
	t.Parallel()
	rev := "42866ae1c0de0123456789abcdef0123456789ab"
	for _, tc := range []struct {
		version  string
		settings []debug.BuildSetting
		want     string
	}{
		{"", nil, "(devel)"},
		{"(devel)", []debug.BuildSetting{{Key: "vcs.revision", Value: rev}}, "(devel) rev 42866ae1c0de"},
		{"v1.2.0", []debug.BuildSetting{{Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: "true"}}, "v1.2.0 rev 42866ae1c0de+dirty"},
		{"v0.0.0-20261129150000-42866ae1c0de", []debug.BuildSetting{{Key: "vcs.revision", Value: rev}}, "v0.0.0-20261129150000-42866ae1c0de"},
	} {
		info := &debug.BuildInfo{Main: debug.Module{Version: tc.version}, Settings: tc.settings}
		if got := versionOf(info); got != tc.want {
			t.Errorf("versionOf(%q, %v) = %q, want %q", tc.version, tc.settings, got, tc.want)
		}
	}
}

func TestUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{nil, {"frobnicate"}, {"send"}, {"send", "--to", "a.example:1"}} {
		var out, errb bytes.Buffer
		err := run(t.Context(), args, &out, &errb, envOf(nil))
		if exitCode(err) != 2 {
			t.Errorf("postbox %q: exit %d, want 2", args, exitCode(err))
		}
	}
	var out bytes.Buffer
	if err := run(t.Context(), []string{"help"}, &out, &out, envOf(nil)); err != nil || !strings.Contains(out.String(), "postbox serve") {
		t.Errorf("help: %v, %q", err, out.String())
	}
}

func TestKeygen(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	keygen := func(args []string, env map[string]string) string {
		t.Helper()
		var out, errb bytes.Buffer
		if err := run(t.Context(), append([]string{"keygen"}, args...), &out, &errb, envOf(env)); err != nil {
			t.Fatalf("keygen: %v\n%s", err, errb.String())
		}
		return out.String()
	}
	publicOf := func(out string) []byte {
		t.Helper()
		_, h, ok := strings.Cut(out, "public key ")
		if !ok {
			t.Fatalf("keygen printed %q, no public key", out)
		}
		pub, err := base64.StdEncoding.DecodeString(strings.TrimSpace(h))
		if err != nil || len(pub) != ed25519.PublicKeySize {
			t.Fatalf("public key %q: %v", h, err)
		}
		return pub
	}

	out := keygen([]string{"--data-dir", dir}, nil)
	path := filepath.Join(dir, "key.ed25519")
	if !strings.HasPrefix(out, "created key "+path) {
		t.Errorf("first keygen printed %q", out)
	}
	pub := publicOf(out)
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", info.Mode().Perm())
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) != ed25519.PrivateKeySize {
		t.Fatalf("key file is %d bytes, want 64", len(raw))
	}
	if !bytes.Equal(raw[32:], pub) {
		t.Errorf("second half of the key file %x is not the printed public key %x", raw[32:], pub)
	}
	if derived := ed25519.NewKeyFromSeed(raw[:32]).Public().(ed25519.PublicKey); !bytes.Equal(derived, pub) {
		t.Errorf("the seed derives public key %x, printed %x", derived, pub)
	}

	// A second keygen, here through POSTBOX_DATA_DIR, keeps the key.
	out = keygen(nil, map[string]string{"POSTBOX_DATA_DIR": dir})
	if !strings.HasPrefix(out, "kept existing key "+path) || !bytes.Equal(publicOf(out), pub) {
		t.Errorf("second keygen printed %q", out)
	}
	if again, _ := os.ReadFile(path); !bytes.Equal(again, raw) {
		t.Error("second keygen changed the key file")
	}

	// --key-file names the file itself.
	other := filepath.Join(t.TempDir(), "sub", "my.key")
	if out := keygen([]string{"--key-file", other}, nil); !strings.HasPrefix(out, "created key "+other) {
		t.Errorf("keygen --key-file printed %q", out)
	}
	if bytes.Equal(publicOf(keygen([]string{"--key-file", other}, nil)), pub) {
		t.Error("two key files share one key")
	}

	// A damaged key file is refused, never replaced.
	if err := os.WriteFile(path, raw[:63], 0o600); err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	if err := run(t.Context(), []string{"keygen", "--data-dir", dir}, &errb, &errb, envOf(nil)); err == nil {
		t.Error("keygen accepted a 63-byte key file")
	}
}
