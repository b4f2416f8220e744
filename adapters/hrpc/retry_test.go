package hrpc_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/harmony-postbox/postbox/adapters/hrpc"
	"github.com/harmony-postbox/postbox/adapters/rpcerrors"
	hrpcv1 "github.com/harmony-postbox/postbox/gen/hrpc/v1"
	authv1 "github.com/harmony-postbox/postbox/gen/protocol/auth/v1"
	harmonytypesv1 "github.com/harmony-postbox/postbox/gen/protocol/harmonytypes/v1"
)

type (
	errorBody = harmonytypesv1.Error
	retryInfo = hrpcv1.RetryInfo
)

// busyServer answers every call with err, as an hRPC server does.
func busyServer(t *testing.T, err error) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { hrpc.WriteError(w, err) }))
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestABusyReplyCarriesItsRetryInfoToTheCaller(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		err    error
		status int
		busy   bool
		after  time.Duration
	}{
		{"busy", &rpcerrors.Busy{Budget: "test", RetryAfter: 3 * time.Second}, http.StatusTooManyRequests, true, 3 * time.Second},
		{"busy below a second", &rpcerrors.Busy{Budget: "test", RetryAfter: time.Millisecond}, http.StatusTooManyRequests, true, time.Second},
		{"too large", rpcerrors.ErrRequestTooLarge, http.StatusRequestEntityTooLarge, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := hrpc.Call(context.Background(), http.DefaultClient, busyServer(t, tc.err), "/p", nil, &authv1.KeyRequest{}, &authv1.KeyResponse{}, 0)
			var remote *hrpc.RemoteError
			if !errors.As(err, &remote) {
				t.Fatalf("Call: %v, want a RemoteError", err)
			}
			if remote.HTTPStatus != tc.status || remote.Identifier != rpcerrors.ResourceExhausted {
				t.Errorf("reply %d %s, want %d %s", remote.HTTPStatus, remote.Identifier, tc.status, rpcerrors.ResourceExhausted)
			}
			after, busy := remote.Busy()
			if busy != tc.busy || after != tc.after {
				t.Errorf("Busy() = %s, %v; want %s, %v", after, busy, tc.after, tc.busy)
			}
		})
	}
}

// FuzzRetryInfoDetails feeds arbitrary details to the client's reading of
// a resource-exhausted reply: it never fails on them, and reads a RetryInfo
// exactly when the bytes are one.
func FuzzRetryInfoDetails(f *testing.F) {
	f.Add([]byte{0x08, 0x01})
	f.Add([]byte{0x08, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{0xff})
	f.Fuzz(func(t *testing.T, details []byte) {
		body, _ := proto.Marshal(&errorBody{Identifier: rpcerrors.ResourceExhausted, MoreDetails: details})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", hrpc.ContentType)
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = w.Write(body)
		}))
		defer srv.Close()
		err := hrpc.Call(context.Background(), srv.Client(), srv.URL, "/p", nil, &authv1.KeyRequest{}, &authv1.KeyResponse{}, 0)
		var remote *hrpc.RemoteError
		if !errors.As(err, &remote) {
			t.Fatalf("Call: %v", err)
		}
		if _, busy := remote.Busy(); !busy {
			t.Fatal("a 429 is not busy")
		}
		var info retryInfo
		valid := len(details) > 0 && proto.Unmarshal(details, &info) == nil
		if remote.HasRetryInfo != valid {
			t.Fatalf("HasRetryInfo = %v for %x", remote.HasRetryInfo, details)
		}
		if valid && remote.RetryAfter != time.Duration(info.GetRetryAfter())*time.Second {
			t.Fatalf("RetryAfter = %s for %x", remote.RetryAfter, details)
		}
	})
}
