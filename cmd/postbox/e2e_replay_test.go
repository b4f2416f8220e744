package main

import (
	"crypto/rand"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/authtoken"
	"github.com/harmony-postbox/postbox/adapters/clock"
	"github.com/harmony-postbox/postbox/adapters/keyfile"
	"github.com/harmony-postbox/postbox/domain"
)

// TestTokenReplayAcrossARestart: a token B accepted just before a kill -9
// is refused by the restarted B, also within the same second (token times
// are whole seconds, so refusing tokens stamped before the start alone
// leaves that second open), while a fresh one is accepted at once.
func TestTokenReplayAcrossARestart(t *testing.T) {
	e2eSetup(t)
	a, b := newE2ENode(t, "A", ""), newE2ENode(t, "B", "")
	a.start()
	b.start()
	key, err := keyfile.Load(filepath.Join(a.dataDir, "key.ed25519"))
	if err != nil {
		t.Fatal(err)
	}
	signer := authtoken.NewSigner(key.PrivateKey, clock.System{}, rand.Reader)
	// Sign at the start of a second, so that B's restart most likely falls
	// within the token's second.
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second)))
	signed := time.Now()
	tok, err := signer.Extended(domain.MustParseServerID(a.id), domain.MustParseServerID(b.id), "")
	if err != nil {
		t.Fatal(err)
	}
	if code, body := b.rawPull(tok); code != http.StatusOK {
		t.Fatalf("the first Pull with the token: HTTP %d %s", code, body)
	}
	b.kill()
	b.start()
	sameSecond := time.Now().Truncate(time.Second).Equal(signed.Truncate(time.Second))
	code, body := b.rawPull(tok)
	if code != http.StatusBadRequest || !strings.Contains(body, "postbox.token-replayed") {
		t.Errorf("the token again after a restart (same second: %v): HTTP %d %s, want 400 postbox.token-replayed", sameSecond, code, body)
	}
	t.Logf("restarted within the token's second: %v", sameSecond)
	// A fresh token from the same peer is accepted, even in that second.
	fresh, err := signer.Extended(domain.MustParseServerID(a.id), domain.MustParseServerID(b.id), "")
	if err != nil {
		t.Fatal(err)
	}
	if code, body := b.rawPull(fresh); code != http.StatusOK {
		t.Errorf("a fresh token after the restart: HTTP %d %s", code, body)
	}
}

// rawPull posts an empty hRPC Pull to n with the Authorization header tok.
func (n *e2eNode) rawPull(tok string) (int, string) {
	n.t.Helper()
	req, err := http.NewRequestWithContext(n.t.Context(), http.MethodPost, "http://"+n.listen+e2ePullPath, nil)
	if err != nil {
		n.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/hrpc")
	req.Header.Set("Authorization", tok)
	res, err := n.http.Do(req)
	if err != nil {
		n.t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(body)
}
