package esdb

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
)

func TestParseConflict(t *testing.T) {
	deleteConflict := func(actual string) error {
		st := status.New(codes.FailedPrecondition, "Delete failed due to WrongExpectedVersion. Stream: s, Expected version: 3, Actual version: "+actual)
		return fmt.Errorf("failed to perform delete, details: %w", st.Err())
	}
	for _, tc := range []struct {
		name            string
		err             error
		actual          int64
		known, conflict bool
	}{
		{"delete, stream at 2", deleteConflict("2"), 2, true, true},
		{"delete, no stream", deleteConflict("-1"), -1, true, true},
		{"delete, actual left out", deleteConflict(""), 0, false, true},
		{"stream deleted", status.Error(codes.FailedPrecondition, "Event stream 's' is deleted."), 0, false, false},
		{"other", errors.New("boom"), 0, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			actual, known, conflict := parseConflict(tc.err)
			if actual != tc.actual || known != tc.known || conflict != tc.conflict {
				t.Fatalf("parseConflict(%v) = %d, %v, %v; want %d, %v, %v", tc.err, actual, known, conflict, tc.actual, tc.known, tc.conflict)
			}
		})
	}
}

// TestParseAppendConflictMessage covers the message the client makes of an
// append conflict (its error type cannot be built outside the client; the
// adapter tests cover it end to end).
func TestParseAppendConflictMessage(t *testing.T) {
	const prefix = "[ErrorCodeWrongExpectedVersion] an append request failed the optimistic concurrency on the server: wrong expected version: expecting '3' but got '"
	for got, want := range map[string]int64{"7": 7, "no_stream": -1, "0": 0} {
		actual, known := parseActual(prefix+got+"'", "but got '", "'")
		if !known || actual != want {
			t.Errorf("got %q: parsed %d, %v; want %d", got, actual, known, want)
		}
	}
	if _, known := parseActual("wrong expected version", "but got '", "'"); known {
		t.Error("parsed a revision from a message without one")
	}
}

func TestClientLoggerLevels(t *testing.T) {
	var buf bytes.Buffer
	log := clientLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	log(esdb.LogError, "subscription has dropped. Reason: %v", status.Error(codes.Canceled, "context canceled"))
	log(esdb.LogError, "unexpected exception: %v", fmt.Errorf("wrapped: %w", context.Canceled))
	log(esdb.LogError, "unexpected exception: %v", status.Error(codes.Unavailable, "connection refused"))
	log(esdb.LogInfo, "discovery attempt %v/%v", 1, 10)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	want := []string{"level=DEBUG", "level=DEBUG", "level=ERROR", "level=INFO"}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines:\n%s", len(lines), buf.String())
	}
	for i, w := range want {
		if !strings.Contains(lines[i], w) || !strings.Contains(lines[i], "source=client") {
			t.Errorf("line %d = %q, want %s", i, lines[i], w)
		}
	}
	if !strings.Contains(lines[3], "discovery attempt 1/10") {
		t.Errorf("message not formatted: %q", lines[3])
	}
}

// The caller's deadline, not the client's 10 s default, bounds a call; a
// caller without one gets DefaultCallTimeout.
func TestCallDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if d := *callDeadline(ctx); d < 59*time.Second || d > time.Minute {
		t.Errorf("deadline with a minute left: %v", d)
	}
	if d := *callDeadline(context.Background()); d != DefaultCallTimeout {
		t.Errorf("deadline without one: %v", d)
	}
}

func TestParseServerVersion(t *testing.T) {
	for in, want := range map[string]serverVersion{"24.10.4": {24, 10, 4}, "22.10": {22, 10, 0}, "25.1.0.1": {25, 1, 0}} {
		got, err := parseServerVersion(in)
		if err != nil || got != want {
			t.Errorf("%q: %v, %v", in, got, err)
		}
	}
	if _, err := parseServerVersion("x"); err == nil {
		t.Error("accepted x")
	}
	if !(serverVersion{20, 10, 5}).less(minServer) || (serverVersion{22, 10, 0}).less(minServer) {
		t.Error("minimum version")
	}
}

func TestTakeAppendBudget(t *testing.T) {
	conn, n, err := takeAppendBudget("esdb://h:2113?tls=false&maxAppendBytes=500&x=1")
	if err != nil || n != 500 || conn != "esdb://h:2113?tls=false&x=1" {
		t.Errorf("%q %d %v", conn, n, err)
	}
	if _, _, err := takeAppendBudget("esdb://h:2113?maxAppendBytes=-1"); err == nil {
		t.Error("accepted a negative budget")
	}
	if conn, n, _ := takeAppendBudget("esdb://h:2113?maxappendbytes=7"); n != 7 || conn != "esdb://h:2113" {
		t.Errorf("%q %d", conn, n)
	}
}

func TestCheckVersion(t *testing.T) {
	if _, err := checkVersion(nil); !errors.Is(err, errUnsupportedServer) || !strings.Contains(err.Error(), "does not report its version") {
		t.Errorf("no ServerFeatures: %v", err)
	}
	old := "21.10.9"
	if _, err := checkVersion(&old); !errors.Is(err, errUnsupportedServer) || !strings.Contains(err.Error(), "21.10.9") {
		t.Errorf("21.10: %v", err)
	}
	cur := "25.1.0"
	if v, err := checkVersion(&cur); err != nil || v != (serverVersion{25, 1, 0}) {
		t.Errorf("25.1: %v, %v", v, err)
	}
}

func TestTruncateBeforeOfMetadata(t *testing.T) {
	for _, tc := range []struct {
		doc  string
		want uint64
	}{
		{``, 0},
		{`{}`, 0},
		{`{"$tb":7}`, 7},
		{`{"$maxAge":60,"$tb":12,"owner":"ops"}`, 12},
		{`{"$tb":9223372036854775807}`, 9223372036854775807}, // a soft delete's
		{`{"$acl":{"$x":["a"]},"$tb":3}`, 3},                 // an ACL the client's parser refuses
		{`{"$tb":-1}`, 0},
		{`{"$tb":"5"}`, 0},
		{`{"$tb":2.5}`, 0},
		{`[1,2]`, 0},
		{`not json`, 0},
	} {
		if got := truncateBefore([]byte(tc.doc)); got != tc.want {
			t.Errorf("truncateBefore(%s) = %d, want %d", tc.doc, got, tc.want)
		}
	}
}

// FuzzTruncateBefore: metadata comes from the server, written by anyone
// allowed to; reading $tb from it never panics, and a document that holds
// only a $tb gives it back.
func FuzzTruncateBefore(f *testing.F) {
	for _, seed := range []string{``, `{}`, `{"$tb":7}`, `{"$tb":-1,"$tb":3}`, `{"$acl":{"$r":"$all"},"$tb":1e3}`, `[`} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		tb := truncateBefore(doc)
		again := truncateBefore(fmt.Appendf(nil, `{"$tb":%d}`, tb))
		if again != tb {
			t.Fatalf("a document holding only $tb %d reads as %d", tb, again)
		}
	})
}
