package main

// Multi-process tests of the two ways out of queue mode that do not wait
// for the peer to pull: the resume probe and an operator's `postbox
// resume`, with the sender on its default settings (--push-retries 5,
// --resume-probe on, --probe-interval 10s). Each receiver is fresh and
// never heard of the sender, so it never pulls it: only the probe, or the
// operator, can bring its events.

import (
	"strings"
	"testing"
	"time"

	"github.com/harmony-postbox/postbox/domain"
	eventsv1 "github.com/harmony-postbox/postbox/gen/postbox/events/v1"
)

// e2eQueue sends three events from a to each of bs, whose proxies refuse
// every push, and waits until a has put them in their queues.
func e2eQueue(t *testing.T, a *e2eNode, bs ...*e2eNode) []*e2eLedger {
	t.Helper()
	var out []*e2eLedger
	for _, b := range bs {
		sent := newE2ELedger()
		for user := range uint64(3) {
			a.send(b, sent, 100+user)
		}
		out = append(out, sent)
	}
	for _, b := range bs {
		a.waitDelivery(b, "queue mode", 20*time.Second, func(d []domain.DeliveryEvent) bool {
			return len(e2eOfType[domain.QueueModeEntered](d)) == 1
		})
	}
	return out
}

// e2eResumedBy returns the reasons of the PushResumed records in d.
func e2eResumedBy(d []domain.DeliveryEvent) []domain.ResumeReason {
	var out []domain.ResumeReason
	for _, r := range e2eOfType[domain.PushResumed](d) {
		out = append(out, r.Reason)
	}
	return out
}

// e2eAllPushed reports whether d ends with events 0..n-1 pushed.
func e2eAllPushed(d []domain.DeliveryEvent, n uint64) bool {
	p := e2eOfType[domain.EventPushed](d)
	return len(p) > 0 && p[len(p)-1].Last() == n-1
}

// TestQueueLeftByProbeAndByOperator: A (default settings) sends to B1 and
// B2, fresh servers behind proxies that refuse pushes, so both enter queue
// mode. B1's proxy lets pushes through again: A's resume probe pushes the
// oldest queued event after its first interval (5 to 10 s), which returns
// B1 to push mode, and the rest follows by push. For B2 the operator runs
// `postbox resume` (which cancels B2's probe), and B2's proxy lets pushes
// through: the push loop's retries deliver everything at once, recorded as
// the operator's resume. Neither receiver ever pulls.
func TestQueueLeftByProbeAndByOperator(t *testing.T) {
	e2eSetup(t)
	start := time.Now()
	a, b1, b2 := newE2ENode(t, "A", ""), newE2ENode(t, "B1", ""), newE2ENode(t, "B2", "")
	p1, p2 := newE2EProxy(t, b1.listen), newE2EProxy(t, b2.listen)
	b1.id, b2.id = p1.addr, p2.addr // A reaches each only through its proxy
	p1.setRefusePushes(true)
	p2.setRefusePushes(true)
	a.start()
	b1.start()
	b2.start()

	sent := e2eQueue(t, a, b1, b2)
	queuedAt := time.Now()
	t.Logf("both in queue mode after %s", queuedAt.Sub(start).Round(time.Millisecond))
	// B1: its proxy lets pushes through before A's first probe (5 to 10 s
	// after queue mode; the wait allows for a second one, 10 to 20 s
	// after the first).
	p1.setRefusePushes(false)

	// B2: the operator resumes; the proxy lets the retries through.
	out, errOut, code := runCLI(t, "resume", "--admin", a.admin, b2.id)
	p2.setRefusePushes(false)
	if code != 0 {
		t.Fatalf("postbox resume %s: exit %d, %q\n%s", b2.id, code, out, errOut)
	}
	d2 := a.waitDelivery(b2, "everything pushed after the operator's resume", 10*time.Second, func(d []domain.DeliveryEvent) bool {
		return e2eAllPushed(d, 3)
	})
	if got := e2eResumedBy(d2); len(got) != 1 || got[0] != domain.ResumeOperator {
		t.Errorf("A's delivery stream for B2 resumed by %v, want by the operator only: %s", got, e2eDescribe(d2))
	}

	d1 := a.waitDelivery(b1, "everything pushed after a resume probe", 45*time.Second, func(d []domain.DeliveryEvent) bool {
		return e2eAllPushed(d, 3)
	})
	t.Logf("B1 back in push mode %s after queue mode", time.Since(queuedAt).Round(time.Millisecond))
	if got := e2eResumedBy(d1); len(got) != 1 || got[0] != domain.ResumeProbe {
		t.Errorf("A's delivery stream for B1 resumed by %v, want by a probe only: %s", got, e2eDescribe(d1))
	}
	if !strings.Contains(a.lastRunLog(), `msg="resume probe succeeded: push mode" peer=`+b1.id) {
		t.Errorf("A's log does not say the probe of B1 succeeded")
	}

	for _, c := range []struct {
		b    *e2eNode
		sent *e2eLedger
		d    []domain.DeliveryEvent
	}{{b1, sent[0], d1}, {b2, sent[1], d2}} {
		c.b.waitInboxLen(a, 3, 10*time.Second)
		inbox := c.b.checkInbox(a, c.sent)
		for i, r := range inbox {
			if r.Via != eventsv1.EventReceived_VIA_PUSH {
				t.Errorf("%s's event %d came by %s, want push: it never pulls", c.b.name, i, r.Via)
			}
		}
		e2eCheckDelivery(t, "A's delivery stream for "+c.b.name, c.d)
	}
	e2eAudit(t, a, b1, b2)
	t.Logf("took %s", time.Since(start).Round(time.Millisecond))
}
