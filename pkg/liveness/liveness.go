// Package liveness keeps the promise that no run stays queued, starting or
// running after the process that owned it is gone. Each worker beats a
// heartbeat into Redis; every API and worker process runs a reaper that
// ends the runs of any worker whose heartbeat went stale, as terminated,
// within seconds (asynq alone notices after about two minutes).
package liveness

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/ztrade/pyrunner/pkg/run"
	"github.com/ztrade/pyrunner/pkg/store"
)

const (
	// Interval is how often workers beat and reapers look.
	Interval = 2 * time.Second
	// Stale is how old a heartbeat may get before its worker counts as lost.
	Stale = 8 * time.Second
)

// Beat writes the worker's heartbeat every Interval until ctx ends.
// info is called each time for the current description.
func Beat(ctx context.Context, s *store.Store, info func() store.WorkerInfo) {
	t := time.NewTicker(Interval)
	defer t.Stop()
	for {
		if err := s.Heartbeat(ctx, info(), 3*Stale); err != nil && ctx.Err() == nil {
			slog.Warn("heartbeat failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Reap ends the runs of lost workers every Interval until ctx ends.
func Reap(ctx context.Context, s *store.Store) {
	t := time.NewTicker(Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if n, err := ReapOnce(ctx, s); err != nil && ctx.Err() == nil {
				slog.Warn("reaping lost workers failed", "err", err)
			} else if n > 0 {
				slog.Warn("ended runs of lost workers", "runs", n)
			}
		}
	}
}

// ReapOnce ends, as terminated, every run held by a worker whose heartbeat
// is stale, then forgets the worker. It is safe to run in many processes
// at once: a run that has already ended is left as it is.
func ReapOnce(ctx context.Context, s *store.Store) (int, error) {
	lost, err := s.LostWorkers(ctx, Stale)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, w := range lost {
		ids, err := s.HeldRuns(ctx, w)
		if err != nil {
			return n, fmt.Errorf("liveness: runs of %s: %w", w, err)
		}
		for _, id := range ids {
			ended, err := s.Update(ctx, id, &run.Run{
				Status:     run.StatusTerminated,
				FinishedAt: time.Now(),
				Error:      fmt.Sprintf("worker %s was lost (no heartbeat for %s) while running this run", w, Stale),
			})
			if err != nil {
				return n, err
			}
			if ended {
				n++
				slog.Warn("run terminated: its worker was lost", "run_id", id, "worker", w)
			}
		}
		if err := s.RemoveWorker(ctx, w); err != nil {
			return n, err
		}
	}
	return n, nil
}
