package simnet_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptrace"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"connectrpc.com/connect"

	"github.com/harmony-postbox/postbox/adapters/hrpc"
	"github.com/harmony-postbox/postbox/adapters/simnet"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
	"github.com/harmony-postbox/postbox/gen/protocol/sync/v1/syncv1connect"
)

const (
	a = "a.test:2289"
	b = "b.test:2289"
	c = "c.test:2289"
)

// counter is a handler that counts its calls and echoes what it was sent
// and by whom.
type counter struct{ n atomic.Int64 }

func (h *counter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.n.Add(1)
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("X-Host", r.Host)
	fmt.Fprintf(w, "%s %s from %s: %s", r.Method, r.URL.Path, r.RemoteAddr, body)
}

func post(t *testing.T, client *http.Client, url, body string) (string, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	return string(got), err
}

func TestCallsReachTheOtherServersHandlersInProcess(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := simnet.New(1, simnet.Faults{})
		defer n.Close()
		hb, hc := &counter{}, &counter{}
		n.Listen(b, hb)
		n.Listen(c, hc)
		start := time.Now()
		got, err := post(t, n.Client(a), "http://"+b+"/x", "hello")
		if err != nil {
			t.Fatal(err)
		}
		fromA := got[strings.Index(got, "from ")+5 : strings.LastIndex(got, ":")]
		if !strings.HasPrefix(got, "POST /x from ") || !strings.HasSuffix(got, ": hello") {
			t.Errorf("reply %q", got)
		}
		got, err = post(t, n.Client(c), "https://"+b+"/y", "")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(got, fromA) {
			t.Errorf("callers a and c look alike to the server: %q, a was %q", got, fromA)
		}
		if hb.n.Load() != 2 || hc.n.Load() != 0 {
			t.Errorf("b served %d calls, c %d; want 2 and 0", hb.n.Load(), hc.n.Load())
		}
		if d := time.Since(start); d != 0 {
			t.Errorf("calls without faults took %v of virtual time, want none", d)
		}
		if n.Calls() != 2 || len(n.Trace()) != 0 {
			t.Errorf("calls %d, faults %v; want 2 calls and no faults", n.Calls(), n.Trace())
		}
	})
}

func TestDropRequestNeverRunsTheHandler(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := simnet.New(1, simnet.Faults{DropRequest: 1})
		defer n.Close()
		h := &counter{}
		n.Listen(b, h)
		_, err := post(t, n.Client(a), "http://"+b+"/x", "e1")
		if !errors.Is(err, simnet.ErrUnreachable) {
			t.Fatalf("got %v, want ErrUnreachable", err)
		}
		synctest.Wait()
		if h.n.Load() != 0 {
			t.Errorf("the handler ran %d times, want 0", h.n.Load())
		}
		if got := n.Counts()[simnet.DropRequest]; got != 1 {
			t.Errorf("drop-request count %d, want 1", got)
		}
	})
}

func TestDropReplyRunsTheHandlerAndFailsTheCall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := simnet.New(1, simnet.Faults{DropReply: 1})
		defer n.Close()
		h := &counter{}
		n.Listen(b, h)
		_, err := post(t, n.Client(a), "http://"+b+"/x", "e1")
		if !errors.Is(err, simnet.ErrUnreachable) {
			t.Fatalf("got %v, want ErrUnreachable", err)
		}
		if h.n.Load() != 1 {
			t.Errorf("the handler ran %d times, want 1", h.n.Load())
		}
	})
}

func TestDuplicateRunsTheHandlerAgainLater(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := simnet.New(1, simnet.Faults{Duplicate: 1, MaxDelay: 10 * time.Second})
		defer n.Close()
		h := &counter{}
		n.Listen(b, h)
		if _, err := post(t, n.Client(a), "http://"+b+"/x", "e1"); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if h.n.Load() != 1 {
			t.Fatalf("the handler ran %d times at once, want 1 (the copy comes later)", h.n.Load())
		}
		lag := n.Trace()[0].Delay
		time.Sleep(lag)
		synctest.Wait()
		if h.n.Load() != 2 {
			t.Errorf("the handler ran %d times after the duplicate's lag %v, want 2", h.n.Load(), lag)
		}
	})
}

func TestDelayHoldsTheCallInVirtualTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := simnet.New(3, simnet.Faults{Delay: 1, MaxDelay: time.Second})
		defer n.Close()
		n.Listen(b, &counter{})
		start := time.Now()
		if _, err := post(t, n.Client(a), "http://"+b+"/x", ""); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		trace := n.Trace()
		if len(trace) != 1 || trace[0].Kind != simnet.Delay {
			t.Fatalf("trace %v, want one delay", trace)
		}
		if took != trace[0].Delay || took <= 0 || took >= time.Second {
			t.Errorf("the call took %v, the recorded delay is %v; want them equal, in (0, 1s)", took, trace[0].Delay)
		}
	})
}

// With a latency, every call takes between half and one and a half of it,
// is no fault, and takes the same time in a second network with the same
// seed: the k-th call alike on a link has its transit fixed like its fate.
func TestLatencySpreadsCallsApartAndReplays(t *testing.T) {
	took := func() []time.Duration {
		var out []time.Duration
		synctest.Test(t, func(t *testing.T) {
			n := simnet.New(5, simnet.Faults{})
			defer n.Close()
			n.SetLatency(10 * time.Millisecond)
			n.Listen(b, &counter{})
			for range 5 {
				start := time.Now()
				if _, err := post(t, n.Client(a), "http://"+b+"/x", ""); err != nil {
					t.Fatal(err)
				}
				out = append(out, time.Since(start))
			}
			if trace := n.Trace(); len(trace) != 0 {
				t.Errorf("latency recorded as faults: %v", trace)
			}
		})
		return out
	}
	first, second := took(), took()
	if !slices.Equal(first, second) {
		t.Errorf("transit times %v, then %v with the same seed", first, second)
	}
	distinct := map[time.Duration]bool{}
	for _, d := range first {
		if d < 5*time.Millisecond || d >= 15*time.Millisecond {
			t.Errorf("a call took %v, want [5ms, 15ms)", d)
		}
		distinct[d] = true
	}
	if len(distinct) < 2 {
		t.Errorf("every call took %v: no spread", first[0])
	}
}

// OnCall hears of every call as it is made, with its content key and its
// count among calls alike on its link, refused ones too.
func TestOnCallHearsOfEveryCall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := simnet.New(1, simnet.Faults{})
		defer n.Close()
		n.KeyBy(func(path string, body []byte) string { return string(body) })
		var heard []simnet.Call
		n.OnCall(func(c simnet.Call) { heard = append(heard, c) })
		n.Listen(b, &counter{})
		for _, body := range []string{"x", "y", "x"} {
			if _, err := post(t, n.Client(a), "http://"+b+"/p", body); err != nil {
				t.Fatal(err)
			}
		}
		_, _ = post(t, n.Client(a), "http://"+c+"/p", "x") // nothing listens
		want := []simnet.Call{
			{From: a, To: b, Path: "/p", Content: "x", Count: 0},
			{From: a, To: b, Path: "/p", Content: "y", Count: 0},
			{From: a, To: b, Path: "/p", Content: "x", Count: 1},
			{From: a, To: c, Path: "/p", Content: "x", Count: 0},
		}
		if !slices.Equal(heard, want) {
			t.Errorf("heard %+v, want %+v", heard, want)
		}
	})
}

// Delays reorder concurrent calls: the one sent first can arrive last.
func TestDelaysReorderConcurrentCalls(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := simnet.New(5, simnet.Faults{Delay: 1, MaxDelay: time.Second})
		defer n.Close()
		var mu sync.Mutex
		var arrived []string
		n.Listen(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			arrived = append(arrived, r.URL.Path)
			mu.Unlock()
		}))
		client := n.Client(a)
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Go(func() { _, _ = post(t, client, fmt.Sprintf("http://%s/%d", b, i), "") })
			synctest.Wait() // each call is sent, and counted, before the next
		}
		wg.Wait()
		if len(arrived) != 8 || slices.IsSorted(arrived) {
			t.Errorf("arrival order %v: want all 8, not in the order sent", arrived)
		}
	})
}

func TestPartitionsAndStoppedServers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := simnet.New(1, simnet.Faults{})
		defer n.Close()
		ha, hb := &counter{}, &counter{}
		n.Listen(a, ha)
		n.Listen(b, hb)
		n.Partition(a, b)
		if _, err := post(t, n.Client(a), "http://"+b+"/x", ""); !errors.Is(err, simnet.ErrUnreachable) {
			t.Errorf("a to b across the partition: %v, want ErrUnreachable", err)
		}
		if _, err := post(t, n.Client(b), "http://"+a+"/x", ""); err != nil {
			t.Errorf("b to a (the other direction): %v", err)
		}
		n.Heal(a, b)
		if _, err := post(t, n.Client(a), "http://"+b+"/x", ""); err != nil {
			t.Errorf("a to b after healing: %v", err)
		}
		n.Unlisten(b)
		if _, err := post(t, n.Client(a), "http://"+b+"/x", ""); !errors.Is(err, simnet.ErrUnreachable) {
			t.Errorf("a to a stopped b: %v, want ErrUnreachable", err)
		}
		if hb.n.Load() != 1 {
			t.Errorf("b served %d calls, want 1", hb.n.Load())
		}
		counts := n.Counts()
		if counts[simnet.Partitioned] != 1 || counts[simnet.Refused] != 1 {
			t.Errorf("counts %v, want one partitioned and one refused", counts)
		}
	})
}

// A caller that gives up gets its context's error at its deadline, in
// virtual time; the handler sees its request cancelled, as when a client
// closes its connection.
func TestCallerDeadlineCancelsTheHandler(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := simnet.New(1, simnet.Faults{})
		cancelled := make(chan struct{})
		n.Listen(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			<-r.Context().Done()
			close(cancelled)
		}))
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		start := time.Now()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+b+"/x", nil)
		_, err := n.Client(a).Do(req)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("got %v, want DeadlineExceeded", err)
		}
		if took := time.Since(start); took != 5*time.Second {
			t.Errorf("gave up after %v, want 5s", took)
		}
		<-cancelled
		n.Close() // waits for the handler
	})
}

// The client's trace hooks fire as over a real connection, so deadlines
// that start at the connection (peerclient's answer deadline) work.
func TestTraceHooksFire(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := simnet.New(1, simnet.Faults{})
		defer n.Close()
		n.Listen(b, &counter{})
		var got []string
		ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{
			GotConn:              func(httptrace.GotConnInfo) { got = append(got, "conn") },
			GotFirstResponseByte: func() { got = append(got, "first byte") },
		})
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+b+"/x", nil)
		resp, err := n.Client(a).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if !slices.Equal(got, []string{"conn", "first byte"}) {
			t.Errorf("hooks %v, want conn then first byte", got)
		}
	})
}

var heavy = simnet.Faults{DropRequest: 0.2, DropReply: 0.2, Duplicate: 0.2, Delay: 0.5, MaxDelay: time.Second}

// callAll makes calls calls on each of the links a->b and a->c, either one
// link after the other or alternating, and returns the network's trace.
func callAll(t *testing.T, seed uint64, calls int, alternate bool) (string, []simnet.Fault) {
	t.Helper()
	var digest string
	var trace []simnet.Fault
	synctest.Test(t, func(t *testing.T) {
		n := simnet.New(seed, heavy)
		n.Listen(b, &counter{})
		n.Listen(c, &counter{})
		client := n.Client(a)
		call := func(to string, i int) { _, _ = post(t, client, fmt.Sprintf("http://%s/%d", to, i), "") }
		if alternate {
			for i := range calls {
				call(b, i)
				call(c, i)
			}
		} else {
			for i := range calls {
				call(c, i)
			}
			for i := range calls {
				call(b, i)
			}
		}
		n.Close()
		digest, trace = n.Digest(), n.Trace()
	})
	return digest, trace
}

// Each call's fate depends on the seed, its link and its number on that
// link only: the same calls in another interleaving meet the same faults.
func TestFaultsFollowTheSeedAndPerLinkCallCounts(t *testing.T) {
	d1, t1 := callAll(t, 42, 50, false)
	d2, t2 := callAll(t, 42, 50, true)
	if d1 != d2 || !slices.Equal(t1, t2) {
		t.Errorf("same seed, other interleaving: digests %s and %s differ", d1, d2)
	}
	kinds := map[simnet.Kind]bool{}
	for _, f := range t1 {
		kinds[f.Kind] = true
	}
	for _, k := range []simnet.Kind{simnet.DropRequest, simnet.DropReply, simnet.Duplicate, simnet.Delay} {
		if !kinds[k] {
			t.Errorf("no %s among %d faults of 100 calls", k, len(t1))
		}
	}
	if d3, _ := callAll(t, 43, 50, false); d3 == d1 {
		t.Errorf("seeds 42 and 43 gave the same digest %s", d1)
	}
}

// callsOnOneLink makes, on the link a->b, calls to two methods and with
// several contents, in the order given, with the body as the content key,
// and returns the trace.
func callsOnOneLink(t *testing.T, order []string) []simnet.Fault {
	t.Helper()
	var trace []simnet.Fault
	synctest.Test(t, func(t *testing.T) {
		n := simnet.New(7, heavy)
		n.KeyBy(func(_ string, body []byte) string { return string(body) })
		n.Listen(b, &counter{})
		client := n.Client(a)
		for _, call := range order {
			path, body, _ := strings.Cut(call, " ")
			_, _ = post(t, client, "http://"+b+path, body)
		}
		n.Close()
		trace = n.Trace()
	})
	return trace
}

// Concurrent calls on one link may reach the network in either order; a
// call's fate follows its method and content (and how many calls alike
// came before it), not its place among the link's calls.
func TestACallsFateDoesNotDependOnTheOtherCallsOfItsLink(t *testing.T) {
	var first, second []string
	for i := range 40 {
		push, pull := fmt.Sprintf("/push seq %d", i), fmt.Sprintf("/pull ack %d", i)
		first = append(first, push, push, pull) // a retried push, then a pull
		second = append(second, pull, push, push)
	}
	t1, t2 := callsOnOneLink(t, first), callsOnOneLink(t, second)
	if len(t1) < 20 || !slices.Equal(t1, t2) {
		t.Errorf("the same calls in another order met other faults:\n%v\n%v", t1, t2)
	}
	retried := false
	for _, f := range t1 {
		retried = retried || f.Call == 1
	}
	if !retried {
		t.Errorf("no fault on the second push of the same content: retries are not told apart")
	}
}

// The real RPC stacks run over the network: hRPC through hrpc.Call and the
// hRPC handler, and Connect and gRPC through connect-go, all to one
// generated handler.
type pushCounter struct {
	syncv1connect.UnimplementedPostboxServiceHandler
	n atomic.Int64
}

func (p *pushCounter) Push(ctx context.Context, r *connect.Request[syncv1.PushRequest]) (*connect.Response[syncv1.PushResponse], error) {
	if r.Msg.GetEvent() == nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("no event"))
	}
	p.n.Add(1)
	return connect.NewResponse(&syncv1.PushResponse{}), nil
}

func TestRPCProtocolsOverTheNetwork(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := simnet.New(1, simnet.Faults{})
		defer n.Close()
		svc := &pushCounter{}
		path, connectHandler := syncv1connect.NewPostboxServiceHandler(svc)
		hrpcHandler := hrpc.NewHandler(slog.New(slog.DiscardHandler), hrpc.Options{},
			hrpc.Unary(syncv1connect.PostboxServicePushProcedure, svc.Push))
		mux := http.NewServeMux()
		mux.Handle(path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if hrpc.IsContentType(r.Header.Get("Content-Type")) {
				hrpcHandler.ServeHTTP(w, r)
				return
			}
			connectHandler.ServeHTTP(w, r)
		}))
		n.Listen(b, mux)
		client := n.Client(a)
		event := &syncv1.Event{Kind: &syncv1.Event_UserInvited_{UserInvited: &syncv1.Event_UserInvited{InviteId: "i1"}}}

		err := hrpc.Call(t.Context(), client, "http://"+b, syncv1connect.PostboxServicePushProcedure, nil,
			&syncv1.PushRequest{Event: event}, &syncv1.PushResponse{}, 1<<20)
		if err != nil {
			t.Errorf("hRPC: %v", err)
		}
		for name, opts := range map[string][]connect.ClientOption{"connect": nil, "grpc": {connect.WithGRPC()}} {
			_, err := syncv1connect.NewPostboxServiceClient(client, "http://"+b, opts...).
				Push(t.Context(), connect.NewRequest(&syncv1.PushRequest{Event: event}))
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
		_, err = syncv1connect.NewPostboxServiceClient(client, "http://"+b).
			Push(t.Context(), connect.NewRequest(&syncv1.PushRequest{}))
		if connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("connect error: %v, want invalid argument", err)
		}
		if svc.n.Load() != 3 {
			t.Errorf("the handler took %d pushes, want 3", svc.n.Load())
		}
	})
}
