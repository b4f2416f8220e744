package hrpc

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/rpcerrors"
	hrpcv1 "github.com/harmony-postbox/postbox/gen/hrpc/v1"
	harmonytypesv1 "github.com/harmony-postbox/postbox/gen/protocol/harmonytypes/v1"
)

// DefaultMaxReplyBytes bounds a reply body unless the caller says otherwise.
const DefaultMaxReplyBytes = 4 << 20

// RemoteError is an error reply from an hRPC server.
type RemoteError struct {
	Procedure    string
	HTTPStatus   int
	Identifier   string
	HumanMessage string
	// RetryAfter is the wait a busy server asked for (RetryInfo in the
	// details of hrpc.resource-exhausted); HasRetryInfo says it sent one.
	RetryAfter   time.Duration
	HasRetryInfo bool
}

// Busy reports whether the server refused the call for now, as too busy
// (429; hrpc.resource-exhausted also answers 413 for a body over the size
// limit, which is no reason to wait), and how long it asked the caller to
// wait (0 when it did not say).
func (e *RemoteError) Busy() (time.Duration, bool) {
	if e.HTTPStatus != http.StatusTooManyRequests {
		return 0, false
	}
	return e.RetryAfter, true
}

// retryAfter reads hrpc.v1.RetryInfo from an error's details.
func retryAfter(details []byte) (time.Duration, bool) {
	if len(details) == 0 {
		return 0, false
	}
	var info hrpcv1.RetryInfo
	if proto.Unmarshal(details, &info) != nil {
		return 0, false
	}
	return time.Duration(info.GetRetryAfter()) * time.Second, true
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("%s: %d %s: %s", e.Procedure, e.HTTPStatus, e.Identifier, e.HumanMessage)
}

// Call makes a unary hRPC call to baseURL+procedure, decoding the reply into
// res. Content-Type is exactly `application/hrpc`, since the Rust server
// compares the whole header value. header adds request headers (such as
// Authorization); maxReply bounds the reply body (0: default).
func Call(ctx context.Context, client *http.Client, baseURL, procedure string, header http.Header, req, res proto.Message, maxReply int64) error {
	body, err := proto.Marshal(req)
	if err != nil {
		return fmt.Errorf("%s: encode request: %w", procedure, err)
	}
	httpReq, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(baseURL, "/")+procedure, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%s: %w", procedure, err)
	}
	for k, v := range header {
		httpReq.Header[k] = v
	}
	httpReq.Header.Set("Content-Type", ContentType)
	httpReq.Header.Set(VersionHeader, Version)
	resp, err := client.Do(httpReq)
	if err != nil {
		return fmt.Errorf("%s: %w", procedure, err)
	}
	defer resp.Body.Close()
	if maxReply <= 0 {
		maxReply = DefaultMaxReplyBytes
	}
	reply, err := io.ReadAll(io.LimitReader(resp.Body, maxReply+1))
	if err != nil {
		return fmt.Errorf("%s: read reply: %w", procedure, err)
	}
	if int64(len(reply)) > maxReply {
		return fmt.Errorf("%s: reply exceeds %d bytes", procedure, maxReply)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		remote := &RemoteError{Procedure: procedure, HTTPStatus: resp.StatusCode}
		var e harmonytypesv1.Error
		if IsContentType(resp.Header.Get("Content-Type")) && proto.Unmarshal(reply, &e) == nil {
			remote.Identifier, remote.HumanMessage = e.GetIdentifier(), e.GetHumanMessage()
			if remote.Identifier == rpcerrors.ResourceExhausted {
				remote.RetryAfter, remote.HasRetryInfo = retryAfter(e.GetMoreDetails())
			}
		} else {
			remote.HumanMessage = http.StatusText(resp.StatusCode)
		}
		return remote
	}
	if err := proto.Unmarshal(reply, res); err != nil {
		return fmt.Errorf("%s: decode reply: %w", procedure, err)
	}
	return nil
}
