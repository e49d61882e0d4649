package liveness_test

import (
	"context"
	"testing"
	"time"

	"github.com/ztrade/pyrunner/pkg/liveness"
	"github.com/ztrade/pyrunner/pkg/redistest"
	"github.com/ztrade/pyrunner/pkg/run"
	"github.com/ztrade/pyrunner/pkg/store"
)

// TestBeatTellsHowLongSinceALandedBeat: tick gets 0 after each beat that
// landed, and the time since the last one once Redis stops answering (what
// a worker fences itself on); the fence comes before a reaper's deadline.
func TestBeatTellsHowLongSinceALandedBeat(t *testing.T) {
	if liveness.Stale-liveness.Fence < 2*time.Second {
		t.Fatalf("Fence (%s) must end 2 s before Stale (%s) at least", liveness.Fence, liveness.Stale)
	}
	srv := redistest.Start(t)
	st := srv.Store(t)
	ticks := make(chan time.Duration, 100)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var serverID string
	go liveness.Beat(ctx, st, func() store.WorkerInfo { return store.WorkerInfo{ID: "w1"} }, func(tk liveness.Tick) {
		if tk.SinceOK == 0 {
			serverID = tk.ServerID
		}
		ticks <- tk.SinceOK
	})
	if d := <-ticks; d != 0 || len(serverID) != 40 {
		t.Fatalf("first beat: %s since the last, want 0; redis run_id %q", d, serverID)
	}
	ws, _ := st.Workers(ctx, liveness.Stale)
	if len(ws) != 1 || ws[0].ID != "w1" {
		t.Errorf("workers: %+v", ws)
	}
	srv.CLI(t, "client", "pause", "20000") // Redis stops answering (as if cut off)
	deadline := time.After(20 * time.Second)
	for {
		select {
		case d := <-ticks:
			if d >= liveness.Fence {
				return // the worker would fence itself now
			}
		case <-deadline:
			t.Fatal("no tick reported the missing heartbeats")
		}
	}
}

// TestRestartedEndsThePreviousProcessRuns: a worker that starts under the
// id of a dead one (a restarted container: same host name and pid) ends
// that one's runs at once, and holds nothing afterwards.
func TestRestartedEndsThePreviousProcessRuns(t *testing.T) {
	st := redistest.Start(t).Store(t)
	ctx := context.Background()
	const worker = "0c272eaff4b6:7"
	if err := st.CreateRun(ctx, &run.Run{ID: "r1", Kind: run.KindResearch, Status: run.StatusRunning, Worker: worker, CreatedAt: time.Now(), StartedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateRun(ctx, &run.Run{ID: "r2", Kind: run.KindScript, Status: run.StatusRunning, Worker: "other:7", CreatedAt: time.Now(), StartedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := st.HoldRun(ctx, worker, "r1"); err != nil {
		t.Fatal(err)
	}
	if err := st.HoldRun(ctx, "other:7", "r2"); err != nil {
		t.Fatal(err)
	}
	n, err := liveness.Restarted(ctx, st, worker)
	if err != nil || n != 1 {
		t.Fatalf("Restarted: %d runs, %v; want 1", n, err)
	}
	r1, _ := st.GetRun(ctx, "r1")
	if r1.Status != run.StatusTerminated || r1.Error != "worker "+worker+" restarted while running this run" {
		t.Errorf("r1: %s %q", r1.Status, r1.Error)
	}
	if r2, _ := st.GetRun(ctx, "r2"); r2.Status != run.StatusRunning {
		t.Errorf("another worker's run was touched: %s", r2.Status)
	}
	if held, _ := st.HeldRuns(ctx, worker); len(held) != 0 {
		t.Errorf("still held: %v", held)
	}
}
