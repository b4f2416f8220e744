package esdb_test

import (
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	client "github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb"
	"github.com/harmony-postbox/postbox/adapters/eventstore/esdb/fakestreams"
)

func rawClient(t *testing.T, srv *fakestreams.Server) *client.Client {
	t.Helper()
	conf, err := client.ParseConnectionString(srv.ConnString())
	if err != nil {
		t.Fatal(err)
	}
	conf.Logger = client.NoopLogging()
	c, err := client.NewClient(conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Truncate changes $tb only: the stream's other metadata (a max age, an
// ACL, properties of its own set by an operator) stays as it was, and the
// truncated events stay in $all, as on the server until a scavenge.
func TestTruncateKeepsOtherMetadata(t *testing.T) {
	t.Parallel()
	s, srv := openFake(t, fakestreams.Options{})
	c := rawClient(t, srv)
	ctx := testContext(t)
	for range 5 {
		mustAppend(t, s, "s", eventstore.Any(), event("A", `{}`))
	}
	var meta client.StreamMetadata
	meta.SetMaxAge(48 * time.Hour)
	meta.AddCustomProperty("owner", "ops")
	if _, err := c.SetStreamMetadata(ctx, "s", client.AppendToStreamOptions{}, meta); err != nil {
		t.Fatal(err)
	}
	inAll := srv.AllEvents()
	if err := s.Truncate(ctx, "s", 3); err != nil {
		t.Fatal(err)
	}
	got, err := c.GetStreamMetadata(ctx, "s", client.ReadStreamOptions{Direction: client.Backwards, From: client.End{}})
	if err != nil {
		t.Fatal(err)
	}
	if tb := got.TruncateBefore(); tb == nil || *tb != 3 {
		t.Errorf("$tb = %v, want 3", tb)
	}
	if age := got.MaxAge(); age == nil || *age != 48*time.Hour {
		t.Errorf("max age = %v, want 48h", age)
	}
	if owner := got.CustomProperty("owner"); owner != "ops" {
		t.Errorf("custom property owner = %v, want ops", owner)
	}
	// One metadata event more; the five events are all still there.
	if n := srv.AllEvents(); n != inAll+1 {
		t.Errorf("$all holds %d events, want %d (the truncated ones stay until a scavenge)", n, inAll+1)
	}
}

// Truncations racing on one stream, from several adapters, end at the
// highest point: each metadata write expects the revision it read, so a
// lower point never overwrites a higher one.
func TestConcurrentTruncationsKeepTheHighest(t *testing.T) {
	t.Parallel()
	srv := fakestreams.StartServer(t, fakestreams.Options{})
	stores := make([]*esdb.Store, 4)
	for i := range stores {
		s, err := esdb.Open(testContext(t), srv.ConnString(), leveledTestLogger(t, slog.LevelWarn))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		stores[i] = s
	}
	// Each of the racers writes at most once, so none meets more conflicts
	// than there are others: fewer than the adapter's attempts.
	const racers, n = 12, 36
	evs := make([]eventstore.EventData, n)
	for i := range evs {
		evs[i] = event("A", `{}`)
	}
	mustAppend(t, stores[0], "s", eventstore.NoStream(), evs...)
	var wg sync.WaitGroup
	for i := 1; i <= racers; i++ {
		before := uint64(i * n / racers)
		wg.Go(func() {
			if err := stores[i%len(stores)].Truncate(testContext(t), "s", before); err != nil {
				t.Errorf("truncate before %d: %v", before, err)
			}
		})
	}
	wg.Wait()
	tb, err := stores[0].TruncatedBefore(testContext(t), "s")
	if err != nil || tb != n {
		t.Errorf("TruncatedBefore = %d, %v; want %d", tb, err, n)
	}
}

// An empty append checks its expectation against the head, which a fully
// truncated stream does not show: its truncation point tells instead.
func TestEmptyAppendToAFullyTruncatedStream(t *testing.T) {
	t.Parallel()
	s, _ := openFake(t, fakestreams.Options{})
	ctx := testContext(t)
	mustAppend(t, s, "s", eventstore.NoStream(), event("A", `{}`), event("A", `{}`))
	if err := s.Truncate(ctx, "s", 2); err != nil {
		t.Fatal(err)
	}
	if res, err := s.Append(ctx, "s", eventstore.Exact(1)); err != nil || res.NextExpectedRevision != 1 {
		t.Errorf("empty append expecting the last revision: %+v, %v", res, err)
	}
	_, err := s.Append(ctx, "s", eventstore.NoStream())
	wantWrong(t, err, true, 1)
}

// Metadata the client's parser refuses (here an ACL key it does not know)
// cannot stop a subscription, which reads only $tb from it; Truncate,
// which would have to rewrite the document, leaves it as it is and says
// why.
func TestMetadataTheClientCannotParse(t *testing.T) {
	t.Parallel()
	s, srv := openFake(t, fakestreams.Options{})
	c := rawClient(t, srv)
	ctx := testContext(t)
	for range 3 {
		mustAppend(t, s, "odd-s", eventstore.Any(), event("A", `{}`))
	}
	doc := []byte(`{"$acl":{"$x":["ops"]},"$tb":2}`)
	if _, err := c.AppendToStream(ctx, "$$odd-s", client.AppendToStreamOptions{}, client.EventData{
		EventType: "$metadata", ContentType: client.ContentTypeJson, Data: doc,
	}); err != nil {
		t.Fatal(err)
	}
	sub := subscribe(t, s, eventstore.Filter{StreamPrefix: "odd-"}, eventstore.FromStart())
	if it := recv(t, sub); it.Event == nil || it.Event.Revision != 2 {
		t.Fatalf("first item %s, want odd-s@2", describe(it))
	}
	if it := recv(t, sub); !it.CaughtUp {
		t.Fatalf("second item %s, want caught-up", describe(it))
	}
	if err := s.Truncate(ctx, "odd-s", 3); err == nil || !strings.Contains(err.Error(), "metadata cannot be read") {
		t.Fatalf("truncation over metadata the client cannot parse: %v, want a refusal saying so", err)
	}
	if tb, err := s.TruncatedBefore(ctx, "odd-s"); err != nil || tb != 2 {
		t.Errorf("TruncatedBefore = %d, %v; want 2 (left as it was)", tb, err)
	}
}
