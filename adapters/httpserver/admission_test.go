package httpserver_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/httpserver"
	hrpcv1 "github.com/harmony-postbox/postbox/gen/hrpc/v1"
	harmonytypesv1 "github.com/harmony-postbox/postbox/gen/protocol/harmonytypes/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
	"github.com/harmony-postbox/postbox/gen/protocol/sync/v1/syncv1connect"
)

// rawResponse sends head (request line and headers, no body) on a fresh
// connection, then body bytes by send, and reads the reply within d.
func rawResponse(t *testing.T, addr, head string, send func(net.Conn), d time.Duration) (*http.Response, []byte, time.Duration) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	start := time.Now()
	_ = conn.SetDeadline(start.Add(d))
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatal(err)
	}
	if send != nil {
		go send(conn)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no reply within %s: %v", d, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b, time.Since(start)
}

func hrpcHead(path, auth string, contentLength int) string {
	h := "POST " + path + " HTTP/1.1\r\nHost: test\r\nContent-Type: application/hrpc\r\n"
	if auth != "" {
		h += "Authorization: " + auth + "\r\n"
	}
	return h + fmt.Sprintf("Content-Length: %d\r\n\r\n", contentLength)
}

func hrpcIdentifier(t *testing.T, body []byte) string {
	t.Helper()
	var e harmonytypesv1.Error
	if err := proto.Unmarshal(body, &e); err != nil {
		t.Fatalf("reply %x is not an hRPC error: %v", body, err)
	}
	return e.GetIdentifier()
}

// A 4 MiB body from a caller without a valid token is never waited for: the
// answer comes from the headers alone, on every protocol.
func TestUnauthenticatedBodiesAreRefusedWithoutBeingRead(t *testing.T) {
	t.Parallel()
	f := startFederation(t, fedOptions{})
	p := startPeer(t)
	addr := strings.TrimPrefix(f.url, "http://")
	// A token that names the peer, signed with another key.
	forger := startPeer(t)
	forged := forger.signer(f.clock)
	forgedAuth, err := forged.Extended(p.id, f.id, "")
	if err != nil {
		t.Fatal(err)
	}
	const size = 4 << 20

	for _, tc := range []struct {
		name, auth, identifier string
		size                   int
	}{
		{"no token", "", "h.bad-auth", size},
		{"forged token", forgedAuth, "h.token-verify-failure", size},
		// Under 256 KiB, net/http would wait to drain it unless told to
		// close the connection instead.
		{"forged token, small body", forgedAuth, "h.token-verify-failure", 2048},
	} {
		t.Run("hrpc "+tc.name, func(t *testing.T) {
			// Headers only: the body never comes.
			resp, body, took := rawResponse(t, addr, hrpcHead(pathPush, tc.auth, tc.size), nil, 5*time.Second)
			if resp.StatusCode != http.StatusBadRequest || hrpcIdentifier(t, body) != tc.identifier {
				t.Errorf("reply %d %q, want 400 %s", resp.StatusCode, hrpcIdentifier(t, body), tc.identifier)
			}
			if took > 2*time.Second {
				t.Errorf("answered after %s", took)
			}
		})
	}
	for _, tc := range []struct {
		name   string
		client *http.Client
		opts   []connect.ClientOption
	}{
		{"connect", closeIdle(t, http1Client()), nil},
		{"grpc", closeIdle(t, h2cClient()), []connect.ClientOption{connect.WithGRPC()}},
	} {
		t.Run(tc.name+" forged token", func(t *testing.T) {
			// A streaming call whose request body never ends: the
			// refusal cannot have waited for it.
			client := syncv1connect.NewPostboxServiceClient(tc.client, f.url, tc.opts...)
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
			defer cancel()
			if tc.name == "connect" {
				req := connect.NewRequest(&syncv1.PushRequest{Event: e2eLikeEvent(size)})
				req.Header().Set("Authorization", forgedAuth)
				_, err := client.Push(ctx, req)
				if connect.CodeOf(err) != connect.CodeUnauthenticated {
					t.Fatalf("Push: %v, want Unauthenticated", err)
				}
				return
			}
			status, err := grpcNeverEndingBody(ctx, tc.client, f.url+pathPush, forgedAuth)
			if err != nil {
				t.Fatal(err)
			}
			if status != fmt.Sprint(int(connect.CodeUnauthenticated)) {
				t.Fatalf("grpc-status %q, want %d", status, connect.CodeUnauthenticated)
			}
		})
	}
	if n := len(f.postbox.Received()); n != 0 {
		t.Errorf("%d events accepted from unauthenticated calls", n)
	}
}

// A call refused before its body is read ends only its own stream on
// HTTP/2: the caller's next call goes on the same connection (a Connection
// header there would make the server send GOAWAY, ending every call on it).
func TestARefusalOnHTTP2KeepsTheConnection(t *testing.T) {
	t.Parallel()
	f := startFederation(t, fedOptions{})
	p, forger := startPeer(t), startPeer(t)
	forged, err := forger.signer(f.clock).Extended(p.id, f.id, "")
	if err != nil {
		t.Fatal(err)
	}
	client := syncv1connect.NewPostboxServiceClient(closeIdle(t, h2cClient()), f.url, connect.WithGRPC())
	var reused []bool
	for range 2 {
		trace := &httptrace.ClientTrace{GotConn: func(c httptrace.GotConnInfo) { reused = append(reused, c.Reused) }}
		req := connect.NewRequest(&syncv1.PushRequest{Event: e2eLikeEvent(1024)})
		req.Header().Set("Authorization", forged)
		_, err := client.Push(httptrace.WithClientTrace(t.Context(), trace), req)
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("Push: %v, want Unauthenticated", err)
		}
	}
	if !slices.Equal(reused, []bool{false, true}) {
		t.Fatalf("connections reused per call: %v, want the second call on the first call's connection", reused)
	}
}

// e2eLikeEvent is an event of about size bytes (a long invite code).
func e2eLikeEvent(size int) *syncv1.Event {
	return &syncv1.Event{Kind: &syncv1.Event_UserInvited_{UserInvited: &syncv1.Event_UserInvited{
		UserId: 1, InviterId: 2, InviteId: strings.Repeat("x", size-64),
	}}}
}

// grpcNeverEndingBody starts a gRPC call whose request body sends a 5-byte
// prefix announcing 4 MiB and then nothing, and returns the grpc-status.
func grpcNeverEndingBody(ctx context.Context, client *http.Client, url, auth string) (string, error) {
	pr, pw := io.Pipe()
	defer pw.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, pr)
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	req.Header.Set("Authorization", auth)
	go func() {
		var prefix [5]byte
		binary.BigEndian.PutUint32(prefix[1:], 4<<20)
		_, _ = pw.Write(prefix[:])
	}()
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if s := resp.Header.Get("Grpc-Status"); s != "" {
		return s, nil // a trailers-only reply
	}
	return resp.Trailer.Get("Grpc-Status"), nil
}

// holdBody starts a push with a token from auth whose body (of unknown
// length, so it counts as the largest) is held open until the returned
// release is called. A hold answered busy (the test's other calls held the
// budget when it came) is made again, with a new token, so the test's
// polling finds it held soon after.
//
// It sends no byte: the server's body rate rule cuts it after a
// BodyWindow, so tests holding one set heldBodyWindow.
func holdBody(t *testing.T, url string, auth func() (string, error)) (release func()) {
	t.Helper()
	var (
		mu       sync.Mutex
		released bool
		body     *io.PipeWriter
	)
	client := http1Client()
	client.Timeout = 0 // held until released, however slow the machine
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			pr, pw := io.Pipe()
			mu.Lock()
			if released {
				mu.Unlock()
				return
			}
			body = pw
			mu.Unlock()
			token, err := auth()
			if err != nil {
				t.Error(err)
				return
			}
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url+pathPush, pr)
			if err != nil {
				t.Error(err)
				return
			}
			req.Header.Set("Content-Type", "application/hrpc")
			req.Header.Set("Authorization", token)
			resp, err := client.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			mu.Lock()
			wasReleased := released
			mu.Unlock()
			// Some holds are meant to be refused at once (a forged token);
			// for the others, this names why a budget was not held.
			switch {
			case wasReleased:
				return
			case err != nil:
				t.Logf("a held body's call failed before its release: %v", err)
				return
			case resp.StatusCode == http.StatusTooManyRequests:
				time.Sleep(10 * time.Millisecond)
			default:
				t.Logf("a held body was answered %d before its release", resp.StatusCode)
				return
			}
		}
	}()
	var once sync.Once
	release = func() {
		once.Do(func() {
			mu.Lock()
			released = true
			if body != nil {
				body.CloseWithError(errors.New("released"))
			}
			mu.Unlock()
			<-done
			client.CloseIdleConnections()
		})
	}
	t.Cleanup(release)
	return release
}

// heldBodyWindow is the body window of servers whose budget a test holds
// with holdBody: longer than any such test, where the default 10 s is not
// on a loaded machine.
const heldBodyWindow = 5 * time.Minute

// untilStatus repeats call until it answers status, or fails the test
// (after long enough for a loaded machine: it returns as soon as it can).
func untilStatus(t *testing.T, status int, call func() hrpcReply) hrpcReply {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := call()
		if r.Status == status {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("status %d, want %d", r.Status, status)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCallsOverTheBudgetAreAskedToRetry(t *testing.T) {
	t.Parallel()
	const limit = 64 << 10
	// Room for exactly one body of unknown length; a held body is not cut
	// for its slowness within the test, however slow the machine.
	f := startFederation(t, fedOptions{limit: limit, admit: &httpserver.Admission{InflightBytes: limit, BodyWindow: heldBodyWindow}})
	a, b := startPeer(t), startPeer(t)
	push := func() hrpcReply {
		return rawHRPC(t, http.MethodPost, f.url+pathPush, "application/hrpc", b.extended(t, f.clock, f.id), unhex(t, fixturePushSeqHex))
	}
	checkOK(t, push())
	release := holdBody(t, f.url, a.tokens(f.clock, f.id))

	r := untilStatus(t, http.StatusTooManyRequests, push)
	e := checkHRPCError(t, r, http.StatusTooManyRequests, "hrpc.resource-exhausted")
	var info hrpcv1.RetryInfo
	if err := proto.Unmarshal(e.GetMoreDetails(), &info); err != nil || info.GetRetryAfter() != 1 {
		t.Errorf("details %x: RetryInfo %v (%v), want retry_after 1", e.GetMoreDetails(), &info, err)
	}
	for _, tc := range []struct {
		name   string
		client *http.Client
		opts   []connect.ClientOption
	}{
		{"connect", closeIdle(t, http1Client()), nil},
		{"grpc", closeIdle(t, h2cClient()), []connect.ClientOption{connect.WithGRPC()}},
		{"grpc-web", closeIdle(t, http1Client()), []connect.ClientOption{connect.WithGRPCWeb()}},
	} {
		client := syncv1connect.NewPostboxServiceClient(tc.client, f.url, tc.opts...)
		req := connect.NewRequest(&syncv1.PushRequest{Event: e2eLikeEvent(1024)})
		req.Header().Set("Authorization", b.extended(t, f.clock, f.id))
		_, err := client.Push(t.Context(), req)
		var ce *connect.Error
		if !errors.As(err, &ce) || ce.Code() != connect.CodeResourceExhausted {
			t.Fatalf("%s: %v, want ResourceExhausted", tc.name, err)
		}
		if id := ce.Meta().Get("Postbox-Error-Identifier"); id != "hrpc.resource-exhausted" {
			t.Errorf("%s: identifier %q", tc.name, id)
		}
		var ours, grpcs bool
		for _, d := range ce.Details() {
			switch v, _ := d.Value(); v := v.(type) {
			case *hrpcv1.RetryInfo:
				ours = v.GetRetryAfter() == 1
			case *errdetails.RetryInfo:
				grpcs = v.GetRetryDelay().AsDuration() == time.Second
			}
		}
		if !ours || !grpcs {
			t.Errorf("%s: RetryInfo details: hrpc.v1 %v, google.rpc %v", tc.name, ours, grpcs)
		}
	}

	release()
	untilStatus(t, http.StatusOK, push)
}

func TestAPeersBudgetIsSpentOnlyByThatPeerAuthenticated(t *testing.T) {
	t.Parallel()
	const limit = 64 << 10
	f := startFederation(t, fedOptions{limit: limit, admit: &httpserver.Admission{InflightBytes: 8 * limit, PeerBytes: limit, BodyWindow: heldBodyWindow}})
	a, b, forger := startPeer(t), startPeer(t), startPeer(t)
	pushAs := func(auth string) hrpcReply {
		return rawHRPC(t, http.MethodPost, f.url+pathPush, "application/hrpc", auth, unhex(t, fixturePushSeqHex))
	}
	forgedA := func() string {
		h, err := forger.signer(f.clock).Extended(a.id, f.id, "")
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	// Forged tokens naming a, holding bodies open, spend nothing of a's.
	for range 4 {
		holdBody(t, f.url, func() (string, error) { return forger.signer(f.clock).Extended(a.id, f.id, "") })
	}
	checkOK(t, pushAs(a.extended(t, f.clock, f.id)))

	// a itself fills its share: its next push waits, b's does not.
	release := holdBody(t, f.url, a.tokens(f.clock, f.id))
	untilStatus(t, http.StatusTooManyRequests, func() hrpcReply { return pushAs(a.extended(t, f.clock, f.id)) })
	checkOK(t, pushAs(b.extended(t, f.clock, f.id)))
	// A forged token naming a is refused for what it is, not as busy.
	checkHRPCError(t, pushAs(forgedA()), http.StatusBadRequest, "h.token-verify-failure")
	release()
	untilStatus(t, http.StatusOK, func() hrpcReply { return pushAs(a.extended(t, f.clock, f.id)) })
}

// paddedPush is a valid push of about size bytes: the fixture push and an
// unknown field the receiver ignores.
func paddedPush(t *testing.T, size int) []byte {
	b := unhex(t, fixturePushSeqHex)
	b = protowire.AppendTag(b, 1000, protowire.BytesType)
	return protowire.AppendBytes(b, make([]byte, size-len(b)-8))
}

func TestASlowBodyIsCutAndASteadyOneIsRead(t *testing.T) {
	t.Parallel()
	f := startFederation(t, fedOptions{admit: &httpserver.Admission{MinBodyBytes: 64, BodyWindow: 300 * time.Millisecond}})
	p := startPeer(t)
	addr := strings.TrimPrefix(f.url, "http://")
	body := paddedPush(t, 2048)
	drip := func(chunk int, every time.Duration) func(net.Conn) {
		return func(c net.Conn) {
			for i := 0; i < len(body); i += chunk {
				if _, err := c.Write(body[i:min(i+chunk, len(body))]); err != nil {
					return
				}
				time.Sleep(every)
			}
		}
	}

	// One byte every 50 ms: 6 bytes a window, below 64.
	resp, _, took := rawResponse(t, addr, hrpcHead(pathPush, p.extended(t, f.clock, f.id), len(body)), drip(1, 50*time.Millisecond), 5*time.Second)
	if resp.StatusCode == http.StatusOK || took > 2*time.Second {
		t.Errorf("slow body: status %d after %s, want a refusal within a few windows", resp.StatusCode, took)
	}
	if n := len(f.postbox.Received()); n != 0 {
		t.Errorf("slow body accepted (%d events)", n)
	}
	// 256 bytes every 100 ms: above the rate for the whole 0.8 s.
	resp, b, took := rawResponse(t, addr, hrpcHead(pathPush, p.extended(t, f.clock, f.id), len(body)), drip(256, 100*time.Millisecond), 5*time.Second)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("steady body: status %d (%s) after %s", resp.StatusCode, hrpcIdentifier(t, b), took)
	}
}

func TestAGzipBombIsCutAtTheSizeLimit(t *testing.T) {
	t.Parallel()
	const limit = 256 << 10
	const inflated = 64 << 20
	f := startFederation(t, fedOptions{limit: limit})
	p := startPeer(t)
	// 64 gzip members of 1 MiB of zeros each, which a gzip reader reads
	// as one stream.
	var member, zipped bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&member, gzip.BestCompression)
	_, _ = zw.Write(make([]byte, inflated/64))
	_ = zw.Close()
	for range 64 {
		zipped.Write(member.Bytes())
	}
	if zipped.Len() > limit/2 {
		t.Fatalf("bomb is %d bytes compressed", zipped.Len())
	}

	for _, tc := range []struct {
		name   string
		client *http.Client
		header map[string]string
		body   []byte
	}{
		{"connect", closeIdle(t, http1Client()), map[string]string{"Content-Type": "application/proto", "Content-Encoding": "gzip"}, zipped.Bytes()},
		{"grpc", closeIdle(t, h2cClient()), map[string]string{"Content-Type": "application/grpc", "Grpc-Encoding": "gzip", "Te": "trailers"},
			append(binary.BigEndian.AppendUint32([]byte{1}, uint32(zipped.Len())), zipped.Bytes()...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, f.url+pathPush, bytes.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			req.Header.Set("Authorization", p.extended(t, f.clock, f.id))
			resp, err := tc.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			reply, _ := io.ReadAll(resp.Body)
			msg := string(reply) + resp.Header.Get("Grpc-Message") + resp.Trailer.Get("Grpc-Message")
			if !strings.Contains(msg, "resource_exhausted") && resp.Header.Get("Grpc-Status")+resp.Trailer.Get("Grpc-Status") != "8" {
				t.Errorf("reply %d %q, want resource exhausted", resp.StatusCode, msg)
			}
			// connect-go alone inflates the whole bomb to name its size.
			if strings.Contains(msg, fmt.Sprint(inflated)) {
				t.Errorf("the whole bomb was inflated: %q", msg)
			}
		})
	}
	if n := len(f.postbox.Received()); n != 0 {
		t.Errorf("%d events accepted", n)
	}
}

// One HTTP/2 connection, over h2c and over TLS, opening 40 streams at a
// handler that holds each call: the server takes 32 and refuses the rest,
// and says so in its SETTINGS.
func TestOneHTTP2ConnectionCarriesAtMost32Calls(t *testing.T) {
	t.Parallel()
	files, pool := testCA(t)
	for _, secure := range []bool{false, true} {
		t.Run(map[bool]string{false: "h2c", true: "tls"}[secure], func(t *testing.T) {
			t.Parallel()
			release := make(chan struct{})
			var running atomic.Int64
			blocking := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
				running.Add(1)
				<-release
			})
			var tf httpserver.TLSFiles
			if secure {
				tf = files
			}
			srv, err := httpserver.Listen(t.Context(), "streams", "127.0.0.1:0", blocking, tf, discardLogger)
			if err != nil {
				t.Fatal(err)
			}
			go srv.Serve()
			t.Cleanup(func() {
				close(release)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = srv.Shutdown(ctx)
			})
			var conn net.Conn
			if secure {
				conn, err = tls.Dial("tcp", srv.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", NextProtos: []string{"h2"}})
			} else {
				conn, err = net.Dial("tcp", srv.Addr().String())
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			advertised, refused := openStreams(t, conn, 40)
			if advertised != httpserver.MaxConcurrentStreams {
				t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS = %d, want %d", advertised, httpserver.MaxConcurrentStreams)
			}
			if refused != 40-httpserver.MaxConcurrentStreams {
				t.Errorf("%d of 40 streams refused, want %d", refused, 40-httpserver.MaxConcurrentStreams)
			}
			if n := running.Load(); n > httpserver.MaxConcurrentStreams {
				t.Errorf("%d calls running on one connection", n)
			}
		})
	}
}

// openStreams speaks HTTP/2 on conn: it reads the server's SETTINGS,
// acknowledges them, opens n GET streams and counts the streams the server
// resets, until n less the advertised limit are reset or a second passes
// without a frame.
func openStreams(t *testing.T, conn net.Conn, n int) (advertised uint32, refused int) {
	t.Helper()
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	for advertised == 0 {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			advertised = 1 << 31
			if v, ok := sf.Value(http2.SettingMaxConcurrentStreams); ok {
				advertised = v
			}
			if err := fr.WriteSettingsAck(); err != nil {
				t.Fatal(err)
			}
		}
	}
	var hbuf bytes.Buffer
	enc := hpack.NewEncoder(&hbuf)
	for i := range n {
		hbuf.Reset()
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "test"}, {":path", "/"}} {
			_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: hbuf.Bytes(), EndHeaders: true, EndStream: true}); err != nil {
			t.Fatal(err)
		}
	}
	want := n - int(min(advertised, uint32(n)))
	for refused < want {
		_ = conn.SetReadDeadline(time.Now().Add(time.Second))
		f, err := fr.ReadFrame()
		if err != nil {
			break // nothing more: a server without the cap refuses none
		}
		if _, ok := f.(*http2.RSTStreamFrame); ok {
			refused++
		}
	}
	return advertised, refused
}

// A budget of bodies in flight is refused below the largest request it
// must admit; a peer's, also above the budget of all callers (its default
// when that is not given).
func TestInflightBudgetsAreCheckedAgainstTheRequestLimit(t *testing.T) {
	t.Parallel()
	const req = 4096
	all := httpserver.DefaultInflightBytes(req)
	for _, tc := range []struct {
		inflight int64
		ok       bool
	}{{0, true}, {req, true}, {req - 1, false}, {-1, false}} {
		if err := httpserver.ValidateInflight(tc.inflight, req); (err == nil) != tc.ok {
			t.Errorf("ValidateInflight(%d, %d) = %v, want ok %v", tc.inflight, req, err, tc.ok)
		}
	}
	for _, tc := range []struct {
		peer, inflight int64
		ok             bool
	}{
		{0, 0, true}, {req, 0, true}, {req - 1, 0, false}, {-1, 0, false},
		{all, 0, true}, {all + 1, 0, false},
		{8192, 8192, true}, {8193, 8192, false},
	} {
		if err := httpserver.ValidatePeerInflight(tc.peer, tc.inflight, req); (err == nil) != tc.ok {
			t.Errorf("ValidatePeerInflight(%d, %d, %d) = %v, want ok %v", tc.peer, tc.inflight, req, err, tc.ok)
		}
	}
}
