package main

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ztrade/pyrunner/pkg/redistest"
	"github.com/ztrade/pyrunner/pkg/run"
	"github.com/ztrade/pyrunner/pkg/store"
)

// testBundle is a private redis-server and a store on it.
type testBundle struct {
	store *store.Store
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	return &testBundle{store: redistest.Start(t).Store(t)}
}

// TestLosingPathKeepsTheWinnersStop: asynq's handler and the wake list may
// bring the same run to one worker at once. The path that loses the claim
// must not disturb the one that runs it: a stop must still reach the run.
// (Registering the run's cancel before the claim let the loser's clean-up
// delete the winner's cancel: the stop was lost, one in about sixty.)
func TestLosingPathKeepsTheWinnersStop(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	id := "00000000-0000-4000-8000-000000000001"
	if err := b.store.CreateRun(ctx, &run.Run{ID: id, Kind: run.KindScript, Status: run.StatusQueued, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	running := make(chan struct{})
	ended := make(chan error, 1)
	d := newDispatcher(b.store, "w1", "scripts", 4, func(ctx context.Context, _ *held) error {
		close(running)
		<-ctx.Done()
		return ctx.Err()
	})
	go func() { ended <- d.start(context.Background(), id, true) }() // the wake path wins
	<-running
	if err := d.start(context.Background(), id, false); err != nil { // asynq's delivery of the same run loses
		t.Fatal(err)
	}
	d.cancel(id) // the stop request, as pub/sub delivers it
	select {
	case err := <-ended:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("run ended with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the stop did not reach the running run")
	}
}

// TestReassertCarriesOutMissedStops: a stop whose message never arrived is
// found in the record at the next heartbeat; a run whose record was ended
// under the worker (the reaper took it for lost) is killed at once.
func TestReassertCarriesOutMissedStops(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	ids := []string{"00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b"}
	causes := make(chan error, 2)
	d := newDispatcher(b.store, "w1", "scripts", 4, func(ctx context.Context, _ *held) error {
		<-ctx.Done()
		causes <- context.Cause(ctx)
		return nil
	})
	for _, id := range ids {
		if err := b.store.CreateRun(ctx, &run.Run{ID: id, Kind: run.KindScript, Status: run.StatusQueued, CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
		goStart(t, d, context.Background(), id)
	}
	for d.busy() < 2 {
		time.Sleep(5 * time.Millisecond)
	}
	// A stop recorded without its message, and a run the reaper ended.
	if _, err := b.store.RequestStop(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Update(ctx, ids[1], &run.Run{Status: run.StatusTerminated, FinishedAt: time.Now(), Error: "worker lost"}); err != nil {
		t.Fatal(err)
	}
	d.reassert(ctx)
	got := map[string]int{}
	for i := 0; i < 2; i++ {
		select {
		case c := <-causes:
			if c == context.Canceled {
				got["stop"]++
			} else if c != nil {
				got["kill"]++
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("reassert reached %v of the two runs", got)
		}
	}
	if got["stop"] != 1 || got["kill"] != 1 {
		t.Errorf("reassert: %v, want one graceful stop and one kill", got)
	}
}

// TestReassertRestoresWhatRedisLost: Redis comes back empty while a
// worker runs a script and a research run: reassert writes both records
// again from the worker's copies (held by it, active), the script's lock
// refuses a second start (409), and a copy whose script another run
// locked while its record was missing is killed, so that one runs.
func TestReassertRestoresWhatRedisLost(t *testing.T) {
	srv := redistest.Start(t)
	st := srv.Store(t)
	ctx := context.Background()
	script := &run.Run{ID: "00000000-0000-4000-8000-0000000000c1", Kind: run.KindScript, Status: run.StatusQueued,
		CreatedAt: time.Now(), Script: "bot.py", Request: `{"script":"bot.py"}`}
	research := &run.Run{ID: "00000000-0000-4000-8000-0000000000c2", Kind: run.KindResearch, Status: run.StatusQueued,
		CreatedAt: time.Now(), Request: `{}`}
	if err := st.CreateScriptRun(ctx, script, false); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateRun(ctx, research); err != nil {
		t.Fatal(err)
	}
	causes := make(chan error, 2)
	w := &worker{id: "w1", store: st}
	exec := func(ctx context.Context, h *held) error {
		if _, err := w.update(ctx, h, &run.Run{Status: run.StatusRunning, PID: 4242}); err != nil {
			return err
		}
		<-ctx.Done()
		causes <- context.Cause(ctx)
		return nil
	}
	scripts, researchD := newDispatcher(st, "w1", "scripts", 4, exec), newDispatcher(st, "w1", "research", 4, exec)
	restored := make(chan string, 2)
	scripts.restored = func(h *held) { restored <- h.record().ID }
	goStart(t, scripts, ctx, script.ID)
	goStart(t, researchD, ctx, research.ID)
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("both runs running", func() bool {
		a, _ := st.GetRun(ctx, script.ID)
		b, _ := st.GetRun(ctx, research.ID)
		return a != nil && b != nil && a.Status == run.StatusRunning && b.Status == run.StatusRunning
	})

	srv.CLI(t, "flushall") // Redis lost everything
	scripts.reassert(ctx)
	researchD.reassert(ctx)
	for _, id := range []string{script.ID, research.ID} {
		r, err := st.GetRun(ctx, id)
		if err != nil || r.Status != run.StatusRunning || r.Worker != "w1" || r.PID != 4242 {
			t.Fatalf("run %s after reassert: %+v %v", id, r, err)
		}
	}
	if got := <-restored; got != script.ID {
		t.Errorf("restored callback for %s", got)
	}
	if held, _ := st.HeldRuns(ctx, "w1"); len(held) != 2 {
		t.Errorf("held after reassert: %v", held)
	}
	if active, _ := st.ActiveRuns(ctx); len(active) != 2 {
		t.Errorf("active after reassert: %d runs", len(active))
	}
	err := st.CreateScriptRun(ctx, &run.Run{ID: "00000000-0000-4000-8000-0000000000c3", Kind: run.KindScript, Status: run.StatusQueued,
		CreatedAt: time.Now(), Script: "bot.py"}, false)
	if run.ErrorCode(err) != run.ECodeConflict {
		t.Errorf("a second start of bot.py after reassert: %v, want a conflict", err)
	}
	select {
	case c := <-causes:
		t.Fatalf("a run was ended by reassert: %v", c)
	default:
	}

	// Lost again, and meanwhile another copy of bot.py took the lock:
	// this worker's copy must die.
	srv.CLI(t, "flushall")
	if err := st.CreateScriptRun(ctx, &run.Run{ID: "00000000-0000-4000-8000-0000000000c4", Kind: run.KindScript, Status: run.StatusRunning,
		CreatedAt: time.Now(), Script: "bot.py"}, false); err != nil {
		t.Fatal(err)
	}
	scripts.reassert(ctx)
	select {
	case c := <-causes:
		if c == nil || !strings.Contains(c.Error(), "of the same script started meanwhile") {
			t.Errorf("the conflicting copy ended with %v", c)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the conflicting copy was not killed")
	}
}

// goStart starts run id on d in the background; an error it returns
// (other than from ctx ending) fails the test at its end.
func goStart(t *testing.T, d *dispatcher, ctx context.Context, id string) {
	done := make(chan error, 1)
	go func() { done <- d.start(ctx, id, false) }()
	t.Cleanup(func() {
		select {
		case err := <-done:
			if err != nil && ctx.Err() == nil {
				t.Errorf("start %s: %v", id, err)
			}
		default: // still running: it ends with the test's context
		}
	})
}
