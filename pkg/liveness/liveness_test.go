package liveness_test

import (
	"context"
	"testing"
	"time"

	"github.com/ztrade/pyrunner/pkg/liveness"
	"github.com/ztrade/pyrunner/pkg/redistest"
	"github.com/ztrade/pyrunner/pkg/store"
)

// TestBeatTellsHowLongSinceALandedBeat: tick gets 0 after each beat that
// landed, and the time since the last one once Redis stops answering (what
// a worker fences itself on); the fence comes before a reaper's deadline.
func TestBeatTellsHowLongSinceALandedBeat(t *testing.T) {
	if liveness.Fence >= liveness.Stale {
		t.Fatalf("Fence (%s) must be shorter than Stale (%s)", liveness.Fence, liveness.Stale)
	}
	srv := redistest.Start(t)
	st := srv.Store(t)
	ticks := make(chan time.Duration, 100)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go liveness.Beat(ctx, st, func() store.WorkerInfo { return store.WorkerInfo{ID: "w1"} }, func(d time.Duration) { ticks <- d })
	if d := <-ticks; d != 0 {
		t.Fatalf("first beat: %s since the last, want 0", d)
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
