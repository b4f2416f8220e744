package esdb

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/serverfeatures"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// DefaultCallTimeout bounds one call (one attempt of an append, a read, a
// delete) when the caller's context has no deadline. With one, the
// context's deadline is the call's: the client's own default of 10 s
// would otherwise cut calls the caller allowed longer.
const DefaultCallTimeout = 30 * time.Second

// callDeadline is the client's Deadline option for a call under ctx.
func callDeadline(ctx context.Context) *time.Duration {
	d := DefaultCallTimeout
	if at, ok := ctx.Deadline(); ok {
		d = max(time.Until(at), time.Millisecond)
	}
	return &d
}

// leaderOnly asks the server to serve the call on the leader: a follower
// then answers NotLeader, naming the leader, instead of serving a stale
// read or forwarding a write. The v4 client's RequiresLeader option puts
// the header in incoming metadata, so it never leaves the process; this
// sends it. Not for subscriptions: a NotLeader error there would skip the
// client's reconnect.
func leaderOnly(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "requires-leader", "true")
}

// notLeaderRetries bounds the retries of a read or delete that a follower
// refused: the client has moved to the leader it named by then.
const notLeaderRetries = 3

func isNotLeader(err error) bool {
	var ce *esdb.Error
	return errors.As(err, &ce) && ce.Code() == esdb.ErrorCodeNotLeader
}

// unclear reports errors after which an append may or may not have been
// written: timeouts (the server's commit timeout answers Aborted "Operation
// timed out" while the write may land), lost connections, a follower's
// NotLeader. Retrying with the same event IDs and expected revision is
// safe: the server recognises a write it already holds.
func unclear(err error) bool {
	var ce *esdb.Error
	if errors.As(err, &ce) {
		if st, ok := status.FromError(ce.Err()); ok && ce.Err() != nil && st.Code() == codes.InvalidArgument {
			// A refusal the server explained (a size limit, a bad
			// request): the same request meets the same answer.
			return false
		}
		switch ce.Code() {
		case esdb.ErrorAborted, esdb.ErrorCodeDeadlineExceeded, esdb.ErrorUnavailable,
			esdb.ErrorCodeNotLeader, esdb.ErrorCodeConnectionClosed, esdb.ErrorCodeUnknown:
			return true
		}
		return false
	}
	switch status.Code(err) {
	case codes.Aborted, codes.DeadlineExceeded, codes.Unavailable:
		return true
	}
	return false
}

// minServer is the oldest server version the adapter supports.
var minServer = serverVersion{22, 10, 0}

// serverVersion is a server's major.minor.patch.
type serverVersion struct{ major, minor, patch int }

func (v serverVersion) less(w serverVersion) bool {
	if v.major != w.major {
		return v.major < w.major
	}
	if v.minor != w.minor {
		return v.minor < w.minor
	}
	return v.patch < w.patch
}

func (v serverVersion) String() string { return fmt.Sprintf("%d.%d.%d", v.major, v.minor, v.patch) }

// release is the version without its patch, as releases are named.
func (v serverVersion) release() string { return fmt.Sprintf("%d.%d", v.major, v.minor) }

func parseServerVersion(s string) (serverVersion, error) {
	var v serverVersion
	parts := strings.SplitN(s, ".", 4)
	if len(parts) < 2 {
		return v, fmt.Errorf("server version %q: want major.minor[.patch]", s)
	}
	nums := []*int{&v.major, &v.minor, &v.patch}
	for i := 0; i < len(parts) && i < 3; i++ {
		n, err := strconv.Atoi(parts[i])
		if err != nil {
			return v, fmt.Errorf("server version %q: %w", s, err)
		}
		*nums[i] = n
	}
	return v, nil
}

// errUnsupportedServer says why a server cannot be used.
var errUnsupportedServer = errors.New("unsupported server version")

// checkServer reads the server's version through ServerFeatures, as the
// client does at connect but does not tell, and refuses versions the
// adapter does not support. It dials the node of the connection string,
// or each gossip seed in turn until one answers, itself.
func (s *Store) checkServer(ctx context.Context) (serverVersion, error) {
	targets := []string{s.conf.Address}
	if s.conf.Address == "" {
		targets = targets[:0]
		for _, seed := range s.conf.GossipSeeds {
			targets = append(targets, seed.String())
		}
	}
	var last error
	for _, target := range targets {
		raw, err := s.readVersion(ctx, target)
		if err != nil {
			last = err
			continue
		}
		return checkVersion(raw)
	}
	if last == nil {
		last = errors.New("no node address in the connection string")
	}
	return serverVersion{}, last
}

// checkVersion parses a reported version and refuses unsupported ones.
func checkVersion(raw *string) (serverVersion, error) {
	if raw == nil {
		return serverVersion{}, fmt.Errorf("%w: the server does not report its version (ServerFeatures, served from 21.10), so it is older than %s, which Postbox needs", errUnsupportedServer, minServer.release())
	}
	v, err := parseServerVersion(*raw)
	if err != nil {
		return serverVersion{}, err
	}
	if v.less(minServer) {
		return v, fmt.Errorf("%w: the server runs %s; Postbox needs %s or later, the oldest version its adapter is built and tested against (older versions are past their end of life)", errUnsupportedServer, v, minServer.release())
	}
	return v, nil
}

// readVersion asks one node for its version; nil if it has no
// ServerFeatures service.
func (s *Store) readVersion(ctx context.Context, target string) (*string, error) {
	creds := insecure.NewCredentials()
	if !s.conf.DisableTLS {
		creds = credentials.NewTLS(&tls.Config{
			RootCAs:            s.conf.RootCAs,
			InsecureSkipVerify: s.conf.SkipCertificateVerification, //nolint:gosec // the operator's choice, as for the client
		})
		if s.conf.Username != "" {
			auth := base64.StdEncoding.EncodeToString([]byte(s.conf.Username + ":" + s.conf.Password))
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Basic "+auth)
		}
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("dial %s for its version: %w", target, err)
	}
	defer func() { _ = conn.Close() }()
	ctx, cancel := context.WithTimeout(ctx, DefaultCallTimeout)
	defer cancel()
	methods, err := serverfeatures.NewServerFeaturesClient(conn).GetSupportedMethods(ctx, &shared.Empty{})
	if status.Code(err) == codes.Unimplemented {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the version of %s: %w", target, err)
	}
	v := methods.GetEventStoreServerVersion()
	return &v, nil
}
