package main

import (
	"bytes"
	"context"
	"io"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestStoreConnectsToStandIn runs the command and connects a Postbox store
// to the connection string it prints, as `postbox serve --store` would.
func TestStoreConnectsToStandIn(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	var out syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"--listen", "127.0.0.1:0", "--profile", "22.10"}, &out, io.Discard) }()

	conn := regexp.MustCompile(`esdb://\S+`)
	deadline := time.Now().Add(10 * time.Second)
	for conn.FindString(out.String()) == "" {
		if time.Now().After(deadline) {
			t.Fatalf("no connection string printed: %q", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !regexp.MustCompile(`TEST DOUBLE.*not a real server`).MatchString(out.String()) || !bytes.Contains([]byte(out.String()), []byte("22.10.")) {
		t.Errorf("the banner does not say it is a test double of 22.10: %q", out.String())
	}

	store, err := esdb.Open(ctx, conn.FindString(out.String()), nil)
	if err != nil {
		t.Fatal(err)
	}
	ev := eventstore.EventData{ID: eventstore.EventID(uuid.New()), Type: "T", Data: []byte(`{"a":1}`)}
	if _, err := store.Append(ctx, "s", eventstore.NoStream(), ev); err != nil {
		t.Fatal(err)
	}
	got, err := store.ReadStream(ctx, "s", 0, 10)
	if err != nil || len(got) != 1 || got[0].ID != ev.ID {
		t.Fatalf("read %+v, %v", got, err)
	}
	_ = store.Close()

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not stop")
	}
}

func TestRefusesUnknownProfile(t *testing.T) {
	err := run(t.Context(), []string{"--listen", "127.0.0.1:0", "--profile", "19.1"}, io.Discard, io.Discard)
	if err == nil {
		t.Fatal("an unknown profile was accepted")
	}
}
