package peerclient

import (
	"errors"
	"testing"
	"time"

	"connectrpc.com/connect"

	hrpcv1 "github.com/harmony-postbox/postbox/gen/hrpc/v1"
)

// Connect has one code for "busy" and "too large": only a refusal with
// RetryInfo is a request to wait.
func TestAConnectRefusalIsBusyOnlyWithRetryInfo(t *testing.T) {
	t.Parallel()
	busy := connect.NewWireError(connect.CodeResourceExhausted, errors.New("server busy"))
	d, err := connect.NewErrorDetail(&hrpcv1.RetryInfo{RetryAfter: 2})
	if err != nil {
		t.Fatal(err)
	}
	busy.AddDetail(d)
	if after, ok := Busy(fromConnect("/p", busy)); !ok || after != 2*time.Second {
		t.Errorf("busy refusal: Busy() = %s, %v; want 2s, true", after, ok)
	}
	tooLarge := connect.NewWireError(connect.CodeResourceExhausted, errors.New("message too large"))
	if _, ok := Busy(fromConnect("/p", tooLarge)); ok {
		t.Error("ResourceExhausted without RetryInfo counted as busy")
	}
	if _, ok := Busy(errors.New("connection refused")); ok {
		t.Error("a local error counted as busy")
	}
}
