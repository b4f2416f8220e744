package main

// The live page on the admin listener, against real servers: its data
// feed here in the main suite, and the page itself in headless Chromium
// where one is installed (.ci/run installs Debian's chromium when missing
// and sets POSTBOX_REQUIRE_CHROMIUM, so that CI never skips it).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/websocket"
	"google.golang.org/protobuf/encoding/protojson"

	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
)

// bearerTo adds the admin token to the test's own calls to one admin
// listener (never to a federation listener, which reads Authorization as
// a federation token).
type bearerTo struct {
	host, token string
	next        http.RoundTripper
}

func (b bearerTo) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Host == b.host {
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "Bearer "+b.token)
	}
	return b.next.RoundTrip(r)
}

// withAdminToken makes n's server want token on its admin listener.
func (n *opNode) withAdminToken(token string) {
	n.flags = append(n.flags, "--admin-token", token)
	n.http.Transport = bearerTo{host: n.admin, token: token, next: http.DefaultTransport}
}

// liveCookie buys the live page's cookie with the admin token, as the
// page does.
func liveCookie(t *testing.T, admin, token string) *http.Cookie {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), "POST", "http://"+admin+"/live/session", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	for _, c := range res.Cookies() {
		if c.Name == "postbox_live" {
			return c
		}
	}
	t.Fatalf("POST /live/session: %d, no cookie", res.StatusCode)
	return nil
}

// TestLivePageFeedFollowsDelivery: the feed of a server with an admin
// token, read with the cookie the token buys, shows a peer's row, and the
// same stream shows it change after a send.
func TestLivePageFeedFollowsDelivery(t *testing.T) {
	opSetup(t)
	a, b := newOpNode(t, "A"), newOpNode(t, "B")
	a.withAdminToken("s3cret")
	a.start()
	b.start()
	a.send(b.id, 1, 0)
	a.waitPeer(b.id, "1 delivered", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetDelivered() == 1 })

	if res, err := http.Get("http://" + a.admin + "/live/feed"); err != nil || res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("the feed without the token or its cookie: %v, %v; want 401", res, err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+a.admin+"/live/feed", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.AddCookie(liveCookie(t, a.admin, "s3cret"))
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("the feed with the cookie: %d", res.StatusCode)
	}
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(nil, 1<<20)
	// next reads snapshots until B's row satisfies cond.
	next := func(what string, cond func(*adminv1.Peer) bool) {
		t.Helper()
		var last string
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var m adminv1.ListPeersResponse
			if err := protojson.Unmarshal([]byte(data), &m); err != nil {
				t.Fatalf("feed data %q: %v", data, err)
			}
			for _, p := range m.GetPeers() {
				if p.GetServerId() == b.id && cond(p) {
					return
				}
			}
			last = data
		}
		t.Fatalf("the feed ended (%v) before %s; last snapshot %s", sc.Err(), what, last)
	}
	next("B's row, one delivered", func(p *adminv1.Peer) bool { return p.GetDelivered() == 1 && p.GetHead() == 1 })
	a.send(b.id, 2, 1)
	next("B's row, two delivered", func(p *adminv1.Peer) bool { return p.GetDelivered() == 2 && p.GetHead() == 2 })
}

// chromiumBinary finds Debian's chromium, or skips (fails when CI says it
// must be there).
func chromiumBinary(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("POSTBOX_REQUIRE_CHROMIUM") != "" {
		t.Fatal("POSTBOX_REQUIRE_CHROMIUM is set and no chromium is installed")
	}
	t.Skip("no chromium here (.ci/run installs it)")
	return ""
}

// cdp is a Chrome DevTools Protocol session with one page.
type cdp struct {
	t    *testing.T
	conn *websocket.Conn
	id   int
}

// startChromium runs headless Chromium, on its own profile, and connects
// to its first page.
func startChromium(t *testing.T) *cdp {
	t.Helper()
	bin := chromiumBinary(t)
	// Not t.TempDir: Chromium's helper processes may still write to the
	// profile for a moment after the browser is gone, which would fail the
	// test's own cleanup. Removed here, after the whole process group is.
	profile, err := os.MkdirTemp("", "postbox-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for range 50 {
			if os.RemoveAll(profile) == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("left Chromium's profile %s behind", profile)
	})
	cmd := exec.Command(bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
		"--user-data-dir="+profile, "--remote-debugging-port=0", "--remote-allow-origins=http://127.0.0.1",
		"--window-size=1280,720", "--no-first-run", "about:blank")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its helpers go with it
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	})
	// "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
	listening := regexp.MustCompile(`DevTools listening on ws://([^/\s]+)/`)
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		var log bytes.Buffer
		for sc.Scan() {
			if m := listening.FindStringSubmatch(sc.Text()); m != nil {
				found <- m[1]
			}
			log.WriteString(sc.Text() + "\n")
		}
		close(found)
	}()
	var addr string
	select {
	case a, ok := <-found:
		if !ok {
			t.Fatal("chromium exited without a DevTools address")
		}
		addr = a
	case <-time.After(30 * time.Second):
		t.Fatal("chromium did not start its DevTools listener in 30 s")
	}
	res, err := http.Get("http://" + addr + "/json/list")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var targets []struct{ Type, WebSocketDebuggerURL string }
	if err := json.NewDecoder(res.Body).Decode(&targets); err != nil {
		t.Fatal(err)
	}
	for _, target := range targets {
		if target.Type == "page" {
			conn, err := websocket.Dial(target.WebSocketDebuggerURL, "", "http://127.0.0.1")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { conn.Close() })
			return &cdp{t: t, conn: conn}
		}
	}
	t.Fatalf("chromium has no page: %+v", targets)
	return nil
}

// call sends a command and returns its result, skipping events.
func (c *cdp) call(method string, params any) json.RawMessage {
	c.t.Helper()
	c.id++
	if err := c.conn.SetDeadline(time.Now().Add(20 * time.Second)); err != nil {
		c.t.Fatal(err)
	}
	if err := websocket.JSON.Send(c.conn, map[string]any{"id": c.id, "method": method, "params": params}); err != nil {
		c.t.Fatalf("%s: %v", method, err)
	}
	for {
		var msg struct {
			ID     int
			Result json.RawMessage
			Error  *struct{ Message string }
		}
		if err := websocket.JSON.Receive(c.conn, &msg); err != nil {
			c.t.Fatalf("%s: %v", method, err)
		}
		if msg.ID != c.id {
			continue
		}
		if msg.Error != nil {
			c.t.Fatalf("%s: %s", method, msg.Error.Message)
		}
		return msg.Result
	}
}

// eval evaluates a JavaScript expression in the page and returns its value
// as JSON.
func (c *cdp) eval(expr string) string {
	c.t.Helper()
	var r struct {
		Result struct{ Value json.RawMessage }
	}
	if err := json.Unmarshal(c.call("Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}), &r); err != nil {
		c.t.Fatal(err)
	}
	return string(r.Result.Value)
}

// TestLivePageInChromium: the page, opened in a browser with the admin
// token in its fragment, shows B's row from the feed, and the row changes
// after a send without a reload. POSTBOX_LIVE_SCREENSHOT=FILE saves a
// screenshot (the README's).
func TestLivePageInChromium(t *testing.T) {
	opSetup(t)
	c := startChromium(t)
	a, b := newOpNode(t, "A", opQuickQueue...), newOpNode(t, "B")
	a.withAdminToken("s3cret")
	a.start()
	b.start()
	for i := range uint64(3) {
		a.send(b.id, i, i)
	}
	a.waitPeer(b.id, "3 delivered", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetDelivered() == 3 })
	b.send(a.id, 100, 0)

	c.call("Page.enable", map[string]any{})
	c.call("Page.navigate", map[string]any{"url": "http://" + a.admin + "/live/#token=" + url.QueryEscape("s3cret")})
	cellOf := func(class string) string {
		return c.eval(fmt.Sprintf(`(() => { const td = document.querySelector('tr[data-server-id=%q] td.%s'); return td ? td.textContent : null })()`, b.id, class))
	}
	waitCell := func(class, want, what string) {
		t.Helper()
		opWait(t, 20*time.Second, what, func() (bool, string) {
			got := cellOf(class)
			return got == want, "cell " + class + " is " + got
		})
	}
	waitCell("delivered", `"3"`, "B's row on the page, 3 delivered")
	if got := c.eval(`document.getElementById("status").className`); !strings.Contains(got, "live") {
		t.Errorf("the page's status is %s, want live", got)
	}
	if got := c.eval(`location.hash`); got != `""` {
		t.Errorf("the token stayed in the address: %s", got)
	}
	a.send(b.id, 3, 3)
	waitCell("delivered", `"4"`, "B's row after a send, 4 delivered, without a reload")
	waitCell("head", `"4"`, "B's head after a send")

	if path := os.Getenv("POSTBOX_LIVE_SCREENSHOT"); path != "" {
		// A few seconds of traffic for the chart, then B goes down with
		// events pending.
		seq := uint64(4)
		for i := range 40 {
			for range i%7 + 1 {
				a.send(b.id, 10+seq, seq)
				seq++
			}
			time.Sleep(250 * time.Millisecond)
		}
		b.stop()
		for range 3 {
			a.send(b.id, 10+seq, seq)
			seq++
		}
		a.waitPeer(b.id, "queue mode", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetMode() == adminv1.Mode_MODE_QUEUE })
		time.Sleep(3 * time.Second)
		var shot struct{ Data string }
		if err := json.Unmarshal(c.call("Page.captureScreenshot", map[string]any{"format": "png"}), &shot); err != nil {
			t.Fatal(err)
		}
		png, err := base64.StdEncoding.DecodeString(shot.Data)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Clean(path), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
