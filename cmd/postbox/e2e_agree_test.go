package main

// The engine and the projections fold the same streams by the same folds
// (domain.Peers, domain.Outbox, domain.Inbox). One fold compared with
// itself proves nothing, so this test compares what the running engine
// reports (/metrics reads the engine's cursors and its registry; the
// server info its identity) with a fresh replay of the same store through
// the projections, and with the live projections (`postbox peers`).

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/harmony-postbox/postbox/adapters/eventstore"
	"github.com/harmony-postbox/postbox/adapters/eventstore/embedded"
	"github.com/harmony-postbox/postbox/adapters/streams"
	"github.com/harmony-postbox/postbox/domain"
	adminv1 "github.com/harmony-postbox/postbox/gen/postbox/admin/v1"
	"github.com/harmony-postbox/postbox/projections"
)

// TestEngineAgreesWithAReplay: A sends to B by push and to C, which never
// runs, until C's events wait in queue mode; B sends to A; B moves to a new
// address and tells A (a peer's rename); then A renames itself, which B
// accepts and C cannot hear of. Then, on both servers, the engine's peers,
// server IDs, heads, delivered and skipped counts, pending events and
// queue modes equal a fresh replay of its store through the projections,
// and the live projections show the same.
func TestEngineAgreesWithAReplay(t *testing.T) {
	opSetup(t)
	a, b := newOpNode(t, "A", opQuickQueue...), newOpNode(t, "B", opQuickQueue...)
	c := loopback(opPort(t)) // nothing listens there
	a.start()
	b.start()

	a.send(b.id, 100, 0)
	a.send(b.id, 101, 1)
	b.send(a.id, 500, 0)
	a.send(c, 200, 0)
	a.send(c, 201, 1)
	a.waitPeer(b.id, "both delivered", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetDelivered() == 2 })
	a.waitPeer(c, "queue mode", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetMode() == adminv1.Mode_MODE_QUEUE })

	// B moves: it tells A, which renames its peer.
	oldB := b.id
	b.stop()
	b.moveTo(opPort(t))
	b.start()
	a.waitPeer(b.id, "B's rename", 20*time.Second, func(p *adminv1.Peer) bool {
		return slices.Equal(p.GetFormerServerIds(), []string{oldB})
	})

	// A renames itself: B accepts, C cannot.
	_, port, _ := strings.Cut(a.id, ":")
	newA := "localhost:" + port
	if out, errOut, code := runCLI(t, "rename", "--admin", a.admin, newA); code != 0 {
		t.Fatalf("postbox rename %s: exit %d, %q\n%s", newA, code, out, errOut)
	}
	a.id = newA
	a.waitPeer(b.id, "B to know A's new ID", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetKnowsOurServerId() })
	a.send(b.id, 102, 2)
	a.waitPeer(b.id, "the third delivered", 20*time.Second, func(p *adminv1.Peer) bool { return p.GetDelivered() == 3 })

	for _, n := range []*opNode{a, b} {
		// Records of finished pushes are written in the background: the
		// engine may be a moment ahead of its store, never apart from it.
		var diffs []string
		opWait(t, 10*time.Second, n.name+"'s engine to agree with a replay", func() (bool, string) {
			diffs = agreeDiffs(t, n)
			return len(diffs) == 0, strings.Join(diffs, "; ")
		})
	}
	if rep := a.auditClean("after the scenario"); len(rep.Peers) != 2 {
		t.Errorf("A's audit: peers %+v, want B and C", rep.Peers)
	}
	b.auditClean("after the scenario")
	peers := a.mustReplay().Peers()
	if i := slices.IndexFunc(peers, func(v projections.PeerView) bool { return v.ServerID == c }); i < 0 || peers[i].KnowsOurServerID || peers[i].Mode != domain.ModeQueue {
		t.Errorf("A's replay of C: %+v; want queue mode, not knowing A's new ID", peers)
	}
}

// mustReplay replays every record of n's store, read-only, into fresh
// projections.
func (n *opNode) mustReplay() *projections.State {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(n.t.Context(), 10*time.Second)
	defer cancel()
	store, err := embedded.OpenReadOnly(ctx, n.dataDir, embedded.Options{})
	if err != nil {
		n.t.Fatal(err)
	}
	defer store.Close()
	sub, err := store.Subscribe(ctx, eventstore.Filter{}, eventstore.FromStart())
	if err != nil {
		n.t.Fatal(err)
	}
	defer sub.Close()
	state := projections.NewState()
	for {
		item, err := sub.Recv(ctx)
		if err != nil {
			n.t.Fatal(err)
		}
		if item.CaughtUp {
			return state
		}
		if item.Event != nil {
			if err := state.Apply(streams.Decode(*item.Event)); err != nil {
				n.t.Fatalf("replay of %s: %v", n.name, err)
			}
		}
	}
}

// agreeDiffs lists where n's running engine (/metrics, server info), its
// live projections (the admin API's peers) and a fresh replay of its store
// differ.
func agreeDiffs(t *testing.T, n *opNode) []string {
	t.Helper()
	var diffs []string
	differ := func(format string, args ...any) { diffs = append(diffs, fmt.Sprintf(format, args...)) }
	replay := n.mustReplay()
	_, engine := opScrape(t, n.admin, "")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	info, err := n.api.GetServerInfo(ctx, connect.NewRequest(&adminv1.GetServerInfoRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if own := replay.OwnServerID(); info.Msg.GetServerId() != own || !slices.ContainsFunc(keys(engine), func(k string) bool {
		return strings.HasPrefix(k, `postbox_server_info{server_id="`+own+`"`)
	}) {
		differ("server ID: engine %s, replay %s", info.Msg.GetServerId(), own)
	}
	_, live := n.peersCLI()
	views := replay.Peers()
	if len(live) != len(views) {
		differ("peers: %d live, %d replayed", len(live), len(views))
	}
	queued := 0
	for _, v := range views {
		if v.Mode == domain.ModeQueue {
			queued++
		}
		label := `{peer="` + v.PeerID + `"}`
		if _, ok := engine[`postbox_peer_info{peer="`+v.PeerID+`",server_id="`+v.ServerID+`"}`]; !ok {
			differ("peer %s: the engine does not know it as %s", v.PeerID, v.ServerID)
		}
		for _, f := range []struct {
			series string
			want   uint64
		}{
			{"postbox_peer_outbox_head", v.Head},
			{"postbox_peer_delivered", v.Delivered - v.Skipped},
			{"postbox_peer_skipped", v.Skipped},
			{"postbox_peer_pending", v.Pending()},
		} {
			if got, ok := engine[f.series+label]; !ok || got != float64(f.want) {
				differ("peer %s: engine %s %v (present %v), replay %d", v.ServerID, f.series, got, ok, f.want)
			}
		}
		i := slices.IndexFunc(live, func(p *adminv1.Peer) bool { return p.GetPeerId() == v.PeerID })
		if i < 0 {
			differ("peer %s: not in the live projections", v.ServerID)
			continue
		}
		p := live[i]
		if p.GetServerId() != v.ServerID || p.GetHead() != v.Head || p.GetDelivered() != v.Delivered || p.GetPending() != v.Pending() ||
			(p.GetMode() == adminv1.Mode_MODE_QUEUE) != (v.Mode == domain.ModeQueue) || p.GetEventsReceived() != v.EventsReceived ||
			!slices.Equal(p.GetFormerServerIds(), v.FormerServerIDs) || p.GetKnowsOurServerId() != v.KnowsOurServerID {
			differ("peer %s: live %s, replay %+v", v.ServerID, opPeerString(p), v)
		}
	}
	if got := engine["postbox_peers_in_queue_mode"]; got != float64(queued) {
		differ("peers in queue mode: engine %v, replay %d", got, queued)
	}
	return diffs
}

func keys(m map[string]float64) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
