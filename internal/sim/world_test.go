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
	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/adapters/peerkeys"
	"github.com/harmony-postbox/postbox/adapters/registry"
	"github.com/harmony-postbox/postbox/adapters/simnet"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
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
// while it runs, the engine on a handle of that storage.
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

	// While running:
	store   *memory.Crashing
	reg     *registry.Registry
	engine  *delivery.Engine
	renames *delivery.Renames
	handler http.Handler
	cancel  context.CancelFunc
	done    chan struct{}
}

func (n *node) running() bool { return n.engine != nil }

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
}

func newWorld(seed uint64, net *simnet.Network, logger *slog.Logger) *world {
	return &world{seed: seed, net: net, logger: logger, acked: map[int]map[int][]uint64{},
		excused: map[int]map[uint64]bool{}, counts: map[string]int{}}
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

// start assembles the node from its storage, as `postbox serve` does, and
// runs it.
func (w *world) start(n *node) error {
	ctx := context.Background()
	n.incarnation++
	logger := w.logger.With("node", n.orig.String())
	rnd := seededReader(w.seed, n.index, n.incarnation)
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
	keysCfg := peerkeys.DefaultConfig()
	keysCfg.Plaintext, keysCfg.Transport = true, w.net.Transport(n.orig.String())
	resolver := peerkeys.New(keysCfg, clock.System{}, logger, reg).WithKnownPeers(reg)
	for id, key := range reg.Keys() {
		resolver.Remember(id, key)
	}
	verifier := domain.NewVerifier(domain.AuthPolicy{}, clock.System{}, resolver, identity)
	signer := authtoken.NewSigner(n.priv, clock.System{}, rnd)
	client := peerclient.New(peerclient.Config{Plaintext: true, Transport: w.net.Transport(n.orig.String())}, signer, reg)
	engine := assembly.NewEngine(delivery.DefaultConfig(), store, codec, reg, client, clock.System{}, logger, rnd, observer{logger, w})
	renames := delivery.NewRenames(engine, reg, resolver, client, identity, clock.System{}, logger)
	service := assembly.NewPostboxService(1<<20, verifier, engine, nil)
	handler := assembly.NewFederationHandler(service, federation.NewKeyService(n.priv.Public().(ed25519.PublicKey)),
		1<<20, httpserver.Admission{}, logger)
	n.store, n.reg, n.engine, n.renames = store, reg, engine, renames
	n.handler = w.watchUpstreamPulls(n, handler)
	for _, own := range reg.OwnIDs() {
		n.addHost(own.ID)
	}
	for _, h := range n.hosts {
		w.net.Listen(h.String(), n.handler)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	n.cancel, n.done = cancel, make(chan struct{})
	go func() {
		defer close(n.done)
		_ = engine.Run(runCtx)
	}()
	return nil
}

func (n *node) addHost(id domain.ServerID) {
	for _, h := range n.hosts {
		if h == id {
			return
		}
	}
	n.hosts = append(n.hosts, id)
}

// stop ends the node as a crash does: its store fails every call from now
// on (whatever it made durable stays), it stops answering, and the engine
// is closed.
func (w *world) stop(n *node) {
	if !n.running() {
		return
	}
	n.store.Crash()
	for _, h := range n.hosts {
		w.net.Unlisten(h.String())
	}
	n.cancel()
	<-n.done
	n.store, n.reg, n.engine, n.renames, n.handler, n.armed = nil, nil, nil, nil, nil, false
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
}
