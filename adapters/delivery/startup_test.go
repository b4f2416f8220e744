package delivery

import (
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/harmony-postbox/postbox/adapters/peerclient"
	"github.com/harmony-postbox/postbox/domain"
)

// Given a known sender, a start pulls it before the engine is ready; a
// failed startup pull is logged, one that works is not.
func TestTheStartPullsEachPeerBeforeItIsReady(t *testing.T) {
	t.Parallel()
	w, _ := faultWorld(t, testConfig())
	registerSender(t, w)
	var done atomic.Bool
	pulls := &pullCounter{fn: func(int64, *uint64) (peerclient.PullResult, error) {
		time.Sleep(50 * time.Millisecond)
		done.Store(true)
		return peerclient.PullResult{}, nil
	}}
	pulls.install(w)
	w.restart()
	if !done.Load() {
		t.Fatal("the engine was ready before its startup pull ended")
	}
	if strings.Contains(w.logs.String(), "startup pull failed") {
		t.Fatalf("log:\n%s", w.logs.String())
	}
	failing := &pullCounter{fn: func(int64, *uint64) (peerclient.PullResult, error) {
		return peerclient.PullResult{}, errors.New("connection refused")
	}}
	failing.install(w)
	w.restart()
	if !strings.Contains(w.logs.String(), "startup pull failed") {
		t.Fatalf("a failed startup pull was not logged:\n%s", w.logs.String())
	}
}

// Given a known sender whose startup pull takes a while, a push from it
// made meanwhile waits for the pull to end.
func TestAPushDuringTheStartupPullWaitsForIt(t *testing.T) {
	t.Parallel()
	w, _ := faultWorld(t, testConfig())
	registerSender(t, w)
	var pullEnded, pushed atomic.Int64
	pulls := &pullCounter{fn: func(int64, *uint64) (peerclient.PullResult, error) {
		time.Sleep(100 * time.Millisecond)
		pullEnded.Store(time.Now().UnixNano())
		return peerclient.PullResult{}, nil
	}}
	pulls.install(w)
	pushDone := make(chan error, 1)
	w.beforeRun = func() {
		e := w.engine
		go func() {
			err := e.AcceptPush(t.Context(), domain.Caller{ServerID: sender, Extended: true}, events(0), seqOf(0))
			pushed.Store(time.Now().UnixNano())
			pushDone <- err
		}()
	}
	w.restart()
	if err := <-pushDone; err != nil {
		t.Fatal(err)
	}
	if pushed.Load() < pullEnded.Load() {
		t.Fatal("a push was taken while the startup pull of its sender was under way")
	}
}

// Given a peer in queue mode, after a restart it is probed again, and
// pushed to once it answers.
func TestAQueuedPeerIsProbedAgainAfterARestart(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t, probeConfig())
		w.peers.setDown(true)
		w.send(2)
		eventually(t, "queue mode", func() bool { return w.state().Mode == domain.ModeQueue })
		w.restart()
		w.peers.setDown(false)
		time.Sleep(time.Minute)
		synctest.Wait()
		if s := w.state(); s.Mode != domain.ModePush || s.Delivered != 2 {
			t.Fatalf("a minute after the restart: %+v", s)
		}
	})
}
