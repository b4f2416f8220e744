package admin

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestGuardRefusesForeignHostsAndMissingTokens(t *testing.T) {
	t.Parallel()
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })
	cases := []struct {
		name, host, auth string
		token            Token
		want             int
		path             string // "": /metrics
	}{
		{"loopback address", "127.0.0.1:2290", "", "", http.StatusTeapot, ""},
		{"localhost", "localhost:2290", "", "", http.StatusTeapot, ""},
		{"IPv6 loopback", "[::1]:2290", "", "", http.StatusTeapot, ""},
		{"a rebound name", "attacker.example:2290", "", "", http.StatusForbidden, ""},
		{"a private address", "192.168.1.10:2290", "", "", http.StatusForbidden, ""},
		{"the right token", "127.0.0.1:2290", "Bearer s3cret", "s3cret", http.StatusTeapot, ""},
		{"no token", "127.0.0.1:2290", "", "s3cret", http.StatusUnauthorized, ""},
		{"a wrong token", "127.0.0.1:2290", "Bearer nope", "s3cret", http.StatusUnauthorized, ""},
		{"a token without Bearer", "127.0.0.1:2290", "s3cret", "s3cret", http.StatusUnauthorized, ""},
		{"a health check without the token", "127.0.0.1:2290", "", "s3cret", http.StatusTeapot, "/grpc.health.v1.Health/Check"},
		{"a health watch without the token", "127.0.0.1:2290", "", "s3cret", http.StatusTeapot, "/grpc.health.v1.Health/Watch"},
		{"a health check from a foreign host", "attacker.example:2290", "", "s3cret", http.StatusForbidden, "/grpc.health.v1.Health/Check"},
		{"the admin API without the token", "127.0.0.1:2290", "", "s3cret", http.StatusUnauthorized, "/postbox.admin.v1.AdminService/ListPeers"},
		{"a health look-alike without the token", "127.0.0.1:2290", "", "s3cret", http.StatusUnauthorized, "/grpc.health.v1.Health/Check/../../postbox.admin.v1.AdminService/ListPeers"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.path
			if path == "" {
				path = "/metrics"
			}
			req := httptest.NewRequest("GET", path, nil)
			req.Host = tc.host
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			rec := httptest.NewRecorder()
			Guard(ok, tc.token, nil).ServeHTTP(rec, req)
			if rec.Code != tc.want {
				t.Fatalf("status %d, want %d", rec.Code, tc.want)
			}
		})
	}
}
