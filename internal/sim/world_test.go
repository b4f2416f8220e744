package sim

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/authtoken"
	"github.com/harmony-postbox/postbox/adapters/clock"
	"github.com/harmony-postbox/postbox/adapters/delivery"
	"github.com/harmony-postbox/postbox/adapters/eventstore/memory"
	"github.com/harmony-postbox/postbox/adapters/federation"
	"github.com/harmony-postbox/postbox/adapters/httpserver"
	"github.com/harmony-postbox/postbox/adapters/noncestore"
	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/adapters/peerkeys"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/adapters/replicas"
	"github.com/harmony-postbox/postbox/adapters/simnet"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	federationv1 "github.com/harmony-postbox/postbox/gen/postbox/federation/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
	"github.com/harmony-postbox/postbox/gen/protocol/sync/v1/syncv1connect"
	"github.com/harmony-postbox/postbox/internal/assembly"
)

// lockedReader is a seeded random source shared by one server's parts
// (codec, registry, signer, engine), so the IDs and nonces it makes follow
// the seed.
type lockedReader struct {
	mu sync.Mutex
	r  *rand.ChaCha8
}

func (l *lockedReader) Read(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Read(p)
}

func seededReader(seed uint64, who, incarnation int) io.Reader {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	s[8], s[9] = byte(who), byte(incarnation)
	s[10] = 0x5e
	return &lockedReader{r: rand.NewChaCha8(s)}
}

// node is one Postbox server of the simulation: its durable storage and,
// while it runs, the engines on handles of that storage: one process, or
// several replicas sharing it (as `serve --replica` on one EventStoreDB).
type node struct {
	index int
	orig  domain.ServerID // the ID it started with; others send to it by this ID
	hosts []domain.ServerID
	priv  ed25519.PrivateKey

	storage     *memory.Storage
	incarnation int
	restored    bool // its storage was rolled back at least once
	renamed     bool
	armed       bool // a crash is armed in its store
	// replicas: how many replicas the server runs as (0: one process, not
	// in replica mode); started counts replicas ever started, for names.
	replicas, started int

	// While running: the processes (mu guards the list, which handlers
	// read), and the first one not paused, which the harness sends with
	// (nil fields if there is none).
	mu      sync.Mutex
	procs   []*process
	turn    int // the next process a request goes to
	handler http.Handler
	store   *memory.Crashing
	reg     *registry.Registry
	engine  *delivery.Engine
	renames *delivery.Renames
}

// process is one engine of a node on its own handle of the node's storage.
type process struct {
	name    string // the replica's name; "" for a single process
	store   *memory.Crashing
	beats   *memory.Crashing // the replica's heartbeats' handle; nil for a single process
	reg     *registry.Registry
	engine  *delivery.Engine
	renames *delivery.Renames
	handler http.Handler
	gate    *gate // holds its outbound calls while it is paused
	paused  bool
	cancel  context.CancelFunc
	done    chan struct{}
}

func (n *node) running() bool { return n.engine != nil }

// live lists the node's processes.
func (n *node) live() []*process {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.procs)
}

// refront points the node's fields at its first process not paused.
func (n *node) refront() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.store, n.reg, n.engine, n.renames = nil, nil, nil, nil
	for _, p := range n.procs {
		if !p.paused {
			n.store, n.reg, n.engine, n.renames = p.store, p.reg, p.engine, p.renames
			return
		}
	}
}

// pick chooses the process a request to the node goes to, as a load
// balancer does: the processes not paused in turn, or a paused one (whose
// handler then hangs) if every one is.
func (n *node) pick() *process {
	n.mu.Lock()
	defer n.mu.Unlock()
	var awake []*process
	for _, p := range n.procs {
		if !p.paused {
			awake = append(awake, p)
		}
	}
	if len(awake) == 0 {
		awake = n.procs
	}
	if len(awake) == 0 {
		return nil
	}
	n.turn++
	return awake[n.turn%len(awake)]
}

// gate holds a paused process's outbound calls until it resumes or dies.
type gate struct {
	inner http.RoundTripper

	mu      sync.Mutex
	resumed chan struct{} // nil while open
	dead    chan struct{}
}

func newGate(inner http.RoundTripper) *gate { return &gate{inner: inner, dead: make(chan struct{})} }

func (g *gate) pause() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.resumed == nil {
		g.resumed = make(chan struct{})
	}
}

func (g *gate) resume() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.resumed != nil {
		close(g.resumed)
		g.resumed = nil
	}
}

func (g *gate) kill() { close(g.dead) }

func (g *gate) RoundTrip(r *http.Request) (*http.Response, error) {
	g.mu.Lock()
	resumed := g.resumed
	g.mu.Unlock()
	if resumed != nil {
		select {
		case <-resumed:
		case <-g.dead:
			return nil, fmt.Errorf("the process died while paused: %w", simnet.ErrUnreachable)
		case <-r.Context().Done():
			return nil, r.Context().Err()
		}
	}
	return g.inner.RoundTrip(r)
}

// world is one seeded run.
type world struct {
	seed   uint64
	net    *simnet.Network
	logger *slog.Logger
	nodes  []*node
	up     *upstream // nil: no upstream-style receiver in this run

	mu sync.Mutex
	// acked[s][r]: the serials of events node s's Send accepted for
	// receiver r (an index of nodes, or len(nodes) for the upstream one).
	acked map[int]map[int][]uint64
	// excused[s]: events node s wrote into a Pull reply to the upstream
	// receiver (such a reply counts as delivered even if lost).
	excused map[int]map[uint64]bool

	counts map[string]int // harness faults: crashes, restores, renames, partitions

	// sentTo: the receiver each serial was sent to (as planned, before
	// Send, which may land in the outbox even if it fails).
	sentTo map[uint64]int
	// restoredAt: when each restored server's store last went back;
	// lost[r][s]: what that removed from r's inbox from s (delivered_test.go).
	restoredAt map[int]time.Time
	lost       map[int]map[int]lostEvents
	// repairs: each time a sender found a receiver behind what it had
	// been given.
	repairs []repair
	// replicaChanged: when a replica of each server last started, died,
	// paused or resumed.
	replicaChanged map[int]time.Time

	// pushes (pushes.go) holds the recent push attempts of each event on
	// each link, and storms what they showed; behind a lock of their own,
	// as the network reports calls with its lock held.
	pushes pushLog
}

func newWorld(seed uint64, net *simnet.Network, logger *slog.Logger) *world {
	return &world{seed: seed, net: net, logger: logger, acked: map[int]map[int][]uint64{},
		excused: map[int]map[uint64]bool{}, counts: map[string]int{},
		sentTo: map[uint64]int{}, restoredAt: map[int]time.Time{}, lost: map[int]map[int]lostEvents{},
		replicaChanged: map[int]time.Time{}}
}

func nodeID(i int) domain.ServerID { return domain.MustParseServerID(fmt.Sprintf("pb%d.sim:2289", i)) }

func (w *world) addNode() *node {
	i := len(w.nodes)
	var seed [32]byte
	copy(seed[:], fmt.Sprintf("node %d seed %d", i, w.seed))
	n := &node{index: i, orig: nodeID(i), hosts: []domain.ServerID{nodeID(i)},
		priv: ed25519.NewKeyFromSeed(seed[:]), storage: memory.NewStorage()}
	w.nodes = append(w.nodes, n)
	return n
}

// start assembles the node from its storage, as `postbox serve` does (as
// many times as it has replicas), and runs it.
func (w *world) start(n *node) error {
	n.incarnation++
	for range max(n.replicas, 1) {
		if err := w.startProcess(n); err != nil {
			return err
		}
	}
	n.handler = w.watchUpstreamPulls(n, http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		p := n.pick()
		if p == nil {
			panic(http.ErrAbortHandler) // every process died meanwhile
		}
		p.handler.ServeHTTP(rw, r)
	}))
	n.mu.Lock()
	hosts := slices.Clone(n.hosts)
	n.mu.Unlock()
	for _, h := range hosts {
		w.net.Listen(h.String(), n.handler)
	}
	return nil
}

// startProcess starts one more process of the node: the only one, or one
// more replica.
func (w *world) startProcess(n *node) error {
	ctx := context.Background()
	n.started++
	name := ""
	if n.replicas > 0 {
		name = fmt.Sprintf("r%d", n.started)
	}
	logger := w.logger.With("node", n.orig.String())
	if name != "" {
		logger = logger.With("replica", name)
	}
	rnd := seededReader(w.seed, n.index, n.incarnation*16+n.started)
	store := memory.NewCrashing(n.storage.Open(memory.Options{}))
	codec := streams.NewCodec(rnd)
	reg, err := registry.Load(ctx, store, codec, rnd, logger)
	if err != nil {
		return fmt.Errorf("load the registry of %s: %w", n.orig, err)
	}
	if _, ok := reg.OwnID(); !ok {
		if err := reg.RecordOwnID(ctx, n.orig, time.Now()); err != nil {
			return fmt.Errorf("record the ID of %s: %w", n.orig, err)
		}
	}
	identity := domain.IdentityFromHistory(reg.OwnIDs(), domain.DefaultAudienceGrace)
	out := newGate(w.net.Transport(n.orig.String()))
	keysCfg := peerkeys.DefaultConfig()
	keysCfg.Plaintext, keysCfg.Transport = true, out
	resolver := peerkeys.New(keysCfg, clock.System{}, logger, reg).WithKnownPeers(reg)
	for id, key := range reg.Keys() {
		resolver.Remember(id, key)
	}
	verifier := domain.NewVerifier(domain.AuthPolicy{}, clock.System{}, resolver, identity)
	signer := authtoken.NewSigner(n.priv, clock.System{}, rnd)
	client := peerclient.New(peerclient.Config{Plaintext: true, Transport: out}, signer, reg)
	engine := assembly.NewEngine(delivery.DefaultConfig(), store, codec, reg, client, clock.System{}, logger, rnd, observer{logger, w, n.index})
	renames := delivery.NewRenames(engine, reg, resolver, client, identity, clock.System{}, logger)
	runCtx, cancel := context.WithCancel(context.Background())
	var reps *replicas.Replicas
	var beats *memory.Crashing
	if name != "" {
		// As provideVerifier and provideReplicas do for `serve --replica`.
		ledger, previous := noncestore.Open(store, codec, time.Now, 5*time.Second, logger)
		verifier.PersistNonces(previous, ledger)
		// Its heartbeats go through a handle of their own, which a pause
		// holds (see pause).
		beats = memory.NewCrashing(n.storage.Open(memory.Options{}))
		reps, err = replicas.New(replicas.Config{Name: name, ServerID: identity.Current().String(), PublicKey: n.priv.Public().(ed25519.PublicKey)},
			beats, codec, clock.System{}, rnd, logger)
		if err == nil {
			err = reps.Start(ctx, time.After)
		}
		if err != nil {
			cancel()
			return fmt.Errorf("start replica %s of %s: %w", name, n.orig, err)
		}
		engine.UseOwners(reps)
	}
	service := assembly.NewPostboxService(1<<20, verifier, engine, nil)
	handler := assembly.NewFederationHandler(service, federation.NewKeyService(n.priv.Public().(ed25519.PublicKey)),
		1<<20, httpserver.Admission{}, logger)
	p := &process{name: name, store: store, beats: beats, reg: reg, engine: engine, renames: renames, handler: handler, gate: out,
		cancel: cancel, done: make(chan struct{})}
	for _, own := range reg.OwnIDs() {
		n.addHost(own.ID)
	}
	go func() {
		defer close(p.done)
		var wg sync.WaitGroup
		if reps != nil {
			wg.Go(func() { reps.Run(runCtx, time.After) })
		}
		_ = engine.Run(runCtx)
		wg.Wait()
	}()
	n.mu.Lock()
	n.procs = append(n.procs, p)
	n.mu.Unlock()
	n.refront()
	w.replicaChange(n)
	return nil
}

// replicaChange notes that the replicas of n changed now.
func (w *world) replicaChange(n *node) {
	if n.replicas == 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.replicaChanged[n.index] = time.Now()
}

func (n *node) addHost(id domain.ServerID) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !slices.Contains(n.hosts, id) {
		n.hosts = append(n.hosts, id)
	}
}

// stop ends the node as a crash does: every process's store fails every
// call from now on (whatever it made durable stays), it stops answering,
// and the engines are closed.
func (w *world) stop(n *node) {
	for _, p := range n.live() {
		w.kill(n, p)
	}
	n.armed = false
}

// kill ends one process of the node as a crash does; the node stops
// answering once none is left.
func (w *world) kill(n *node, p *process) {
	p.store.Crash()
	if p.beats != nil {
		p.beats.Crash()
	}
	p.gate.kill()
	n.mu.Lock()
	n.procs = slices.DeleteFunc(n.procs, func(q *process) bool { return q == p })
	last := len(n.procs) == 0
	hosts := slices.Clone(n.hosts)
	n.mu.Unlock()
	if last {
		for _, h := range hosts {
			w.net.Unlisten(h.String())
		}
		n.handler = nil
	}
	p.cancel()
	<-p.done
	n.refront()
	w.replicaChange(n)
}

// pause holds a replica's heartbeats and outbound calls, and sends it no
// requests, until resume: to the others it is a process stopped by its
// scheduler for longer than its lease, whose peers they take over, while
// it still believes it runs them; a push it had sent, held on the way,
// goes out when it resumes. Its engine's store calls go on: holding them
// would hold the engine's locks across the pause, which virtual time
// cannot get past (testing/synctest does not count a goroutine waiting on
// a mutex as blocked), and the fence and terms are what a pause tests.
func (w *world) pause(n *node, p *process) {
	if p.beats != nil {
		p.beats.Pause()
	}
	p.gate.pause()
	n.mu.Lock()
	p.paused = true
	n.mu.Unlock()
	n.refront()
	w.replicaChange(n)
}

func (w *world) resume(n *node, p *process) {
	n.mu.Lock()
	p.paused = false
	n.mu.Unlock()
	p.gate.resume()
	if p.beats != nil {
		p.beats.Resume()
	}
	n.refront()
	w.replicaChange(n)
}

// upstreamHeader marks the upstream receiver's calls, so a sender's handler
// can note what its Pull replies to it held.
const upstreamHeader = "X-Sim-Upstream"

// watchUpstreamPulls notes the events of every Pull reply n writes to the
// upstream receiver: PROTOCOL.md counts them delivered once written, even
// if the network then loses the reply.
func (w *world) watchUpstreamPulls(n *node, h http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Header.Get(upstreamHeader) == "" || r.URL.Path != syncv1connect.PostboxServicePullProcedure {
			h.ServeHTTP(rw, r)
			return
		}
		rec := &recordingWriter{ResponseWriter: rw, status: http.StatusOK}
		h.ServeHTTP(rec, r)
		var res syncv1.PullResponse
		if rec.status != http.StatusOK || proto.Unmarshal(rec.body.Bytes(), &res) != nil {
			return
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.excused[n.index] == nil {
			w.excused[n.index] = map[uint64]bool{}
		}
		for _, ev := range res.GetEventQueue() {
			w.excused[n.index][serialOf(ev)] = true
		}
	})
}

type recordingWriter struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (r *recordingWriter) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *recordingWriter) Write(p []byte) (int, error) {
	r.body.Write(p)
	return r.ResponseWriter.Write(p)
}

// Each event names its sender (guild_id = index+1) and a serial unique in
// the run (user_id), so a receiver's stream says which events it got.
func event(sender int, serial uint64) *syncv1.Event {
	return &syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{
		UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: serial, GuildId: uint64(sender) + 1}}}
}

func serialOf(ev *syncv1.Event) uint64 { return ev.GetUserAddedToGuild().GetUserId() }
func senderOf(ev *syncv1.Event) int    { return int(ev.GetUserAddedToGuild().GetGuildId()) - 1 }

// upstream is a receiver that speaks sync.v1 as upstream servers do: no
// sequence extension, no acknowledgement; it pulls every Postbox server
// now and then and takes pushes, one event each.
type upstream struct {
	syncv1connect.UnimplementedPostboxServiceHandler
	id     domain.ServerID
	client *peerclient.Client

	mu  sync.Mutex
	got map[int][]uint64 // by sender, in order of arrival, repeats included
}

const upstreamIndex = 99

func upstreamID() domain.ServerID { return domain.MustParseServerID("upstream.sim:2289") }

func (w *world) addUpstream() {
	var seed [32]byte
	copy(seed[:], fmt.Sprintf("upstream seed %d", w.seed))
	priv := ed25519.NewKeyFromSeed(seed[:])
	u := &upstream{id: upstreamID(), got: map[int][]uint64{}}
	signer := authtoken.NewSigner(priv, clock.System{}, seededReader(w.seed, upstreamIndex, 0))
	u.client = peerclient.New(peerclient.Config{Plaintext: true, Transport: markUpstream{w.net.Transport(u.id.String())}},
		signer, fixedSelf(u.id))
	w.net.Listen(u.id.String(), httpserver.NewFederationHandler(u, federation.NewKeyService(priv.Public().(ed25519.PublicKey)),
		1<<20, w.logger))
	w.up = u
}

type fixedSelf domain.ServerID

func (s fixedSelf) IDFor(domain.ServerID) domain.ServerID { return domain.ServerID(s) }

type markUpstream struct{ inner http.RoundTripper }

func (m markUpstream) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(upstreamHeader, "1")
	return m.inner.RoundTrip(r)
}

func (u *upstream) note(events []*syncv1.Event) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, ev := range events {
		u.got[senderOf(ev)] = append(u.got[senderOf(ev)], serialOf(ev))
	}
}

// Push takes the one event an upstream push carries, ignoring the fields
// it does not know (the sequence number and the continuity claim).
func (u *upstream) Push(_ context.Context, req *connect.Request[syncv1.PushRequest]) (*connect.Response[syncv1.PushResponse], error) {
	u.note([]*syncv1.Event{req.Msg.GetEvent()})
	return connect.NewResponse(&syncv1.PushResponse{}), nil
}

// Pull: the upstream receiver queues nothing for anyone.
func (u *upstream) Pull(context.Context, *connect.Request[syncv1.PullRequest]) (*connect.Response[syncv1.PullResponse], error) {
	return connect.NewResponse(&syncv1.PullResponse{}), nil
}

// pullAll pulls every server once, with no acknowledgement, as upstream
// does.
func (u *upstream) pullAll(ctx context.Context, servers []domain.ServerID) {
	for _, s := range servers {
		callCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		res, err := u.client.Pull(callCtx, s, nil)
		cancel()
		if err == nil {
			u.note(res.Events)
		}
	}
}

func (u *upstream) received() map[int][]uint64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := map[int][]uint64{}
	for k, v := range u.got {
		out[k] = append([]uint64(nil), v...)
	}
	return out
}

// contentKey keys a call's content for simnet's fault decisions by what
// follows from the workload, not from goroutine timing: a push by the
// sequence number it starts at (retries of it are counted apart; how many
// events follow it depends on when the push loop read the outbox). Other
// calls go by their method's count on the link alone: a pull's
// acknowledgement depends on whether a push landed just before it, and
// record IDs, epochs and token nonces come from random sources that a
// server's goroutines share.
func contentKey(path string, body []byte) string {
	if path != syncv1connect.PostboxServicePushProcedure {
		return ""
	}
	var req federationv1.PushRequestExt
	if proto.Unmarshal(body, &req) != nil {
		return ""
	}
	return fmt.Sprintf("seq %d", req.GetSeq())
}

func discardLogger() *slog.Logger {
	if os.Getenv("POSTBOX_SIM_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// observer logs, at debug level, what the engine tells its metrics, and
// counts the repairs of continuity (a receiver's account that contradicted
// the sender's outbox).
type observer struct {
	logger *slog.Logger
	w      *world
	node   int
}

func (o observer) PushAttempted(peer domain.ServerID, took time.Duration, events int, err error) {
	o.logger.Debug("push", "peer", peer.String(), "events", events, "err", err)
}
func (o observer) PullServed(peer domain.ServerID, events int) {
	o.logger.Debug("pull served", "peer", peer.String(), "events", events)
}
func (o observer) PullMade(peer domain.ServerID, err error) {
	o.logger.Debug("pull made", "peer", peer.String(), "err", err)
}
func (o observer) Received(peer domain.ServerID, via string, n int) {
	o.logger.Debug("received", "peer", peer.String(), "via", via, "events", n)
}
func (o observer) Continuity(peer domain.ServerID, kind string) {
	o.logger.Debug("continuity", "peer", peer.String(), "kind", kind)
	o.w.count("repair:" + kind)
	if kind == "receiver_behind" {
		o.w.mu.Lock()
		defer o.w.mu.Unlock()
		o.w.repairs = append(o.w.repairs, repair{by: o.node, peer: peer.String(), kind: kind, at: time.Now()})
	}
}
