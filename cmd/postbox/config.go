package main

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strconv"
	"time"

	"github.com/harmony-postbox/postbox/adapters/admin"
	"github.com/harmony-postbox/postbox/adapters/delivery"
	"github.com/harmony-postbox/postbox/adapters/httpserver"
	"github.com/harmony-postbox/postbox/adapters/netguard"
	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/adapters/replicas"
	"github.com/harmony-postbox/postbox/domain"
)

// Config is everything `postbox serve` is told.
type Config struct {
	ServerID      domain.ServerID
	ServerIDGiven bool // given explicitly, not the default
	Rename        bool // a given --server-id new to this server renames it
	LogJSON       bool // --log-format json
	LogLevel      slog.Level
	Listen        string
	AdminListen   string
	DataDir       string
	KeyFile       string
	Store         string
	// Replica names this process among the replicas of one server sharing
	// the EventStoreDB at Store; empty: a single process (replica mode off).
	Replica string
	// ReplicaLease is how long a replica counts as live after its last
	// heartbeat: a killed replica's peers move after it.
	ReplicaLease  time.Duration
	InsecurePeers bool
	TLS           httpserver.TLSFiles
	PeerCA        string
	AuthWindow    time.Duration
	AllowPeers    []string
	BlockPeers    []string
	RequireExt    bool
	AdminToken    admin.Token
	PeerProtocol  peerclient.Protocol
	MaxRequest    httpserver.MaxRequestBytes
	MaxInflight   int64 // bytes of request bodies in flight; 0: the default
	// MaxPeerInflight bounds one authenticated peer's bodies in flight; 0:
	// a quarter of MaxInflight.
	MaxPeerInflight int64
	// MinBodyBytes must arrive in every BodyWindow while a body is read.
	MinBodyBytes int64
	BodyWindow   time.Duration
	// ConsumerIdleAfter is when a durable consumer that acknowledged
	// nothing is reported idle.
	ConsumerIdleAfter time.Duration
	// RetainReceived: received events older than this, acknowledged by
	// every durable consumer, are removed; 0 keeps everything.
	RetainReceived time.Duration
	Delivery       delivery.Config

	// PlaintextPeers calls peers over http://; PeerNetworks are the
	// internal networks peers may be in (--insecure-peers sets both).
	PlaintextPeers bool
	PeerNetworks   []netip.Prefix
}

// minReplicaLease is the shortest --replica-lease: heartbeats go every
// quarter of it, each a store round trip.
const minReplicaLease = time.Second

// requestOverhead is room in a push request for what surrounds its event.
const requestOverhead = 1 << 10

func parseServeConfig(args []string, help io.Writer, getenv func(string) string) (Config, error) {
	fs := newFlagSet("serve", "", help)
	serverID := fs.String("server-id", "localhost:2289", "this server's ID, `domain:port`")
	rename := fs.Bool("rename", false, "rename this server to --server-id when it differs from the ID stored in the data directory (without it, a new --server-id is refused, and a former one of this server kept from becoming current again)")
	listen := fs.String("listen", ":2289", "federation listener address")
	logFormat := fs.String("log-format", "text", "log lines as text (key=value) or json, on standard error")
	logLevel := fs.String("log-level", "info", "least severe log lines written: debug, info, warn or error")
	adminListen := fs.String("admin-listen", "127.0.0.1:2290", "admin listener address (keep it private)")
	dataDir := fs.String("data-dir", "./postbox-data", "data directory")
	keyFile := fs.String("key-file", "", "Ed25519 key file (default: key.ed25519 in the data directory)")
	store := fs.String("store", "", "event store: empty for the embedded store, or an esdb:// connection string")
	replica := fs.String("replica", "", "run as one of several replicas of this server on the EventStoreDB of --store, under this name (auto: host name plus a random instance ID); empty: a single process")
	replicaLease := fs.Duration("replica-lease", replicas.DefaultLease, "with --replica: how long a replica counts as live after its last heartbeat (written every quarter of it); a killed replica's peers move to the others after this, so shorter moves them sooner and costs more heartbeats")
	insecure := fs.Bool("insecure-peers", false, "shorthand for --plaintext-peers and every network allowed for peers (local work only)")
	plaintext := fs.Bool("plaintext-peers", false, "call peers over http:// instead of https:// (h2c for gRPC)")
	var networks listFlag
	fs.Var(&networks, "allow-peer-networks", "internal networks peers may be in, CIDR, comma-separated (e.g. 10.0.0.0/8,127.0.0.0/8); public addresses are always allowed")
	consumerIdle := fs.Duration("consumer-idle-after", 24*time.Hour, "report a durable consumer idle once it acknowledged nothing for this long (postbox consumers)")
	retainReceived := fs.Duration("retain-received", 0, "remove received events once every durable consumer acknowledged them and they are older than this; with no consumers, once older (0: keep everything)")
	tlsCert := fs.String("tls-cert", "", "TLS certificate file for the federation listener")
	tlsKey := fs.String("tls-key", "", "TLS key file for the federation listener")
	peerCA := fs.String("peer-ca", "", "PEM file of extra CAs trusted for outbound TLS")
	window := fs.Duration("auth-window", domain.DefaultAuthWindow, "how far a token's time may be from now")
	var allow, block listFlag
	fs.Var(&allow, "allow-peers", "only federate with these servers (host, host:port or *.domain; comma-separated)")
	fs.Var(&block, "block-peers", "never federate with these servers (host, host:port or *.domain; comma-separated)")
	requireExt := fs.Bool("require-token-extension", false, "refuse upstream tokens without audience and nonce (Postbox-only federations)")
	adminToken := fs.String("admin-token", "", "bearer token the admin listener requires")
	protocol := fs.String("peer-protocol", "hrpc", "protocol for calls to peers: hrpc, connect or grpc")
	maxRequest := fs.Int64("max-request-bytes", 4<<20, "largest federation request body accepted")
	maxInflight := fs.Int64("max-inflight-bytes", 0, "bytes of federation request bodies held at once, all callers together; at least --max-request-bytes (default: 16 times it, at least 64 MiB)")
	maxPeerInflight := fs.Int64("max-peer-inflight-bytes", 0, "bytes of request bodies one authenticated peer holds at once; at least --max-request-bytes, at most --max-inflight-bytes (default: a quarter of --max-inflight-bytes)")
	minBodyBytes := fs.Int64("min-body-bytes", httpserver.DefaultMinBodyBytes, "bytes a request body must bring in every --body-window while it is read, or the call is cut")
	bodyWindow := fs.Duration("body-window", httpserver.DefaultBodyWindow, "the window of --min-body-bytes")
	dc := delivery.DefaultConfig()
	fs.IntVar(&dc.PushRetries, "push-retries", dc.PushRetries, "retries after a failed push before the peer's events go to its queue")
	fs.BoolVar(&dc.ResumeProbe, "resume-probe", dc.ResumeProbe, "while a peer in queue mode does not pull, push its oldest queued event now and then; false follows the spec strictly")
	fs.DurationVar(&dc.ProbeBackoff.First, "probe-interval", dc.ProbeBackoff.First, "first wait before a resume probe (doubling, up to 10 minutes)")
	fs.DurationVar(&dc.PullInterval, "pull-interval", dc.PullInterval, "pull each peer this long after its last push")
	fs.IntVar(&dc.PushBatchEvents, "push-batch", dc.PushBatchEvents, "most events one push carries to a Postbox peer that takes several (1: one event per push, as to upstream peers)")
	fs.DurationVar(&dc.IdempotencyWindow, "idempotency-window", dc.IdempotencyWindow, "remember send idempotency keys this long; at start the outboxes are read back this far to rebuild them")
	fs.DurationVar(&dc.RetainDelivered, "retain-delivered", 0, "remove each peer's outbox events once delivered (acknowledged) longer ago than this; never an undelivered one (0: keep everything)")
	fs.IntVar(&dc.MaxEventBytes, "max-event-bytes", dc.MaxEventBytes, "largest event send takes (bytes); the default fits every receiver limit Postbox announces and a default EventStoreDB append")
	given, err := parseFlags(fs, args, getenv)
	if err != nil {
		return Config{}, err
	}
	dc.AuthWindow = *window
	cfg := Config{
		ServerIDGiven:     given["server-id"],
		Rename:            *rename,
		Listen:            *listen,
		AdminListen:       *adminListen,
		DataDir:           *dataDir,
		KeyFile:           *keyFile,
		Store:             *store,
		InsecurePeers:     *insecure,
		TLS:               httpserver.TLSFiles{CertFile: *tlsCert, KeyFile: *tlsKey},
		PeerCA:            *peerCA,
		AuthWindow:        *window,
		AllowPeers:        allow,
		BlockPeers:        block,
		RequireExt:        *requireExt,
		AdminToken:        admin.Token(*adminToken),
		MaxRequest:        httpserver.MaxRequestBytes(*maxRequest),
		MaxInflight:       *maxInflight,
		MaxPeerInflight:   *maxPeerInflight,
		MinBodyBytes:      *minBodyBytes,
		BodyWindow:        *bodyWindow,
		ConsumerIdleAfter: *consumerIdle,
		RetainReceived:    *retainReceived,
		Delivery:          dc,
	}
	if cfg.ServerID, err = domain.ParseServerID(*serverID); err != nil {
		return Config{}, flagError("server-id", *serverID, err.Error()+" (a server ID is host:port, the name and port peers reach this server at)", examples["server-id"])
	}
	switch *logFormat {
	case "text":
	case "json":
		cfg.LogJSON = true
	default:
		return Config{}, flagError("log-format", *logFormat, "want text or json", "json")
	}
	if err := cfg.LogLevel.UnmarshalText([]byte(*logLevel)); err != nil {
		return Config{}, flagError("log-level", *logLevel, "want debug, info, warn or error", "warn")
	}
	cfg.PlaintextPeers = *plaintext || *insecure
	if cfg.PeerNetworks, err = netguard.ParseNetworks(networks); err != nil {
		return Config{}, flagError("allow-peer-networks", networks.String(), err.Error(), examples["allow-peer-networks"])
	}
	if cfg.InsecurePeers {
		cfg.PeerNetworks = append(cfg.PeerNetworks, netguard.Everything...)
	}
	if cfg.PeerProtocol, err = peerclient.ParseProtocol(*protocol); err != nil {
		return Config{}, flagError("peer-protocol", *protocol, err.Error(), "grpc")
	}
	if cfg.Replica, err = replicaName(*replica, cfg.Store); err != nil {
		return Config{}, err
	}
	cfg.ReplicaLease = *replicaLease
	if given["replica-lease"] && cfg.Replica == "" {
		return Config{}, exitError{code: 2, err: fmt.Errorf("--replica-lease %s is for replicas: add --replica NAME (and --store), or drop it", cfg.ReplicaLease)}
	}
	if cfg.KeyFile == "" {
		cfg.KeyFile = filepath.Join(cfg.DataDir, "key.ed25519")
	}
	def := func(name string) string { return fs.Lookup(name).DefValue }
	switch {
	case cfg.ReplicaLease < minReplicaLease:
		return Config{}, flagError("replica-lease", cfg.ReplicaLease, fmt.Sprintf("must be at least %s, well above a store round trip, or live replicas would seem dead", minReplicaLease), def("replica-lease"))
	case cfg.AuthWindow <= 0:
		return Config{}, flagError("auth-window", cfg.AuthWindow, "must be positive", def("auth-window"))
	case dc.PushRetries < 0:
		return Config{}, flagError("push-retries", dc.PushRetries, "must be at least 0", def("push-retries"))
	case dc.PushBatchEvents < 1:
		return Config{}, flagError("push-batch", dc.PushBatchEvents, "must be at least 1", def("push-batch"))
	case cfg.ConsumerIdleAfter <= 0:
		return Config{}, flagError("consumer-idle-after", cfg.ConsumerIdleAfter, "must be positive", def("consumer-idle-after"))
	case cfg.RetainReceived < 0:
		return Config{}, flagError("retain-received", cfg.RetainReceived, "must be 0 (keep everything) or positive", "720h")
	case dc.RetainDelivered < 0:
		return Config{}, flagError("retain-delivered", dc.RetainDelivered, "must be 0 (keep everything) or positive", "720h")
	case dc.PullInterval <= 0:
		return Config{}, flagError("pull-interval", dc.PullInterval, "must be positive", def("pull-interval"))
	case dc.IdempotencyWindow <= 0:
		return Config{}, flagError("idempotency-window", dc.IdempotencyWindow, "must be positive", def("idempotency-window"))
	case dc.ProbeBackoff.First <= 0:
		return Config{}, flagError("probe-interval", dc.ProbeBackoff.First, "must be positive", def("probe-interval"))
	case cfg.MaxRequest <= 0:
		return Config{}, flagError("max-request-bytes", int64(cfg.MaxRequest), "must be positive", def("max-request-bytes"))
	case cfg.MinBodyBytes <= 0:
		return Config{}, flagError("min-body-bytes", cfg.MinBodyBytes, "must be positive", def("min-body-bytes"))
	case cfg.BodyWindow <= 0:
		return Config{}, flagError("body-window", cfg.BodyWindow, "must be positive", def("body-window"))
	}
	// An event must fit one push to a receiver of our own kind, with room
	// for the request around it, and one Pull reply. A smaller request
	// limit lowers the default rather than refuse it.
	room := int64(cfg.MaxRequest) - min(requestOverhead, int64(cfg.MaxRequest)/2)
	if !given["max-event-bytes"] {
		dc.MaxEventBytes = int(min(int64(dc.MaxEventBytes), room))
		cfg.Delivery = dc
	}
	if maxEvent := int64(dc.MaxEventBytes); maxEvent <= 0 || maxEvent > room || maxEvent > int64(dc.PullReplyMaxBytes) {
		return Config{}, flagError("max-event-bytes", dc.MaxEventBytes, fmt.Sprintf("must be positive, at most %d (--max-request-bytes less room for the request around the event), and at most %d (a Pull reply)",
			room, dc.PullReplyMaxBytes), strconv.FormatInt(min(room, int64(dc.PullReplyMaxBytes)), 10))
	}
	if err := httpserver.ValidateInflight(cfg.MaxInflight, int64(cfg.MaxRequest)); err != nil {
		return Config{}, exitError{code: 2, err: err}
	}
	if err := httpserver.ValidatePeerInflight(cfg.MaxPeerInflight, cfg.MaxInflight, int64(cfg.MaxRequest)); err != nil {
		return Config{}, exitError{code: 2, err: err}
	}
	return cfg, nil
}
