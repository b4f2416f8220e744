package domain

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// Given a peer's refusal read back as one of the sentinels, when the
// engine asks what the peer said, then it matches that sentinel and no
// other, and this server's own error of the same kind is not the peer's.
func TestRemoteErrorIsThePeersAnswer(t *testing.T) {
	t.Parallel()
	cause := errors.New("/protocol.sync.v1.PostboxService/Pull: 400 replayed: token already used")
	remote := fmt.Errorf("pull from b.example:2289: %w", &RemoteError{Reason: ErrTokenReplayed, Cause: cause})

	if !PeerSaid(remote, ErrTokenReplayed) || !errors.Is(remote, ErrTokenReplayed) {
		t.Errorf("the peer's token-replayed refusal is not read as ErrTokenReplayed: %v", remote)
	}
	if PeerSaid(remote, ErrUnknownPeer) || errors.Is(remote, ErrUnknownPeer) {
		t.Errorf("the peer's token-replayed refusal reads as ErrUnknownPeer")
	}
	if !errors.Is(remote, cause) {
		t.Errorf("the transport's error is lost: %v", remote)
	}
	if got, want := remote.Error(), "pull from b.example:2289: "+cause.Error(); got != want {
		t.Errorf("Error() = %q, want the transport's whole message %q", got, want)
	}
	if PeerSaid(fmt.Errorf("register: %w", ErrTokenReplayed), ErrTokenReplayed) {
		t.Errorf("this server's own ErrTokenReplayed is read as the peer's")
	}
	if PeerSaid(&RemoteError{Cause: cause}, ErrTokenReplayed) {
		t.Errorf("a refusal of unknown meaning is read as ErrTokenReplayed")
	}
}

func TestRemoteErrorWithoutTransportErrorSaysWhatItCan(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err   *RemoteError
		want  string
		wraps int
	}{
		{&RemoteError{Reason: ErrUnknownPeer}, "the peer refused: unknown peer", 1},
		{&RemoteError{}, "the peer refused the call", 0},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
		if n := len(tc.err.Unwrap()); n != tc.wraps {
			t.Errorf("%q unwraps to %d errors, want %d", tc.want, n, tc.wraps)
		}
	}
}

// Given a peer at its budget, the wait it asked for is read; any other
// failure, a peer's or this server's, is no request to wait.
func TestPeerBusy(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		err      error
		wait     time.Duration
		wantBusy bool
	}{
		{"busy, asked 2s", fmt.Errorf("push: %w", &RemoteError{Busy: true, RetryAfter: 2 * time.Second}), 2 * time.Second, true},
		{"busy, asked nothing", &RemoteError{Busy: true}, 0, true},
		{"refused, not busy", &RemoteError{Reason: ErrUnavailable, RetryAfter: time.Second}, 0, false},
		{"no answer", errors.New("connection refused"), 0, false},
	}
	for _, tc := range cases {
		wait, busy := PeerBusy(tc.err)
		if wait != tc.wait || busy != tc.wantBusy {
			t.Errorf("%s: PeerBusy = %s, %v; want %s, %v", tc.name, wait, busy, tc.wait, tc.wantBusy)
		}
	}
}
