package httpserver_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/harmony-postbox/postbox/adapters/authtoken"
	"github.com/harmony-postbox/postbox/adapters/clock"
	"github.com/harmony-postbox/postbox/adapters/federation"
	"github.com/harmony-postbox/postbox/adapters/federation/federationtest"
	"github.com/harmony-postbox/postbox/adapters/httpserver"
	"github.com/harmony-postbox/postbox/adapters/netguard"
	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/adapters/peerkeys"
	"github.com/harmony-postbox/postbox/domain"
	authv1 "github.com/harmony-postbox/postbox/gen/protocol/auth/v1"
	"github.com/harmony-postbox/postbox/gen/protocol/auth/v1/authv1connect"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
	"github.com/harmony-postbox/postbox/gen/protocol/sync/v1/syncv1connect"
)

// testCA makes a CA and a certificate it signed for localhost and
// 127.0.0.1, written as PEM files; it returns the files and a pool that
// trusts the CA, as --peer-ca would.
func testCA(t *testing.T) (httpserver.TLSFiles, *x509.CertPool) {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "postbox test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(leafKey)
	files := httpserver.TLSFiles{CertFile: filepath.Join(dir, "cert.pem"), KeyFile: filepath.Join(dir, "key.pem")}
	os.WriteFile(files.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}), 0o600)
	os.WriteFile(files.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return files, pool
}

// listenTLS serves h over TLS on 127.0.0.1 and returns the server ID.
func listenTLS(t *testing.T, h *httpserver.FederationHandler, files httpserver.TLSFiles) domain.ServerID {
	t.Helper()
	srv, err := httpserver.Listen(context.Background(), "federation", "127.0.0.1:0", h, files, discardLogger)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return domain.MustParseServerID(srv.Addr().String())
}

// TestFederationOverTLS runs two servers on --tls-cert/--tls-key with a
// certificate from a private CA: the receiver fetches the sender's key over
// https, and the sender pushes over hRPC, Connect and gRPC, trusting the CA
// as --peer-ca makes it.
func TestFederationOverTLS(t *testing.T) {
	t.Parallel()
	files, pool := testCA(t)
	trusting := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}

	senderPub, senderKey, _ := ed25519.GenerateKey(rand.Reader)
	senderID := listenTLS(t, httpserver.NewFederationHandler(syncv1connect.UnimplementedPostboxServiceHandler{},
		federation.NewKeyService(senderPub), 1<<20, discardLogger), files)

	keysCfg := peerkeys.DefaultConfig()
	keysCfg.TLS = trusting
	// A loopback sender must be allow-listed to be fetched at all.
	keysCfg.Access, _ = domain.NewAccessList([]string{senderID.String()}, nil)
	resolver := peerkeys.New(keysCfg, clock.System{}, discardLogger, nil)
	postbox := federationtest.NewRecorder()
	identity := domain.NewIdentity(domain.MustParseServerID("127.0.0.1:1"), domain.DefaultAudienceGrace)
	verifier := domain.NewVerifier(domain.AuthPolicy{RequireExtension: true}, clock.System{}, resolver, identity)
	receiverPub, _, _ := ed25519.GenerateKey(rand.Reader)
	receiverID := listenTLS(t, httpserver.NewFederationHandler(federation.NewPostboxService(verifier, postbox),
		federation.NewKeyService(receiverPub), 1<<20, discardLogger), files)
	identity.Rename(receiverID, time.Now())

	event := &syncv1.Event{Kind: &syncv1.Event_UserAddedToGuild_{UserAddedToGuild: &syncv1.Event_UserAddedToGuild{UserId: 1, GuildId: 2}}}
	signer := authtoken.NewSigner(senderKey, clock.System{}, rand.Reader)
	// Likewise a loopback receiver, to be called at all.
	receiverAccess, _ := domain.NewAccessList([]string{receiverID.String()}, nil)
	guard := netguard.New(nil, receiverAccess)
	for i, protocol := range []peerclient.Protocol{peerclient.HRPC, peerclient.Connect, peerclient.GRPC} {
		client := peerclient.New(peerclient.Config{TLS: trusting, Guard: guard, Protocol: protocol}, signer, fixedSelf(senderID))
		if _, err := client.Push(t.Context(), receiverID, uint64(i), []*syncv1.Event{event}); err != nil {
			t.Fatalf("push over %s with TLS: %v", protocol, err)
		}
	}
	if got := len(postbox.Received()); got != 3 {
		t.Fatalf("the receiver holds %d pushes, want 3", got)
	}

	// Without the CA, the certificate is not trusted.
	untrusting := peerclient.New(peerclient.Config{TLS: &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: x509.NewCertPool()}, Guard: guard}, signer, fixedSelf(senderID))
	if _, err := untrusting.Push(t.Context(), receiverID, 9, []*syncv1.Event{event}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a push to an untrusted certificate: %v", err)
	}
}

type fixedSelf domain.ServerID

func (f fixedSelf) IDFor(domain.ServerID) domain.ServerID { return domain.ServerID(f) }

// TestKeyOverGRPCWeb calls AuthService.Key with a gRPC-Web client over
// HTTP/1.1, the fourth protocol the federation listener serves.
func TestKeyOverGRPCWeb(t *testing.T) {
	t.Parallel()
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	srv, err := httpserver.Listen(t.Context(), "federation", "127.0.0.1:0",
		httpserver.NewFederationHandler(syncv1connect.UnimplementedPostboxServiceHandler{}, federation.NewKeyService(pub), 1<<20, discardLogger),
		httpserver.TLSFiles{}, discardLogger)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	client := authv1connect.NewAuthServiceClient(http1Client(), "http://"+srv.Addr().String(), connect.WithGRPCWeb())
	res, err := client.Key(t.Context(), connect.NewRequest(&authv1.KeyRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if !ed25519.PublicKey(res.Msg.GetKey()).Equal(pub) {
		t.Fatalf("key %x, want %x", res.Msg.GetKey(), pub)
	}
}
