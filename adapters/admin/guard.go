package admin

import (
	"crypto/subtle"
	"net"
	"net/http"
	"strings"

	"connectrpc.com/grpchealth"
)

// Token is the optional bearer token the admin listener requires.
type Token string

// Guard protects the admin listener. It refuses requests whose Host header
// is not a loopback name or address (a web page cannot use DNS rebinding to
// reach the API from a browser), unless allowedHosts names it, and, when a
// token is set, requests without `Authorization: Bearer <token>`, except
// gRPC health checks: probes (grpc_health_probe, Kubernetes' gRPC probe)
// cannot send a token, and SERVING or NOT_SERVING tells nobody anything
// secret. Prometheus can send one (its scrape config's `authorization`), so
// /metrics keeps the token. The live page's files hold no data and need no
// token; its feed takes the cookie the page bought with the token instead
// (LivePage).
func Guard(next http.Handler, token Token, allowedHosts []string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !hostAllowed(r.Host, allowedHosts) {
			http.Error(w, "admin API: Host header not allowed", http.StatusForbidden)
			return
		}
		if token != "" && !healthCheck(r.URL.Path) && !livePageFile(r) && !liveReader(r, token) {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
				w.Header().Set("WWW-Authenticate", "Bearer")
				http.Error(w, "admin API: missing or wrong bearer token", http.StatusUnauthorized)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// livePageFile reports whether r asks for one of the live page's files.
func livePageFile(r *http.Request) bool {
	rest, ok := strings.CutPrefix(r.URL.Path, LivePrefix)
	return ok && (r.Method == http.MethodGet || r.Method == http.MethodHead) &&
		r.URL.Path != LiveFeed && r.URL.Path != LiveSession && !strings.Contains(rest, "..")
}

// liveReader reports whether r reads the live page's feed (or asks if it
// may) with the cookie the token bought.
func liveReader(r *http.Request, token Token) bool {
	if r.Method != http.MethodGet || (r.URL.Path != LiveFeed && r.URL.Path != LiveSession) {
		return false
	}
	c, err := r.Cookie(liveCookie)
	return err == nil && subtle.ConstantTimeCompare([]byte(c.Value), []byte(liveCookieValue(token))) == 1
}

// healthCheck reports whether path is a method of grpc.health.v1.Health.
func healthCheck(path string) bool {
	return path == "/"+grpchealth.HealthV1ServiceName+"/Check" || path == "/"+grpchealth.HealthV1ServiceName+"/Watch"
}

func hostAllowed(hostport string, allowed []string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.ToLower(strings.Trim(host, "[]"))
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return true
	}
	for _, a := range allowed {
		if strings.EqualFold(a, host) || strings.EqualFold(a, hostport) {
			return true
		}
	}
	return false
}
