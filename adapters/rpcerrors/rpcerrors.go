// Package rpcerrors is the one place where errors become what a caller sees:
// an hRPC identifier with its HTTP status, and a Connect code. Messages sent
// to callers are stable and sanitized; the full error goes to the log.
package rpcerrors

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/harmony-postbox/postbox/domain"
	hrpcv1 "github.com/harmony-postbox/postbox/gen/hrpc/v1"
)

// Reserved hRPC identifiers.
const (
	InternalServerError = "hrpc.internal-server-error"
	ResourceExhausted   = "hrpc.resource-exhausted"
	NotFound            = "hrpc.not-found"
	NotImplemented      = "hrpc.not-implemented"
	Unavailable         = "hrpc.unavailable"
	BadUnaryRequest     = "hrpc.http.bad-unary-request"
)

// Class is how one kind of error looks on every transport.
type Class struct {
	Identifier string
	HTTPStatus int
	Code       connect.Code
	// Message is what the caller is told: the sentinel's text, never the
	// wrapped details, which may name internal state.
	Message string
	// Level is how loud the log line for it is: refusals of bad requests
	// are routine (Info), failures of this server are not (Error).
	Level slog.Level
}

// ErrRequestTooLarge refuses a request body over the size limit, before or
// while it is read.
var ErrRequestTooLarge = errors.New("request body too large")

type rule struct {
	err   error
	class Class
	// ownOnly: a peer's answer with this identifier does not mean err (the
	// identifier is shared and means another rule's error, or err is about
	// this side only), so FromPeer does not read it back as err.
	ownOnly bool
}

var rules = []rule{
	{ErrRequestTooLarge, Class{ResourceExhausted, http.StatusRequestEntityTooLarge, connect.CodeResourceExhausted, "", slog.LevelInfo}, true},
	{domain.ErrBadAuth, Class{"h.bad-auth", http.StatusBadRequest, connect.CodeUnauthenticated, "", slog.LevelInfo}, false},
	{domain.ErrBadToken, Class{"h.bad-token", http.StatusBadRequest, connect.CodeUnauthenticated, "", slog.LevelInfo}, false},
	{domain.ErrBadTokenData, Class{"h.bad-token-data", http.StatusBadRequest, connect.CodeUnauthenticated, "", slog.LevelInfo}, false},
	{domain.ErrBadTokenSignature, Class{"h.bad-token-signature", http.StatusBadRequest, connect.CodeUnauthenticated, "", slog.LevelInfo}, false},
	{domain.ErrTokenVerifyFailure, Class{"h.token-verify-failure", http.StatusBadRequest, connect.CodeUnauthenticated, "", slog.LevelWarn}, false},
	{domain.ErrHostNotAllowed, Class{"h.host-not-allowed", http.StatusForbidden, connect.CodePermissionDenied, "", slog.LevelInfo}, false},
	{domain.ErrFederationDisabled, Class{"h.federation-disabled", http.StatusForbidden, connect.CodePermissionDenied, "", slog.LevelInfo}, false},
	{domain.ErrTokenReplayed, Class{"postbox.token-replayed", http.StatusBadRequest, connect.CodeUnauthenticated, "", slog.LevelWarn}, false},
	{domain.ErrWrongAudience, Class{"postbox.wrong-audience", http.StatusBadRequest, connect.CodeUnauthenticated, "", slog.LevelWarn}, false},
	{domain.ErrExtensionRequired, Class{"postbox.extension-required", http.StatusBadRequest, connect.CodeUnauthenticated, "", slog.LevelInfo}, false},
	{domain.ErrKeyUnavailable, Class{"postbox.key-unavailable", http.StatusBadGateway, connect.CodeUnavailable, "", slog.LevelWarn}, false},
	{domain.ErrPeerRenamed, Class{"postbox.peer-renamed", http.StatusBadRequest, connect.CodeFailedPrecondition, "", slog.LevelInfo}, false},
	{domain.ErrUnknownPeer, Class{"postbox.unknown-peer", http.StatusBadRequest, connect.CodeNotFound, "", slog.LevelInfo}, false},
	{domain.ErrKeyMismatch, Class{"postbox.key-mismatch", http.StatusBadRequest, connect.CodePermissionDenied, "", slog.LevelWarn}, false},
	{domain.ErrIDTaken, Class{"postbox.id-taken", http.StatusConflict, connect.CodeAlreadyExists, "", slog.LevelInfo}, false},
	{domain.ErrStaleTerm, Class{"postbox.stale-term", http.StatusConflict, connect.CodeAborted, "", slog.LevelInfo}, false},
	{domain.ErrInvalidServerID, Class{BadUnaryRequest, http.StatusBadRequest, connect.CodeInvalidArgument, "", slog.LevelInfo}, true},
	{domain.ErrInvalidArgument, Class{BadUnaryRequest, http.StatusBadRequest, connect.CodeInvalidArgument, "", slog.LevelInfo}, false},
	{domain.ErrNotFound, Class{NotFound, http.StatusNotFound, connect.CodeNotFound, "", slog.LevelInfo}, false},
	{domain.ErrNotImplemented, Class{NotImplemented, http.StatusNotImplemented, connect.CodeUnimplemented, "", slog.LevelInfo}, false},
	{domain.ErrStorageFull, Class{Unavailable, http.StatusServiceUnavailable, connect.CodeUnavailable, "", slog.LevelWarn}, true},
	{domain.ErrUnavailable, Class{Unavailable, http.StatusServiceUnavailable, connect.CodeUnavailable, "", slog.LevelWarn}, false},
	{context.DeadlineExceeded, Class{Unavailable, http.StatusServiceUnavailable, connect.CodeDeadlineExceeded, "deadline exceeded", slog.LevelWarn}, true},
	{context.Canceled, Class{Unavailable, http.StatusServiceUnavailable, connect.CodeCanceled, "request canceled", slog.LevelInfo}, true},
}

var internal = Class{InternalServerError, http.StatusInternalServerError, connect.CodeInternal, "internal server error", slog.LevelError}

// Classify finds the class of err. Unknown errors are internal errors.
func Classify(err error) Class {
	var busy *Busy
	if errors.As(err, &busy) {
		return Class{ResourceExhausted, http.StatusTooManyRequests, connect.CodeResourceExhausted, busy.Error(), slog.LevelWarn}
	}
	for _, r := range rules {
		if isOwn(err, r.err) {
			c := r.class
			if c.Message == "" {
				c.Message = r.err.Error()
			}
			return c
		}
	}
	// An error built by a handler with connect.NewError already says its code.
	var ce *connect.Error
	if errors.As(err, &ce) {
		return classOfCode(ce.Code(), ce.Message())
	}
	return internal
}

// isOwn is errors.Is(err, target) that does not look inside a peer's
// refusal (domain.RemoteError): what a peer answered about itself is
// never this server's answer to its own caller.
func isOwn(err, target error) bool {
	switch e := err.(type) {
	case nil, *domain.RemoteError:
		return false
	case interface{ Is(error) bool }:
		if e.Is(target) {
			return true
		}
	}
	if err == target {
		return true
	}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		return isOwn(u.Unwrap(), target)
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			if isOwn(e, target) {
				return true
			}
		}
	}
	return false
}

// FromPeer reads a peer's error answer back through the same table: the
// returned error matches, with errors.Is, the sentinel the identifier
// stands for, but stays the peer's (Classify never answers this server's
// callers with it). cause is the transport's error; busy and retryAfter
// say whether the peer asked to be called again later, and when.
func FromPeer(identifier string, cause error, busy bool, retryAfter time.Duration) *domain.RemoteError {
	remote := &domain.RemoteError{Cause: cause, Busy: busy, RetryAfter: retryAfter}
	for _, r := range rules {
		if r.class.Identifier == identifier && !r.ownOnly {
			remote.Reason = r.err
			break
		}
	}
	return remote
}

// classOfCode maps a Connect code to the nearest hRPC class, for errors that
// only carry a code.
func classOfCode(code connect.Code, msg string) Class {
	c := internal
	switch code {
	case connect.CodeInvalidArgument, connect.CodeFailedPrecondition, connect.CodeOutOfRange:
		c = Class{BadUnaryRequest, http.StatusBadRequest, code, msg, slog.LevelInfo}
	case connect.CodeNotFound:
		c = Class{NotFound, http.StatusNotFound, code, msg, slog.LevelInfo}
	case connect.CodeUnimplemented:
		c = Class{NotImplemented, http.StatusNotImplemented, code, msg, slog.LevelInfo}
	case connect.CodeUnavailable, connect.CodeDeadlineExceeded, connect.CodeCanceled:
		c = Class{Unavailable, http.StatusServiceUnavailable, code, msg, slog.LevelWarn}
	case connect.CodeResourceExhausted:
		c = Class{ResourceExhausted, http.StatusTooManyRequests, code, msg, slog.LevelWarn}
	case connect.CodeUnauthenticated:
		c = Class{"h.bad-auth", http.StatusBadRequest, code, msg, slog.LevelInfo}
	case connect.CodePermissionDenied:
		c = Class{"h.host-not-allowed", http.StatusForbidden, code, msg, slog.LevelInfo}
	}
	return c
}

// ToConnect turns err into the error a Connect or gRPC caller sees, with
// the hRPC identifier in metadata so both kinds of client can tell the
// postbox.* reasons apart.
func ToConnect(err error) *connect.Error {
	c := Classify(err)
	ce := connect.NewError(c.Code, errors.New(c.Message))
	ce.Meta().Set(IdentifierHeader, c.Identifier)
	if info, ok := RetryInfo(err); ok {
		// Ours, which hRPC carries too, and gRPC's own, which gRPC
		// clients and proxies understand.
		if d, derr := connect.NewErrorDetail(info); derr == nil {
			ce.AddDetail(d)
		}
		delay := durationpb.New(time.Duration(info.GetRetryAfter()) * time.Second)
		if d, derr := connect.NewErrorDetail(&errdetails.RetryInfo{RetryDelay: delay}); derr == nil {
			ce.AddDetail(d)
		}
	}
	return ce
}

// IdentifierHeader carries the hRPC identifier on Connect and gRPC errors.
const IdentifierHeader = "Postbox-Error-Identifier"

// Busy refuses a request because this server is at one of its budgets (the
// bytes of request bodies in flight, in all or for one peer). It is answered
// as hrpc.resource-exhausted (429) or ResourceExhausted, with RetryInfo, so
// the caller waits and tries again instead of counting a failure.
type Busy struct {
	// What is spent, for the caller: "request bodies in flight", ...
	Budget string
	// RetryAfter is the hint given to the caller, in whole seconds (at
	// least one).
	RetryAfter time.Duration
}

func (e *Busy) Error() string {
	return "server busy: " + e.Budget + " at its limit; retry later"
}

// retryAfterSeconds is the hint in RetryInfo's unit: whole seconds, at
// least one, as uint32.
func (e *Busy) retryAfterSeconds() uint32 {
	s := (e.RetryAfter + time.Second - 1) / time.Second
	return uint32(min(max(s, 1), math.MaxUint32))
}

// RetryInfo returns the hrpc.v1.RetryInfo of a Busy error, if err is one.
func RetryInfo(err error) (*hrpcv1.RetryInfo, bool) {
	var busy *Busy
	if !errors.As(err, &busy) {
		return nil, false
	}
	return &hrpcv1.RetryInfo{RetryAfter: busy.retryAfterSeconds()}, true
}

// HRPCDetails is what an hRPC error reply carries in its details field for
// err: a serialized hrpc.v1.RetryInfo for a Busy error (PROTOCOL.md §2),
// else nothing.
func HRPCDetails(err error) []byte {
	info, ok := RetryInfo(err)
	if !ok {
		return nil
	}
	b, _ := proto.Marshal(info)
	return b
}

// RetryAfterOf reads the retry hint a peer put in a Connect or gRPC error:
// hrpc.v1.RetryInfo or google.rpc.RetryInfo. ok is false when it sent none.
func RetryAfterOf(ce *connect.Error) (time.Duration, bool) {
	for _, d := range ce.Details() {
		switch v, err := d.Value(); info := v.(type) {
		case *hrpcv1.RetryInfo:
			if err == nil {
				return time.Duration(info.GetRetryAfter()) * time.Second, true
			}
		case *errdetails.RetryInfo:
			if err == nil && info.GetRetryDelay().IsValid() {
				return max(info.GetRetryDelay().AsDuration(), 0), true
			}
		}
	}
	return 0, false
}
