package main

// The operator's command line against a real admin listener in process:
// what a mistake prints, where help goes, what each --json line is.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"connectrpc.com/grpchealth"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/harmony-postbox/postbox/adapters/admin"
	"github.com/harmony-postbox/postbox/adapters/clock"
	"github.com/harmony-postbox/postbox/adapters/httpserver"
	"github.com/harmony-postbox/postbox/adapters/metrics"
	"github.com/harmony-postbox/postbox/domain"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
	"github.com/harmony-postbox/postbox/projections"
)

type cliSender struct{ sent int }

func (s *cliSender) Send(context.Context, domain.ServerID, *syncv1.Event) (uint64, error) {
	s.sent++
	return uint64(s.sent - 1), nil
}

func (s *cliSender) SendKeyed(ctx context.Context, to domain.ServerID, event *syncv1.Event, _ string) (uint64, error) {
	return s.Send(ctx, to, event)
}

func (s *cliSender) SendBatch(ctx context.Context, sends []domain.BatchSend[*syncv1.Event]) []domain.SendOutcome {
	out := make([]domain.SendOutcome, len(sends))
	for i, send := range sends {
		out[i].Seq, out[i].Err = s.Send(ctx, send.To, send.Event)
	}
	return out
}

type noPeers struct{}

func (noPeers) Cursors() []domain.PeerCursor { return nil }

func (noPeers) PeerIDOf(domain.ServerID) (string, bool) { return "", false }

// startAdminAPI serves the admin handler of a server named self.example.
func startAdminAPI(t *testing.T, token admin.Token) (addr string, sender *cliSender) {
	t.Helper()
	sender = &cliSender{}
	self := domain.MustParseServerID("self.example:2289")
	svc := admin.NewService(domain.NewIdentity(self, domain.DefaultAudienceGrace), nil, "test", sender, nil, nil, nil, nil, nil)
	health := grpchealth.NewStaticChecker()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	h := httpserver.NewAdminHandler(t.Context(), svc, health, metrics.New(metrics.NewCounters(noPeers{}), noPeers{}), token, clock.System{}, logger)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), sender
}

// cli runs one command in process.
func cli(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	err = run(t.Context(), args, &out, &errb, envOf(nil))
	return out.String(), errb.String(), err
}

func TestSendErrorsSayWhatToFix(t *testing.T) {
	t.Parallel()
	addr, sender := startAdminAPI(t, "")
	event := `{"userAddedToGuild":{"userId":"42","guildId":"7"}}`
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"a server ID without a port", []string{"--to", "peer.example", "--event", event}, []string{`"peer.example"`, "missing :port", "host:port"}},
		{"an event of no kind", []string{"--to", "peer.example:2289", "--event", `{}`}, []string{"no kind", "userAddedToGuild"}},
		{"this server's own ID", []string{"--to", "self.example:2289", "--event", event}, []string{"self.example:2289", "own ID"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, stderr, err := cli(t, append([]string{"send", "--admin", addr}, tc.args...)...)
			if exitCode(err) != 1 {
				t.Errorf("exit status %d, want 1 (refused by the server)", exitCode(err))
			}
			for _, w := range tc.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("error %v does not say %q", err, w)
				}
			}
			if stderr != "" {
				t.Errorf("stderr %q: the error is printed once, by main", stderr)
			}
		})
	}
	if sender.sent != 0 {
		t.Errorf("%d refused sends reached the engine", sender.sent)
	}
	if out, _, err := cli(t, "send", "--admin", addr, "--to", "peer.example:2289", "--event", event); err != nil || strings.TrimSpace(out) != "0" {
		t.Errorf("a good send: %q, %v", out, err)
	}
}

func TestAdminTokenErrorsNameTheFlag(t *testing.T) {
	t.Parallel()
	addr, _ := startAdminAPI(t, "s3cret")
	if _, _, err := cli(t, "send", "--admin", addr, "--to", "peer.example:2289", "--event", "{}"); exitCode(err) != 1 || !strings.Contains(err.Error(), "--admin-token") {
		t.Errorf("no token: %v (exit %d)", err, exitCode(err))
	}
	if _, _, err := cli(t, "send", "--admin", addr, "--admin-token", "wrong", "--to", "peer.example:2289", "--event", "{}"); exitCode(err) != 1 || !strings.Contains(err.Error(), "refused --admin-token") {
		t.Errorf("wrong token: %v", err)
	}
	event := `{"userAddedToGuild":{"userId":"42","guildId":"7"}}`
	if _, _, err := cli(t, "send", "--admin", addr, "--admin-token", "s3cret", "--to", "peer.example:2289", "--event", event); err != nil {
		t.Errorf("the right token: %v", err)
	}
}

func TestFlagMistakesNameTheFlagTheValueAndAnExample(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want []string
	}{
		{[]string{"serve", "--push-retries", "many"}, nil, []string{"--push-retries", `"many"`, "not a whole number", "e.g. --push-retries 5"}},
		{[]string{"serve", "--resume-probe=maybe"}, nil, []string{"--resume-probe", `"maybe"`, "want true or false", "e.g. --resume-probe true"}},
		{[]string{"serve", "--push-retries", "-2"}, nil, []string{"--push-retries -2", "at least 0", "e.g. --push-retries 5"}},
		{[]string{"serve", "--server-id", "example.org"}, nil, []string{"--server-id example.org", "missing :port", "e.g. --server-id chat.example.com:2289"}},
		{[]string{"serve", "--auth-window"}, nil, []string{"--auth-window needs a value", "e.g. --auth-window"}},
		{[]string{"serve", "--no-such-flag"}, nil, []string{"unknown flag --no-such-flag", "postbox serve -h"}},
		{[]string{"serve"}, map[string]string{"POSTBOX_AUTH_WINDOW": "soon"}, []string{"POSTBOX_AUTH_WINDOW", `"soon"`, "--auth-window", "e.g. POSTBOX_AUTH_WINDOW="}},
		{[]string{"skip", "a.example:1", "--through", "x", "--reason", "r"}, nil, []string{"--through", `"x"`, "e.g. --through"}},
		{[]string{"send", "--event", "{}"}, nil, []string{"--to", "e.g. --to chat.example.com:2289"}},
		{[]string{"send", "--to", "a.example:1", "--event", "not json"}, nil, []string{"--event", "e.g. --event"}},
		{[]string{"pull"}, nil, []string{"want 1 argument", "postbox pull -h"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			var out, errb bytes.Buffer
			err := run(t.Context(), tc.args, &out, &errb, envOf(tc.env))
			if exitCode(err) != 2 {
				t.Errorf("exit status %d, want 2 (usage)", exitCode(err))
			}
			for _, w := range tc.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("error %v does not say %q", err, w)
				}
			}
			if out.Len() != 0 || errb.Len() != 0 {
				t.Errorf("printed %q and %q besides the one error", out.String(), errb.String())
			}
		})
	}
}

func TestHelpGoesToStdoutAndNamesTheArguments(t *testing.T) {
	t.Parallel()
	for cmd, arg := range map[string]string{"pull": "ID", "resume": "ID", "skip": "ID", "rename": "NEW_ID", "serve": "", "peers": ""} {
		t.Run(cmd, func(t *testing.T) {
			t.Parallel()
			stdout, stderr, err := cli(t, cmd, "--help")
			if exitCode(err) != 0 {
				t.Fatalf("%s --help: %v", cmd, err)
			}
			if stderr != "" {
				t.Errorf("help on stderr: %q", stderr)
			}
			if !strings.HasPrefix(stdout, "Usage: postbox "+cmd+" [flags]") || !strings.Contains(stdout, "-admin") && cmd != "serve" {
				t.Errorf("%s --help printed %q", cmd, stdout)
			}
			if arg != "" && (!strings.Contains(stdout, "[flags] "+arg+"\n") || !strings.Contains(stdout, "\n  "+arg+" ")) {
				t.Errorf("%s --help does not name and explain %s:\n%s", cmd, arg, stdout)
			}
		})
	}
	var errb bytes.Buffer
	if err := run(t.Context(), []string{"pull", "--help"}, io.Discard, &errb, envOf(nil)); exitCode(err) != 0 || errb.Len() != 0 {
		t.Errorf("pull --help: %v, stderr %q", err, errb.String())
	}
}

// decodeAudit reads `postbox audit --json`: one line, protojson of
// postbox.admin.v1.AuditReport, read back into the report it came from.
func decodeAudit(out string) (projections.Report, error) {
	var rep projections.Report
	if strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") {
		return rep, fmt.Errorf("audit --json printed %d lines, want one", strings.Count(out, "\n"))
	}
	var m adminv1.AuditReport
	if err := protojson.Unmarshal([]byte(out), &m); err != nil {
		return rep, err
	}
	rep.Records, rep.UnknownRecords, rep.CheckpointChecked = m.GetRecords(), m.GetUnknownRecords(), m.GetCheckpointChecked()
	rep.SnapshotsChecked, rep.SnapshotsUnchecked = m.GetSnapshotsChecked(), m.GetSnapshotsUnchecked()
	for _, r := range m.GetRetained() {
		rep.Retained = append(rep.Retained, projections.Retained{Stream: r.GetStream(), From: r.GetFrom(), FromSnapshot: r.GetFromSnapshot()})
	}
	if m.GetFullHistory() != (len(rep.Retained) == 0) {
		return rep, fmt.Errorf("fullHistory %v with %d truncated streams", m.GetFullHistory(), len(rep.Retained))
	}
	for _, p := range m.GetPeers() {
		mode := domain.ModePush
		if p.GetMode() == adminv1.Mode_MODE_QUEUE {
			mode = domain.ModeQueue
		}
		rep.Peers = append(rep.Peers, projections.PeerSummary{ServerID: p.GetServerId(), PeerID: p.GetPeerId(), Head: p.GetHead(),
			Delivered: p.GetDelivered(), Skipped: p.GetSkipped(), Pending: p.GetPending(), Mode: mode.String(), Received: p.GetReceived()})
	}
	for _, v := range m.GetViolations() {
		rep.Violations = append(rep.Violations, projections.Violation{Stream: v.GetStream(), Revision: v.GetRevision(), Rule: v.GetRule(), Detail: v.GetDetail()})
	}
	for _, s := range m.GetSkips() {
		rep.Skips = append(rep.Skips, projections.Skip{Stream: s.GetStream(), Revision: s.GetRevision(), ServerID: s.GetServerId(),
			FromSeq: s.GetFromSeq(), ThroughSeq: s.GetThroughSeq(), Reason: s.GetReason()})
	}
	if m.GetClean() != rep.Clean() {
		return rep, fmt.Errorf("clean is %v with %d violation(s)", m.GetClean(), len(rep.Violations))
	}
	return rep, nil
}

// A probe reaches gRPC health without the admin token; the rest of the
// admin listener still wants it.
func TestHealthAnswersProbesWithoutTheAdminToken(t *testing.T) {
	t.Parallel()
	addr, _ := startAdminAPI(t, "s3cret")
	post := func(path string) int {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), "POST", "http://"+addr+path, strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	if got := post("/grpc.health.v1.Health/Check"); got != http.StatusOK {
		t.Errorf("health check without the token: %d, want 200", got)
	}
	if got := post("/postbox.admin.v1.AdminService/GetServerInfo"); got != http.StatusUnauthorized {
		t.Errorf("admin API without the token: %d, want 401", got)
	}
}

func TestLogFormatAndLevel(t *testing.T) {
	t.Parallel()
	cfg, err := parseServeConfig([]string{"--log-format", "json", "--log-level", "warn"}, io.Discard, envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	logger := newLogger(cfg, &out)
	logger.Info("quiet")
	logger.Warn("loud", "peer", "b.example:2289")
	var line map[string]any
	if err := json.Unmarshal(out.Bytes(), &line); err != nil || line["msg"] != "loud" || line["peer"] != "b.example:2289" || strings.Contains(out.String(), "quiet") {
		t.Errorf("--log-format json --log-level warn wrote %q (%v)", out.String(), err)
	}
	if cfg, err = parseServeConfig(nil, io.Discard, envOf(map[string]string{"POSTBOX_LOG_LEVEL": "debug"})); err != nil || cfg.LogJSON || cfg.LogLevel != slog.LevelDebug {
		t.Errorf("POSTBOX_LOG_LEVEL=debug: %+v, %v", cfg, err)
	}
	for _, args := range [][]string{{"--log-format", "xml"}, {"--log-level", "loud"}} {
		if _, err := parseServeConfig(args, io.Discard, envOf(nil)); exitCode(err) != 2 || !strings.Contains(err.Error(), args[0]+" "+args[1]) {
			t.Errorf("%v: %v", args, err)
		}
	}
}

// A wrong TLS file is a configuration mistake: exit 2, naming both flags.
func TestServeWithAMissingTLSFileIsAUsageError(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var out, errb bytes.Buffer
	err := run(t.Context(), []string{"serve", "--data-dir", dir, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--tls-cert", dir + "/nope.pem", "--tls-key", dir + "/nope.key"}, &out, &errb, envOf(nil))
	if exitCode(err) != 2 || !strings.Contains(err.Error(), "--tls-cert "+dir+"/nope.pem --tls-key") {
		t.Errorf("serve with a missing certificate: %v (exit %d), want exit 2 naming the flags", err, exitCode(err))
	}
}
