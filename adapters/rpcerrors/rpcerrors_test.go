package rpcerrors

import (
	"errors"
	"fmt"
	"testing"

	"connectrpc.com/connect"

	"github.com/harmony-postbox/postbox/domain"
)

// Every identifier this server answers with reads back, from a peer, as
// the sentinel it stands for: one table both ways.
func TestFromPeerIsTheReverseOfTheTable(t *testing.T) {
	t.Parallel()
	for _, sentinel := range []error{
		domain.ErrBadAuth, domain.ErrBadToken, domain.ErrBadTokenData, domain.ErrBadTokenSignature,
		domain.ErrTokenVerifyFailure, domain.ErrHostNotAllowed, domain.ErrFederationDisabled,
		domain.ErrTokenReplayed, domain.ErrWrongAudience, domain.ErrExtensionRequired, domain.ErrKeyUnavailable,
		domain.ErrPeerRenamed, domain.ErrUnknownPeer, domain.ErrKeyMismatch, domain.ErrIDTaken,
		domain.ErrStaleTerm, domain.ErrInvalidArgument, domain.ErrNotFound, domain.ErrNotImplemented, domain.ErrUnavailable,
	} {
		id := Classify(sentinel).Identifier
		remote := FromPeer(id, errors.New("the transport's error"), false, 0)
		if !errors.Is(remote, sentinel) || !domain.PeerSaid(remote, sentinel) {
			t.Errorf("a peer's %s reads back as %v, want %v", id, remote.Reason, sentinel)
		}
	}
	// Shared identifiers read back as the general error.
	for id, want := range map[string]error{
		BadUnaryRequest: domain.ErrInvalidArgument,
		Unavailable:     domain.ErrUnavailable,
		"no.such-id":    nil,
	} {
		if got := FromPeer(id, nil, false, 0).Reason; got != want {
			t.Errorf("FromPeer(%s).Reason = %v, want %v", id, got, want)
		}
	}
	if got := FromPeer(ResourceExhausted, nil, true, 0).Reason; got != nil {
		t.Errorf("a peer's busy answer reads as %v, want no reason (Busy says it)", got)
	}
}

// A peer's refusal is never this server's answer: the caller is not told
// that this server does not know a peer because a peer did not know us.
func TestClassifyDoesNotAnswerWithAPeersRefusal(t *testing.T) {
	t.Parallel()
	peerSaid := FromPeer("postbox.unknown-peer", errors.New("/NotifyNewId: 400 postbox.unknown-peer: unknown peer"), false, 0)
	for _, tc := range []struct {
		name string
		err  error
		want Class
	}{
		{"bare", fmt.Errorf("notify b.example:2289: %w", peerSaid), internal},
		{"as this server's unavailability", fmt.Errorf("%w: %w", domain.ErrUnavailable, peerSaid), Classify(domain.ErrUnavailable)},
		{"this server's own", fmt.Errorf("resume: %w", domain.ErrUnknownPeer), Classify(domain.ErrUnknownPeer)},
	} {
		got := Classify(tc.err)
		if got.Identifier != tc.want.Identifier || got.Code != tc.want.Code {
			t.Errorf("%s: Classify = %s (%s), want %s (%s)", tc.name, got.Identifier, got.Code, tc.want.Identifier, tc.want.Code)
		}
	}
	if ce := ToConnect(fmt.Errorf("rename: %w", peerSaid)); ce.Code() == connect.CodeNotFound {
		t.Errorf("a peer's unknown-peer answered over Connect as this server's NotFound: %v", ce)
	}
}
