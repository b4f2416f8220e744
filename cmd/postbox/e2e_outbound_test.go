package main

// End-to-end tests of outbound calls: the address guard, TLS federation with
// a private CA, and how fast a silent peer reaches queue mode.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
)

// e2eCA is a test certificate authority whose certificate is in a PEM file.
type e2eCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	pemPath string
	pool    *x509.CertPool
}

func newE2ECA(t *testing.T) *e2eCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "postbox test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &e2eCA{cert: cert, key: key, pemPath: filepath.Join(t.TempDir(), "ca.pem"), pool: x509.NewCertPool()}
	ca.pool.AddCert(cert)
	writePEM(t, ca.pemPath, "CERTIFICATE", der)
	return ca
}

// issue writes a server certificate for 127.0.0.1 and localhost and its key
// into dir, returning their paths.
func (ca *e2eCA) issue(t *testing.T, dir string, serial int64) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writePEM(t, certPath, "CERTIFICATE", der)
	writePEM(t, keyPath, "PRIVATE KEY", keyDER)
	return certPath, keyPath
}

func writePEM(t *testing.T, path, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// newE2ETLSNode prepares a server whose federation listener serves TLS with
// a certificate from ca, which calls peers over https:// trusting ca, and
// which may call peers on loopback only because 127.0.0.0/8 is allowed
// explicitly (no --insecure-peers).
func newE2ETLSNode(t *testing.T, name string, ca *e2eCA, serial int64, flags ...string) *e2eNode {
	t.Helper()
	dir := t.TempDir()
	certPath, keyPath := ca.issue(t, dir, serial)
	n := newE2ENode(t, name, "", append([]string{"--tls-cert", certPath, "--tls-key", keyPath, "--peer-ca", ca.pemPath}, flags...)...)
	n.peerFlags = []string{"--allow-peer-networks", "127.0.0.0/8"}
	n.fedURL = "https://" + n.listen
	n.fed = &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.pool, MinVersion: tls.VersionTLS12}}}
	return n
}

// Two servers on loopback federate over TLS with a private CA once loopback
// is allowed explicitly: an event sent from A arrives at B by push, and one
// from B at A.
func TestTLSFederationWithATestCA(t *testing.T) {
	t.Parallel()
	ca := newE2ECA(t)
	a := newE2ETLSNode(t, "a", ca, 2)
	b := newE2ETLSNode(t, "b", ca, 3)
	a.start()
	b.start()
	a.waitServing(20 * time.Second)
	b.waitServing(20 * time.Second)

	toB, toA := newE2ELedger(), newE2ELedger()
	a.send(b, toB, 1)
	a.send(b, toB, 2)
	b.send(a, toA, 3)
	b.waitInboxLen(a, 2, 20*time.Second)
	a.waitInboxLen(b, 1, 20*time.Second)
	if push, pull := e2eVias(b.checkInbox(a, toB)); push != 2 || pull != 0 {
		t.Errorf("B received %d by push and %d by pull, want both by push", push, pull)
	}
	a.checkInbox(b, toA)
	if log := a.lastRunLog() + b.lastRunLog(); strings.Contains(log, "key-unavailable") || strings.Contains(log, "refusing to connect") {
		t.Errorf("a server logged a refused key fetch or connection:\n%s", log)
	}
}

// e2eCountingListener accepts connections on loopback, reads what they
// send and never answers; it counts them.
func e2eCountingListener(t *testing.T) (net.Listener, *atomic.Int64) {
	t.Helper()
	ln := e2eListen(t)
	var accepted atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() { _, _ = io.Copy(io.Discard, c) }()
			t.Cleanup(func() { c.Close() })
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return ln, &accepted
}

// A server not allowed the loopback network refuses a send to a loopback
// address at once, naming the flag, and never connects there.
func TestSendToLoopbackIsRefusedWithoutTheNetworkAllowed(t *testing.T) {
	t.Parallel()
	ln, accepted := e2eCountingListener(t)
	a := newE2ENode(t, "a", "")
	a.peerFlags = []string{"--plaintext-peers"}
	a.start()
	target := &e2eNode{id: ln.Addr().String()}
	port := ln.Addr().(*net.TCPAddr).Port
	for _, to := range []string{target.id, "localhost:" + strconv.Itoa(port), "[::1]:" + strconv.Itoa(port)} {
		start := time.Now()
		_, err := a.admins.Send(t.Context(), connect.NewRequest(&adminv1.SendRequest{To: to, Event: e2eEvent(1)}))
		if connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), "--allow-peer-networks") {
			t.Errorf("send to %s: %v, want a failed precondition naming --allow-peer-networks", to, err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("send to %s took %s to be refused, want at once", to, took)
		}
	}
	// The CLI says the same.
	_, errOut, code := runCLI(t, "send", "--admin", a.admin, "--to", target.id, "--event", `{"userAddedToGuild":{"userId":"1","guildId":"7"}}`)
	if code == 0 || !strings.Contains(errOut, "--allow-peer-networks") {
		t.Errorf("postbox send to %s: exit %d, %q; want a failure naming --allow-peer-networks", target.id, code, errOut)
	}
	time.Sleep(500 * time.Millisecond)
	if n := accepted.Load(); n != 0 {
		t.Fatalf("the loopback listener saw %d connections from a server not allowed to reach it", n)
	}
	if out, err := a.outboxLen(target); err != nil || out != 0 {
		t.Fatalf("an outbox for the refused peer holds %d events (%v), want none", out, err)
	}
}

// A peer that accepts connections and never answers costs about 2 s per
// attempt: with one retry, queue mode comes after about 4 s (it took 20 s
// with 10 s per attempt).
func TestSilentPeerReachesQueueModeQuickly(t *testing.T) {
	t.Parallel()
	ln, accepted := e2eCountingListener(t)
	a := newE2ENode(t, "a", "", "--push-retries", "1")
	a.peerFlags = []string{"--plaintext-peers", "--allow-peer-networks", "127.0.0.0/8"}
	a.start()
	silent := &e2eNode{t: t, name: "silent", id: ln.Addr().String()}
	start := time.Now()
	if _, err := a.trySend(t.Context(), silent, 1); err != nil {
		t.Fatal(err)
	}
	a.waitDelivery(silent, "queue mode", 15*time.Second, func(d []domain.DeliveryEvent) bool {
		return len(e2eOfType[domain.QueueModeEntered](d)) > 0
	})
	took := time.Since(start)
	t.Logf("queue mode %s after the send", took)
	if took > 8*time.Second || took < 3*time.Second {
		t.Errorf("queue mode after %s, want about 4 s (two attempts of 2 s)", took)
	}
	if accepted.Load() == 0 {
		t.Error("the silent peer saw no connection")
	}
}

// outboxLen is how many events n's outbox for peer holds.
func (n *e2eNode) outboxLen(peer *e2eNode) (int, error) {
	return n.streamLen(streams.Outbox, peer)
}
