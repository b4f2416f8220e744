package domain

import (
	"errors"
	"fmt"
)

// Why a federation request was refused. Each names one failure the caller
// can act on; the transport edge maps each to an hRPC identifier, an HTTP
// status and a Connect code in one function.
var (
	ErrBadAuth            = errors.New("missing or unusable authorization")
	ErrBadToken           = errors.New("authorization token is malformed")
	ErrBadTokenData       = errors.New("authorization token data is malformed")
	ErrBadTokenSignature  = errors.New("authorization token signature is not 64 bytes")
	ErrTokenVerifyFailure = errors.New("authorization token signature does not verify")
	ErrHostNotAllowed     = errors.New("server is not allowed to federate with this server")
	ErrFederationDisabled = errors.New("federation is disabled")
	ErrTokenReplayed      = errors.New("authorization token was already used")
	ErrWrongAudience      = errors.New("authorization token is addressed to another server")
	ErrExtensionRequired  = errors.New("authorization token lacks the required postbox extension")
	ErrKeyUnavailable     = errors.New("caller's public key could not be fetched")
	ErrPeerRenamed        = errors.New("server ID was renamed")
	ErrUnknownPeer        = errors.New("unknown peer")
	ErrKeyMismatch        = errors.New("new server ID does not serve the same key")
	ErrIDTaken            = errors.New("server ID already belongs to another peer")
	// ErrStaleTerm refuses a push under a lower owner term than one this
	// server has seen from the sender: the pushing replica has lost the
	// peer to another; it should stop, not retry.
	ErrStaleTerm = errors.New("push under an earlier owner term than one already seen: the sending replica no longer owns this peer")
)

// Errors that are not federation specific.
var (
	ErrInvalidArgument = errors.New("invalid argument")
	ErrNotFound        = errors.New("not found")
	ErrUnavailable     = errors.New("temporarily unavailable")
	ErrNotImplemented  = errors.New("not implemented")
)

// ErrStorageFull means nothing was stored because the disk is full; it is
// temporary (an ErrUnavailable): retry once the operator has freed space.
var ErrStorageFull = fmt.Errorf("disk full, nothing was stored: %w", ErrUnavailable)
