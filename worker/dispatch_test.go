package main

import (
	"context"
	"errors"
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
	d := newDispatcher(b.store, "w1", "scripts", 4, func(ctx context.Context, r *run.Run) error {
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

// TestResyncCarriesOutMissedStops: a stop whose message never arrived is
// found in the record at the next heartbeat; a run whose record was ended
// under the worker (the reaper took it for lost) is killed at once.
func TestResyncCarriesOutMissedStops(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	ids := []string{"00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b"}
	causes := make(chan error, 2)
	d := newDispatcher(b.store, "w1", "scripts", 4, func(ctx context.Context, r *run.Run) error {
		<-ctx.Done()
		causes <- context.Cause(ctx)
		return nil
	})
	for _, id := range ids {
		if err := b.store.CreateRun(ctx, &run.Run{ID: id, Kind: run.KindScript, Status: run.StatusQueued, CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
		go d.start(context.Background(), id, false)
	}
	for len(d.ids()) < 2 {
		time.Sleep(5 * time.Millisecond)
	}
	// A stop recorded without its message, and a run the reaper ended.
	if _, err := b.store.RequestStop(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.Update(ctx, ids[1], &run.Run{Status: run.StatusTerminated, FinishedAt: time.Now(), Error: "worker lost"}); err != nil {
		t.Fatal(err)
	}
	d.resync(ctx)
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
			t.Fatalf("resync reached %v of the two runs", got)
		}
	}
	if got["stop"] != 1 || got["kill"] != 1 {
		t.Errorf("resync: %v, want one graceful stop and one kill", got)
	}
}
