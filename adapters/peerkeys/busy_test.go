package peerkeys

import (
	"errors"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/rpcerrors"
)

// A fetch over a budget is refused as a busy server refuses, so the caller
// is asked to retry (429 with RetryInfo) instead of being told the key is
// unavailable, which a sender would count toward queue mode.
func TestAFetchOverTheBudgetAsksTheCallerToRetry(t *testing.T) {
	t.Parallel()
	clock := &testClock{now: time.Unix(1_700_000_000, 0)}
	first, second := startKeyServer(t, 1), startKeyServer(t, 2)
	cfg := DefaultConfig()
	cfg.Insecure = true
	cfg.UnknownPerSecond, cfg.UnknownBurst = 1, 1
	r := newResolver(cfg, clock)
	if _, err := r.Key(t.Context(), first.id); err != nil {
		t.Fatal(err)
	}
	_, err := r.Key(t.Context(), second.id)
	var busy *rpcerrors.Busy
	if !errors.Is(err, ErrRateLimited) || !errors.As(err, &busy) || busy.RetryAfter <= 0 {
		t.Fatalf("a fetch over the budget: %v; want ErrRateLimited carrying a Busy with a retry delay", err)
	}
	if c := rpcerrors.Classify(err); c.Identifier != rpcerrors.ResourceExhausted || c.HTTPStatus != 429 {
		t.Fatalf("answered as %s %d, want hrpc.resource-exhausted 429", c.Identifier, c.HTTPStatus)
	}
	clock.Advance(time.Second)
	if _, err := r.Key(t.Context(), second.id); err != nil {
		t.Fatalf("a second later: %v", err)
	}
}
