package main

// Multi-process tests of the delivery engine (PROTOCOL.md §4, ARCHITECTURE.md
// "Delivery, per peer" and "Receiving side"): real postbox processes on
// loopback, each on its own embedded store, killed and restarted on the same
// data directory. Every scenario ends by reading the receiver's inbox stream
// from its data directory and asserting it holds exactly the sent events, in
// sender sequence order 0..n-1, each once.

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/domain"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
	syncv1 "github.com/harmony-postbox/postbox/gen/protocol/sync/v1"
)

// Flags shared by the scenarios: queue mode after one attempt plus two
// retries (a few hundred milliseconds), and no resume probes, so that a
// peer's queue is emptied by its Pull and by nothing else.
var e2eQuickQueue = []string{"--push-retries", "2", "--resume-probe=false"}

// e2eStreamingSender makes a sender push one event at a time, so that a
// backlog takes long enough to deliver for a test to cut it midway (pushes
// of several events deliver it faster than the test can send it).
var e2eStreamingSender = append([]string{"--push-batch", "1"}, e2eQuickQueue...)

func e2eSetup(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs several postbox processes")
	}
	postboxBinary(t)
	t.Parallel()
}

// TestDeliveryPush1000: a thousand events from A to B, every one by push.
func TestDeliveryPush1000(t *testing.T) {
	e2eSetup(t)
	start := time.Now()
	a, b := newE2ENode(t, "A", "", e2eQuickQueue...), newE2ENode(t, "B", "", e2eQuickQueue...)
	a.start()
	b.start()
	const n = 1000
	sent := newE2ELedger()

	// The first few through the CLI, which prints the sequence number.
	for user := range uint64(3) {
		out, errOut, code := runCLI(t, "send", "--admin", a.admin, "--to", b.id,
			"--event", fmt.Sprintf(`{"userAddedToGuild":{"userId":"%d","guildId":"7"}}`, user))
		if code != 0 || strings.TrimSpace(out) != fmt.Sprint(user) {
			t.Fatalf("postbox send #%d: exit %d, printed %q, want %d\n%s", user, code, out, user, errOut)
		}
		if err := sent.record(user, user); err != nil {
			t.Fatal(err)
		}
	}
	// The rest through the admin API.
	a.sendMany(b, sent, e2eUsers(3, n-3))
	sendDone := time.Since(start)

	b.waitInboxLen(a, n, 60*time.Second)
	inbox := b.checkInbox(a, sent)
	if push, pull := e2eVias(inbox); push != n || pull != 0 {
		t.Errorf("B's inbox: %d by push, %d by pull; want all %d by push", push, pull, n)
	}
	d := a.waitDelivery(b, fmt.Sprintf("EventPushed for each of %d events", n), 15*time.Second, func(d []domain.DeliveryEvent) bool {
		p := e2eOfType[domain.EventPushed](d)
		return len(p) > 0 && p[len(p)-1].Last() >= n-1
	})
	// Pushes carry one event or several; together they cover every event
	// once, in order.
	pushed := e2eOfType[domain.EventPushed](d)
	var next uint64
	for i, p := range pushed {
		if p.Seq != next {
			t.Errorf("A's delivery stream: EventPushed #%d starts at seq %d, want %d", i, p.Seq, next)
			break
		}
		next = p.Last() + 1
	}
	if next != n || len(pushed) != len(d) {
		t.Errorf("A's delivery stream: pushes cover %d events among %d records, want exactly %d events, all by push: %s", next, len(d), n, e2eDescribe(d))
	}
	t.Logf("%d pushes carried the %d events", len(pushed), n)
	if q := e2eOfType[domain.QueueModeEntered](d); len(q) > 0 {
		t.Errorf("A entered queue mode: %+v", q)
	}
	e2eCheckDelivery(t, "A's delivery stream for B", d)
	e2eAudit(t, a, b)
	t.Logf("%d events: sent in %s, all delivered and checked after %s", n, sendDone.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// TestDeliveryQueueWhileDown: B goes down; A's pushes fail, A enters queue
// mode and keeps accepting events; B comes back, pulls them all at startup,
// in order, which returns A to push mode; later events arrive by push.
func TestDeliveryQueueWhileDown(t *testing.T) {
	e2eSetup(t)
	start := time.Now()
	a, b := newE2ENode(t, "A", "", e2eQuickQueue...), newE2ENode(t, "B", "", e2eQuickQueue...)
	a.start()
	b.start()
	sent := newE2ELedger()

	// B receives from A once, so A is a peer B pulls at startup.
	a.send(b, sent, 0)
	b.waitInboxLen(a, 1, 10*time.Second)

	b.kill()
	// The first event after the crash fails one attempt plus two retries:
	// queue mode from seq 1.
	a.send(b, sent, 1)
	a.waitDelivery(b, "QueueModeEntered", 10*time.Second, func(d []domain.DeliveryEvent) bool {
		return len(e2eOfType[domain.QueueModeEntered](d)) > 0
	})
	// A keeps accepting events for B, into the queue.
	a.sendMany(b, sent, e2eUsers(2, 198))
	d, err := a.delivery(b)
	if err != nil {
		t.Fatal(err)
	}
	q := e2eOfType[domain.QueueModeEntered](d)
	if len(q) != 1 || q[0].FromSeq != 1 || q[0].Attempts != 3 {
		t.Errorf("A's delivery stream: QueueModeEntered %+v, want one from seq 1 after 3 attempts: %s", q, e2eDescribe(d))
	}
	if p := e2eOfType[domain.EventPushed](d); len(p) != 1 {
		t.Errorf("A recorded pushes in queue mode: %s", e2eDescribe(d))
	}

	// B comes back: its startup pull gets the queue, then acknowledges it.
	b.start()
	took := b.waitServing(15 * time.Second)
	b.waitInboxLen(a, sent.len(), 10*time.Second)
	d = a.waitDelivery(b, "PushResumed", 10*time.Second, func(d []domain.DeliveryEvent) bool {
		return len(e2eOfType[domain.PushResumed](d)) > 0
	})
	if r := e2eOfType[domain.PushResumed](d); len(r) != 1 || r[0].Reason != domain.ResumeQueueDrained || r[0].FromSeq != 200 {
		t.Errorf("A's delivery stream: PushResumed %+v, want one after the queue drained at 200: %s", r, e2eDescribe(d))
	}
	inbox := b.checkInbox(a, sent)
	for i, r := range inbox {
		want := eventsv1.EventReceived_VIA_PULL
		if i == 0 {
			want = eventsv1.EventReceived_VIA_PUSH
		}
		if r.Via != want {
			t.Errorf("B's inbox record %d came %s, want %s", i, r.Via, want)
			break
		}
	}

	// Back in push mode: later events are pushed, a few through the CLI.
	for user := uint64(200); user < 203; user++ {
		out, errOut, code := runCLI(t, "send", "--admin", a.admin, "--to", b.id,
			"--event", fmt.Sprintf(`{"userAddedToGuild":{"userId":"%d","guildId":"7"}}`, user))
		if code != 0 || strings.TrimSpace(out) != fmt.Sprint(user) {
			t.Fatalf("postbox send #%d: exit %d, printed %q, want %d\n%s", user, code, out, user, errOut)
		}
		if err := sent.record(user, user); err != nil {
			t.Fatal(err)
		}
	}
	a.sendMany(b, sent, e2eUsers(203, 47))
	b.waitInboxLen(a, sent.len(), 10*time.Second)
	inbox = b.checkInbox(a, sent)
	for i, r := range inbox[200:] {
		if r.Via != eventsv1.EventReceived_VIA_PUSH {
			t.Errorf("B's inbox record %d came %s after A resumed pushing, want VIA_PUSH", 200+i, r.Via)
			break
		}
	}
	d = a.waitDelivery(b, "EventPushed for seq 249", 10*time.Second, func(d []domain.DeliveryEvent) bool {
		p := e2eOfType[domain.EventPushed](d)
		return len(p) > 0 && p[len(p)-1].Last() == 249
	})
	e2eCheckDelivery(t, "A's delivery stream for B", d)
	e2eAudit(t, a, b)
	t.Logf("B's startup pull took %s; scenario %s; A's delivery stream: %s", took.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), e2eDescribe(d))
}

// TestDeliveryCrashMidStream: A is killed with SIGKILL while it pushes a long
// stream to B, and restarted on the same data directory: delivery resumes
// where it stopped, and B has every event once, in order.
func TestDeliveryCrashMidStream(t *testing.T) {
	e2eSetup(t)
	start := time.Now()
	a, b := newE2ENode(t, "A", "", e2eStreamingSender...), newE2ENode(t, "B", "", e2eQuickQueue...)
	// Each push waits 4 ms on its way to B, so the 800 one-event pushes
	// take at least 3 s: the kill below lands mid-stream however fast the
	// machine is, not only on a slow one.
	px := newE2EProxy(t, b.listen)
	px.setPushDelay(4 * time.Millisecond)
	b.id = px.addr
	a.start()
	b.start()
	const n = 800
	sent := newE2ELedger()
	a.sendMany(b, sent, e2eUsers(0, n))

	// Kill A once B has some of the stream but not all of it.
	var atKill int
	e2eWait(t, 30*time.Second, "B to receive part of the stream", func() (bool, string) {
		got, err := b.inbox(a)
		if err != nil {
			return false, err.Error()
		}
		atKill = len(got)
		return atKill >= 50, fmt.Sprintf("%d events", atKill)
	})
	a.kill()
	px.setPushDelay(0)
	reread, err := b.inbox(a)
	if err != nil {
		t.Fatal(err)
	}
	atKillReread := len(reread)
	dAtKill, err := a.delivery(b)
	if err != nil {
		t.Fatal(err)
	}
	if atKillReread >= n {
		t.Fatalf("A pushed all %d events before it was killed; the test did not kill it mid-stream", n)
	}
	t.Logf("A killed with B's inbox at %d..%d of %d; A's delivery stream then: %s", atKill, atKillReread, n, e2eDescribe(dAtKill))

	a.start()
	a.waitServing(15 * time.Second)
	b.waitInboxLen(a, n, 60*time.Second)
	inbox := b.checkInbox(a, sent)
	if push, pull := e2eVias(inbox); push != n {
		t.Errorf("B's inbox: %d by push, %d by pull; want all by push", push, pull)
	}
	d := a.waitDelivery(b, fmt.Sprintf("EventPushed for seq %d", n-1), 15*time.Second, func(d []domain.DeliveryEvent) bool {
		p := e2eOfType[domain.EventPushed](d)
		return len(p) > 0 && p[len(p)-1].Last() == n-1
	})
	if q := e2eOfType[domain.QueueModeEntered](d); len(q) > 0 {
		t.Errorf("A entered queue mode: %+v", q)
	}
	if !e2eSameDelivery(d[:len(dAtKill)], dAtKill) {
		t.Errorf("A's delivery stream changed what it held at the crash")
	}
	e2eCheckDelivery(t, "A's delivery stream for B", d)
	e2eAudit(t, a, b)
	t.Logf("after restart: A's delivery stream: %s; scenario %s", e2eDescribe(d), time.Since(start).Round(time.Millisecond))
}

// TestDeliveryPushWaitsForStartupPull: a push from B that reaches A while
// A's startup pull of B is still under way is applied after that pull.
//
// B has a backlog for A (queue mode, A was down). A restarts; a proxy in
// front of B (B's server ID is the proxy's address, so A reaches B only
// through it) holds A's startup Pull for two seconds. Meanwhile B pushes its
// next event to A.
//
// How B pushes while in queue mode: it does not, by design (PROTOCOL.md §4:
// no new Push until the queue has been emptied), and both ways back to
// pushing (an operator's ResumePush, B's resume probe) push the OLDEST
// queued event, which the pull also carries (and serving the pull cancels
// the probe's push), so nothing would show the order. So the test makes the
// push itself, exactly as B's push loop would once back in push mode: a
// Push of B's next sequence number, signed as B with B's own key file,
// straight to A. Afterwards B really sends that same event (the admin API
// gives it that same sequence number) and pushes it; A drops it as already
// applied, so both servers' streams end consistent.
func TestDeliveryPushWaitsForStartupPull(t *testing.T) {
	e2eSetup(t)
	start := time.Now()
	a := newE2ENode(t, "A", "", e2eQuickQueue...)
	b := newE2ENode(t, "B", "", e2eQuickQueue...)
	px := newE2EProxy(t, b.listen)
	b.id = px.addr
	a.start()
	b.start()
	sent := newE2ELedger()

	// A receives from B once: B is a peer A pulls at startup.
	b.send(a, sent, 0)
	a.waitInboxLen(b, 1, 10*time.Second)

	// A goes down; B queues its next events for A.
	a.kill()
	const queued = 20
	b.sendMany(a, sent, e2eUsers(1, queued))
	b.waitDelivery(a, "QueueModeEntered", 10*time.Second, func(d []domain.DeliveryEvent) bool {
		return len(e2eOfType[domain.QueueModeEntered](d)) > 0
	})

	// A restarts; its startup Pull of B is held at the proxy.
	const hold = 2 * time.Second
	arrived, replied := px.holdNextPull(nil, hold)
	a.start()
	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("A's startup Pull of B never reached the proxy")
	}
	if s, err := a.health(t.Context()); err != nil || e2eServing(s) {
		t.Errorf("A's health during its startup pull: %q, %v; want NOT_SERVING", s, err)
	}

	// B's next event, pushed while the pull is held.
	next := uint64(queued + 1)
	if err := sent.record(next, next); err != nil {
		t.Fatal(err)
	}
	client := e2eClientSigningAs(t, b, b.id)
	type result struct {
		err error
		at  time.Time
	}
	pushed := make(chan result, 1)
	pushStart := time.Now()
	go func() {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		_, err := client.Push(ctx, domain.MustParseServerID(a.id), next, []*syncv1.Event{e2eEvent(next)})
		pushed <- result{err, time.Now()}
	}()
	var res result
	select {
	case res = <-pushed:
	case <-time.After(25 * time.Second):
		t.Fatal("the push to A never returned")
	}
	if res.err != nil {
		t.Fatalf("push of seq %d to A during its startup pull: %v", next, res.err)
	}
	select {
	case <-replied:
	default:
		t.Errorf("the push returned after %s, before B's Pull reply reached A: it did not wait for the pull", res.at.Sub(pushStart))
	}
	if rel := px.releasedAt(); !rel.IsZero() && res.at.Before(rel) {
		t.Errorf("the push returned %s before the pull's reply went back", rel.Sub(res.at))
	}
	a.waitServing(10 * time.Second)
	a.waitInboxLen(b, int(next)+1, 10*time.Second)
	inbox := a.checkInbox(b, sent)
	for i, r := range inbox {
		want := eventsv1.EventReceived_VIA_PULL
		if i == 0 || uint64(i) == next {
			want = eventsv1.EventReceived_VIA_PUSH
		}
		if r.Via != want {
			t.Errorf("A's inbox record %d came %s, want %s (pulled events before the pushed one)", i, r.Via, want)
		}
	}

	// B's own push of that event, now in push mode again, is not applied
	// again by A: A holds it already (from the push above, which carried no
	// outbox ID, so A refuses B's push and says what it holds, and B records
	// that), and B counts it delivered.
	if seq := b.send(a, newE2ELedger(), next); seq != next {
		t.Fatalf("B gave its next event sequence number %d, want %d", seq, next)
	}
	d := b.waitDelivery(a, fmt.Sprintf("seq %d delivered", next), 10*time.Second, func(d []domain.DeliveryEvent) bool {
		p := e2eOfType[domain.EventPushed](d)
		r := e2eOfType[domain.ReceiverReported](d)
		return (len(p) > 0 && p[len(p)-1].Last() == next) || (len(r) > 0 && r[len(r)-1] == domain.ReceiverReported{Seq: next, Has: true})
	})
	if r := e2eOfType[domain.PushResumed](d); len(r) != 1 || r[0].Reason != domain.ResumeQueueDrained {
		t.Errorf("B's delivery stream: PushResumed %+v, want one, after A drained the queue: %s", r, e2eDescribe(d))
	}
	a.checkInbox(b, sent)
	e2eCheckDelivery(t, "B's delivery stream for A", d)
	e2eAudit(t, a, b)
	t.Logf("push waited %s at A; B's delivery stream: %s; scenario %s", res.at.Sub(pushStart).Round(time.Millisecond), e2eDescribe(d), time.Since(start).Round(time.Millisecond))
}

// TestDeliveryPullOnlyOwnQueue: A holds a queue for B (B is down). C, a
// third server, Pulls A with its own valid key: it gets nothing of B's,
// whether A has met C or not; C cannot acknowledge B's events either, nor
// pass itself off as B with its key. A's delivery stream for B does not
// move, and B later gets everything.
func TestDeliveryPullOnlyOwnQueue(t *testing.T) {
	e2eSetup(t)
	start := time.Now()
	a := newE2ENode(t, "A", "", e2eQuickQueue...)
	b := newE2ENode(t, "B", "", e2eQuickQueue...)
	c := newE2ENode(t, "C", "")
	a.start()
	b.start()
	c.start()
	sent := newE2ELedger()

	// A and B federate both ways (A learns B's key), then B goes down and A
	// queues events for it.
	a.send(b, sent, 0)
	b.send(a, newE2ELedger(), 1000)
	b.waitInboxLen(a, 1, 10*time.Second)
	a.waitInboxLen(b, 1, 10*time.Second)
	b.kill()
	a.sendMany(b, sent, e2eUsers(1, 30))
	before := a.waitDelivery(b, "QueueModeEntered", 10*time.Second, func(d []domain.DeliveryEvent) bool {
		return len(e2eOfType[domain.QueueModeEntered](d)) > 0
	})

	asC := e2eClientSigningAs(t, c, c.id)
	aID := domain.MustParseServerID(a.id)
	pull := func(client interface {
		Pull(context.Context, domain.ServerID, *uint64) (peerclient.PullResult, error)
	}, ack *uint64,
	) (peerclient.PullResult, error) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		return client.Pull(ctx, aID, ack)
	}

	// C has never federated with A.
	res, err := pull(asC, nil)
	if err != nil || len(res.Events) != 0 {
		t.Errorf("C's Pull, as a stranger to A: %d events, err %v; want an empty reply", len(res.Events), err)
	}
	// C becomes A's peer (it pushes A an event); its Pull still gets only
	// its own queue, which is empty.
	c.send(a, newE2ELedger(), 2000)
	a.waitInboxLen(c, 1, 10*time.Second)
	res, err = pull(asC, nil)
	if err != nil || len(res.Events) != 0 {
		t.Errorf("C's Pull, as A's peer: %d events, err %v; want an empty reply", len(res.Events), err)
	}
	// An acknowledgement from C is checked against C's queue, not B's.
	ack := uint64(10)
	if res, err := pull(asC, &ack); err == nil || len(res.Events) != 0 {
		t.Errorf("C's Pull acknowledging seq %d: %d events, err %v; want it refused", ack, len(res.Events), err)
	} else {
		t.Logf("C's Pull acknowledging seq %d: %v", ack, err)
	}
	// C's key does not make C B.
	if res, err := pull(e2eClientSigningAs(t, c, b.id), nil); err == nil || len(res.Events) != 0 {
		t.Errorf("a Pull signed as B with C's key: %d events, err %v; want it refused", len(res.Events), err)
	} else {
		t.Logf("a Pull signed as B with C's key: %v", err)
	}

	after, err := a.delivery(b)
	if err != nil {
		t.Fatal(err)
	}
	if !e2eSameDelivery(before, after) {
		t.Errorf("C's Pulls moved A's delivery stream for B:\nbefore %s\nafter  %s", e2eDescribe(before), e2eDescribe(after))
	}
	if d, err := a.delivery(c); err != nil || len(d) != 0 {
		t.Errorf("A's delivery stream for C: %s, %v; want it empty", e2eDescribe(d), err)
	}

	// B comes back and pulls every event A queued for it.
	b.start()
	b.waitServing(15 * time.Second)
	b.waitInboxLen(a, sent.len(), 10*time.Second)
	inbox := b.checkInbox(a, sent)
	if push, pull := e2eVias(inbox); push != 1 || pull != 30 {
		t.Errorf("B's inbox: %d by push, %d by pull; want 1 and 30", push, pull)
	}
	d := a.waitDelivery(b, "PushResumed", 10*time.Second, func(d []domain.DeliveryEvent) bool {
		return len(e2eOfType[domain.PushResumed](d)) > 0
	})
	e2eCheckDelivery(t, "A's delivery stream for B", d)
	e2eAudit(t, a, b, c)
	t.Logf("A's delivery stream for B: %s; scenario %s", e2eDescribe(d), time.Since(start).Round(time.Millisecond))
}

// TestDeliveryLostPullReply: the reply to B's startup Pull of A is lost (a
// proxy in front of A forwards the Pull, lets A write its reply, then cuts
// B's connection). A counts those events as handed over but not delivered,
// so B's next Pull gets them again, and B applies each exactly once.
func TestDeliveryLostPullReply(t *testing.T) {
	e2eSetup(t)
	start := time.Now()
	a := newE2ENode(t, "A", "", e2eQuickQueue...)
	px := newE2EProxy(t, a.listen)
	a.id = px.addr // B reaches A only through the proxy
	b := newE2ENode(t, "B", "", append([]string{"--pull-interval", "1s"}, e2eQuickQueue...)...)
	a.start()
	b.start()
	sent := newE2ELedger()

	a.send(b, sent, 0)
	b.waitInboxLen(a, 1, 10*time.Second)
	b.kill()
	const queued = 100
	a.sendMany(b, sent, e2eUsers(1, queued))
	a.waitDelivery(b, "QueueModeEntered", 10*time.Second, func(d []domain.DeliveryEvent) bool {
		return len(e2eOfType[domain.QueueModeEntered](d)) > 0
	})

	// B is down, so the next Pull through the proxy is B's startup pull.
	px.cutNextPull()
	b.start()
	b.waitServing(15 * time.Second)
	if _, cuts := px.counts(); cuts != 1 {
		t.Fatalf("the proxy cut %d Pull replies by the time B served, want B's startup pull cut", cuts)
	}
	// B pulls again a second later and gets the events again.
	b.waitInboxLen(a, sent.len(), 15*time.Second)
	inbox := b.checkInbox(a, sent)
	if push, pull := e2eVias(inbox); push != 1 || pull != queued {
		t.Errorf("B's inbox: %d by push, %d by pull; want 1 and %d", push, pull, queued)
	}
	d := a.waitDelivery(b, "PushResumed", 10*time.Second, func(d []domain.DeliveryEvent) bool {
		return len(e2eOfType[domain.PushResumed](d)) > 0
	})
	served := e2eOfType[domain.PullServed](d)
	if len(served) < 2 || served[0] != (domain.PullServed{FromSeq: 1, ToSeq: queued, AwaitsAck: true}) || served[1].FromSeq != 1 {
		t.Errorf("A's delivery stream: PullServed %+v, want 1..%d served twice (the first reply was lost): %s", served, queued, e2eDescribe(d))
	}
	if acks := e2eOfType[domain.PullAcknowledged](d); len(acks) != 1 || acks[0].UpToSeq != queued {
		t.Errorf("A's delivery stream: PullAcknowledged %+v, want one up to %d: %s", acks, queued, e2eDescribe(d))
	}
	e2eCheckDelivery(t, "A's delivery stream for B", d)

	// And A pushes again.
	a.send(b, sent, queued+1)
	b.waitInboxLen(a, sent.len(), 10*time.Second)
	if inbox := b.checkInbox(a, sent); inbox[len(inbox)-1].Via != eventsv1.EventReceived_VIA_PUSH {
		t.Errorf("the event sent after the queue drained came %s, want VIA_PUSH", inbox[len(inbox)-1].Via)
	}
	e2eAudit(t, a, b)
	t.Logf("A's delivery stream for B: %s; scenario %s", e2eDescribe(d), time.Since(start).Round(time.Millisecond))
}

// TestDeliveryMutualStartupPulls: A and B each have a backlog for the other
// and restart together; each one's startup Pull of the other is served
// while its own is under way (PROTOCOL.md §4: serving a Pull never waits),
// so both finish: both report SERVING within a bound and both inboxes hold
// everything.
//
// Proxies in front of both (each server's ID is its proxy's address) hold
// each startup Pull until the other's has arrived too, then release both at
// once, so the two pulls overlap for sure.
func TestDeliveryMutualStartupPulls(t *testing.T) {
	e2eSetup(t)
	start := time.Now()
	a := newE2ENode(t, "A", "", e2eQuickQueue...)
	b := newE2ENode(t, "B", "", e2eQuickQueue...)
	pa, pb := newE2EProxy(t, a.listen), newE2EProxy(t, b.listen)
	a.id, b.id = pa.addr, pb.addr
	a.start()
	b.start()
	aToB, bToA := newE2ELedger(), newE2ELedger()

	// They federate both ways.
	a.send(b, aToB, 0)
	b.send(a, bToA, 0)
	b.waitInboxLen(a, 1, 10*time.Second)
	a.waitInboxLen(b, 1, 10*time.Second)

	// B is down while A queues for it; then A is down while B queues for it.
	const queued = 50
	b.kill()
	a.sendMany(b, aToB, e2eUsers(1, queued))
	a.waitDelivery(b, "QueueModeEntered", 10*time.Second, func(d []domain.DeliveryEvent) bool {
		return len(e2eOfType[domain.QueueModeEntered](d)) > 0
	})
	a.kill()
	b.start() // its startup pull of A fails: A is down
	b.waitServing(15 * time.Second)
	b.sendMany(a, bToA, e2eUsers(1, queued))
	b.waitDelivery(a, "QueueModeEntered", 10*time.Second, func(d []domain.DeliveryEvent) bool {
		return len(e2eOfType[domain.QueueModeEntered](d)) > 0
	})
	b.kill()

	// Both restart together; each startup Pull is held at the other's proxy
	// until both have arrived, then both go through at once.
	//
	// A server refuses extension tokens stamped before its own start
	// (PROTOCOL.md §3: a restart must not reopen the replay window), in
	// whole seconds: if the two starts straddle a second, the first one's
	// startup Pull, signed before the second one started, is refused. So
	// the test starts both processes just after a second turns; should a
	// loaded machine still push one start into the next second (the logs
	// then say the token predates the start), it kills both and tries again.
	for attempt := 1; ; attempt++ {
		release := make(chan struct{})
		aPulls, _ := pb.holdNextPull(release, 10*time.Second) // A's Pull of B
		bPulls, _ := pa.holdNextPull(release, 10*time.Second) // B's Pull of A
		time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second + 20*time.Millisecond)))
		restart := time.Now()
		a.spawn()
		b.spawn()
		a.waitUp()
		b.waitUp()
		for _, w := range []struct {
			name string
			ch   <-chan struct{}
		}{{"A's startup Pull of B", aPulls}, {"B's startup Pull of A", bPulls}} {
			select {
			case <-w.ch:
			case <-time.After(10 * time.Second):
				t.Fatalf("%s never reached the proxy", w.name)
			}
		}
		for _, n := range []*e2eNode{a, b} {
			if s, err := n.health(t.Context()); err != nil || e2eServing(s) {
				t.Errorf("%s's health while its startup pull is held: %q, %v; want NOT_SERVING", n.name, s, err)
			}
		}
		released := time.Now()
		close(release)
		a.waitServing(10 * time.Second)
		servingA := time.Since(released)
		b.waitServing(10 * time.Second)
		servingB := time.Since(released)
		t.Logf("attempt %d: both pulls released %s after the restart; SERVING %s (A) and %s (B) after the release",
			attempt, released.Sub(restart).Round(time.Millisecond), servingA.Round(time.Millisecond), servingB.Round(time.Millisecond))
		const refused = "token predates this server's start"
		if !strings.Contains(a.lastRunLog(), refused) && !strings.Contains(b.lastRunLog(), refused) {
			break
		}
		if attempt == 3 {
			t.Fatalf("three times, the two servers did not start within one second, and one refused the other's startup Pull")
		}
		t.Logf("attempt %d: the starts straddled a second and a startup Pull was refused as predating the start; again", attempt)
		a.kill()
		b.kill()
	}

	b.waitInboxLen(a, aToB.len(), 10*time.Second)
	a.waitInboxLen(b, bToA.len(), 10*time.Second)
	for _, dir := range []struct {
		from, to *e2eNode
		sent     *e2eLedger
	}{{a, b, aToB}, {b, a, bToA}} {
		inbox := dir.to.checkInbox(dir.from, dir.sent)
		if push, pull := e2eVias(inbox); push != 1 || pull != queued {
			t.Errorf("%s's inbox from %s: %d by push, %d by pull; want 1 and %d", dir.to.name, dir.from.name, push, pull, queued)
		}
		d := dir.from.waitDelivery(dir.to, "PushResumed", 10*time.Second, func(d []domain.DeliveryEvent) bool {
			return len(e2eOfType[domain.PushResumed](d)) > 0
		})
		e2eCheckDelivery(t, dir.from.name+"'s delivery stream for "+dir.to.name, d)
		// Back in push mode.
		dir.from.send(dir.to, dir.sent, queued+1)
	}
	b.waitInboxLen(a, aToB.len(), 10*time.Second)
	a.waitInboxLen(b, bToA.len(), 10*time.Second)
	for _, dir := range []struct {
		from, to *e2eNode
		sent     *e2eLedger
	}{{a, b, aToB}, {b, a, bToA}} {
		inbox := dir.to.checkInbox(dir.from, dir.sent)
		if last := inbox[len(inbox)-1]; last.Via != eventsv1.EventReceived_VIA_PUSH {
			t.Errorf("%s's last event from %s came %s, want VIA_PUSH", dir.to.name, dir.from.name, last.Via)
		}
	}
	e2eAudit(t, a, b)
	t.Logf("scenario %s", time.Since(start).Round(time.Millisecond))
}

// TestDeliveryLostPushReplyThenQueue: B applies a pushed event, but its
// reply is lost (a proxy in front of B forwards the Push, then cuts the
// connection), and A's retries fail, so A enters queue mode from that very
// event. B has applied it, so B's next Pull acknowledges it: A must accept
// that acknowledgement (push is at-least-once; the receiver may be ahead of
// what the sender recorded) and serve the rest of the queue.
func TestDeliveryLostPushReplyThenQueue(t *testing.T) {
	e2eSetup(t)
	start := time.Now()
	a := newE2ENode(t, "A", "", e2eQuickQueue...)
	b := newE2ENode(t, "B", "", append([]string{"--pull-interval", "1s"}, e2eQuickQueue...)...)
	px := newE2EProxy(t, b.listen)
	b.id = px.addr // A reaches B only through the proxy
	a.start()
	b.start()
	sent := newE2ELedger()

	a.send(b, sent, 0)
	b.waitInboxLen(a, 1, 10*time.Second)

	// Seq 1 reaches B, its reply does not reach A, and A's retries fail.
	px.cutNextPushThenRefuse()
	a.send(b, sent, 1)
	a.waitDelivery(b, "QueueModeEntered", 10*time.Second, func(d []domain.DeliveryEvent) bool {
		return len(e2eOfType[domain.QueueModeEntered](d)) > 0
	})
	if px.pushesCut() != 1 {
		t.Fatalf("the proxy cut %d push replies, want 1", px.pushesCut())
	}
	b.waitInboxLen(a, 2, 5*time.Second)
	a.sendMany(b, sent, e2eUsers(2, 9))
	px.setRefusePushes(false)

	// B pulls A every second (its pull interval), acknowledging seq 1.
	b.waitInboxLen(a, sent.len(), 15*time.Second)
	b.checkInbox(a, sent)
	d := a.waitDelivery(b, "PushResumed", 10*time.Second, func(d []domain.DeliveryEvent) bool {
		return len(e2eOfType[domain.PushResumed](d)) > 0
	})
	e2eCheckDelivery(t, "A's delivery stream for B", d)
	e2eAudit(t, a, b)
	t.Logf("A's delivery stream for B: %s; scenario %s", e2eDescribe(d), time.Since(start).Round(time.Millisecond))
}

// TestDeliveryReceiverCrashMidStream: B is killed with SIGKILL while A
// pushes it a long stream. The push in flight may well be applied by B and
// never answered; A enters queue mode at the first event it did not hear
// back about, keeps queueing, and B, restarted, pulls the rest: every event
// once, in order.
func TestDeliveryReceiverCrashMidStream(t *testing.T) {
	e2eSetup(t)
	start := time.Now()
	a, b := newE2ENode(t, "A", "", e2eStreamingSender...), newE2ENode(t, "B", "", e2eQuickQueue...)
	a.start()
	b.start()
	const n = 600
	sent := newE2ELedger()
	// Sent one by one in the background while B receives, so that B is
	// killed while the stream is still coming (sent all at once, a backlog
	// can be delivered before the kill).
	sendDone := make(chan error, 1)
	go func() {
		for _, u := range e2eUsers(0, n) {
			seq, err := a.trySend(t.Context(), b, u)
			if err == nil {
				err = sent.record(seq, u)
			}
			if err != nil {
				sendDone <- fmt.Errorf("send %d: %w", u, err)
				return
			}
		}
		sendDone <- nil
	}()

	var atKill int
	e2eWait(t, 30*time.Second, "B to receive part of the stream", func() (bool, string) {
		got, err := b.inbox(a)
		if err != nil {
			return false, err.Error()
		}
		atKill = len(got)
		return atKill >= 50, fmt.Sprintf("%d events", atKill)
	})
	b.kill()
	if err := <-sendDone; err != nil {
		t.Fatal(err)
	}
	if atKill >= n {
		t.Fatalf("B had all %d events before it was killed; the test did not kill it mid-stream", n)
	}
	d := a.waitDelivery(b, "QueueModeEntered", 10*time.Second, func(d []domain.DeliveryEvent) bool {
		return len(e2eOfType[domain.QueueModeEntered](d)) > 0
	})
	q := e2eOfType[domain.QueueModeEntered](d)[0]
	a.sendMany(b, sent, e2eUsers(n, 20))

	b.start()
	b.waitServing(15 * time.Second)
	b.waitInboxLen(a, sent.len(), 15*time.Second)
	inbox := b.checkInbox(a, sent)
	push, pull := e2eVias(inbox)
	d = a.waitDelivery(b, "PushResumed", 10*time.Second, func(d []domain.DeliveryEvent) bool {
		return len(e2eOfType[domain.PushResumed](d)) > 0
	})
	e2eCheckDelivery(t, "A's delivery stream for B", d)
	e2eAudit(t, a, b)
	t.Logf("B killed at %d of %d; A queued from seq %d; B's inbox: %d by push, %d by pull; A's delivery stream: %s; scenario %s",
		atKill, n, q.FromSeq, push, pull, e2eDescribe(d), time.Since(start).Round(time.Millisecond))
}
