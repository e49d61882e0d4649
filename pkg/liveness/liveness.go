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

	"github.com/ztrade/pyrunner/pkg/restart"
	"github.com/ztrade/pyrunner/pkg/run"
	"github.com/ztrade/pyrunner/pkg/store"
)

const (
	// Interval is how often reapers look.
	Interval = 2 * time.Second
	// BeatInterval is how often workers beat. A lease runs Fence from
	// the last beat that landed, so a beat every half second leaves a
	// failover (Sentinel electing a new primary: about 4 s in compose)
	// Fence-BeatInterval to complete before scripts are fenced.
	BeatInterval = 500 * time.Millisecond
	// beatRetry is how soon a beat that failed is tried again.
	beatRetry = 250 * time.Millisecond
	// Stale is how old a heartbeat may get before its worker counts as
	// lost and any reaper ends its runs as terminated (within Stale +
	// Interval of the last beat).
	Stale = 8 * time.Second
	// Fence is how long a worker goes without a heartbeat that landed
	// before it kills its own runs. It is shorter than Stale, so a run is
	// dead before a reaper can say it was terminated and a second copy of
	// a script can start: by 2 s at least (Stale - Fence), which covers
	// clocks a second apart. It is as long as that allows, so that a
	// Sentinel failover (about 4 s in compose, from the primary's death to
	// the first beat that lands on the new one) does not fence scripts.
	Fence = 6 * time.Second
	// RecoveryWindow is how long after a Redis (re)start no script may
	// start or be claimed (store.SetRecoveryWindow). A restart may have
	// lost the records of runs a worker still holds; within Fence of its
	// last beat, which came before the restart, that worker has either
	// written them again (at its first beat that lands) or killed them.
	RecoveryWindow = Fence + time.Second
)

// A Tick is what a worker learns from one heartbeat try.
type Tick struct {
	// SinceOK is how long it has been since a beat last landed: 0 when
	// this one did.
	SinceOK time.Duration
	// LandedAt is when the last beat that landed was sent: the reaper
	// counts Stale from no later than that, so a lease that must end
	// before the reaper's deadline counts Fence from it.
	LandedAt time.Time
	// ServerID is Redis's run_id as of the last beat that landed; it
	// changes when Redis restarts.
	ServerID string
}

// Beat writes the worker's heartbeat every BeatInterval until ctx ends.
// info is called each time for the current description. After each try,
// tick is called with what it says of the worker's standing. A beat that
// hangs (Redis cut off, or a dead primary's address that drops packets)
// is given up after a second, or at once when the sentinels name a new
// primary; a beat that failed is tried again within beatRetry, so a
// failover costs the lease no more than it must.
func Beat(ctx context.Context, s *store.Store, info func() store.WorkerInfo, tick func(Tick)) {
	t := time.NewTicker(BeatInterval)
	defer t.Stop()
	last := Tick{LandedAt: time.Now()}
	for {
		sent := time.Now()
		switched := s.PrimaryChanged()
		id, err := beatOnce(ctx, s, info(), switched)
		next := t.C
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			slog.Warn("heartbeat failed", "err", err, "since_last_beat", time.Since(last.LandedAt).Round(time.Millisecond))
			last.SinceOK = time.Since(last.LandedAt)
			next = time.After(beatRetry)
		default:
			last = Tick{LandedAt: sent, ServerID: id}
		}
		tick(last)
		select {
		case <-ctx.Done():
			return
		case <-next:
		case <-switched:
		}
	}
}

// beatOnce writes one heartbeat, given up after a second or when switched
// is closed (the write may be waiting on the old primary).
func beatOnce(ctx context.Context, s *store.Store, info store.WorkerInfo, switched <-chan struct{}) (string, error) {
	bctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	go func() {
		select {
		case <-switched:
			cancel()
		case <-bctx.Done():
		}
	}()
	return s.Heartbeat(bctx, info, 3*Stale)
}

// Reap ends the runs of lost workers every Interval until ctx ends.
// restarted, when not nil, is told of each run a restart policy started
// again, with the restart's cause (restart.Cause; for metrics).
func Reap(ctx context.Context, s *store.Store, restarted func(cause string)) {
	t := time.NewTicker(Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if n, err := reapOnce(ctx, s, restarted); err != nil && ctx.Err() == nil {
				slog.Warn("reaping lost workers failed", "err", err)
			} else if n > 0 {
				slog.Warn("ended runs of lost workers", "runs", n)
			}
		}
	}
}

// ReapOnce ends, as terminated, every run held by a worker whose heartbeat
// is stale, then forgets the worker. A script run whose restart policy
// says so is not ended but restarting: its next attempt may start on any
// worker, now that the lost one's keeper has certainly killed it (Fence <
// Stale). It is safe to run in many processes at once: a run that has
// already ended, or moved on to another attempt, is left as it is.
func ReapOnce(ctx context.Context, s *store.Store) (int, error) { return reapOnce(ctx, s, nil) }

func reapOnce(ctx context.Context, s *store.Store, restarted func(string)) (int, error) {
	lost, err := s.LostWorkers(ctx, Stale)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, w := range lost {
		_, ended, err := endHeld(ctx, s, w, fmt.Sprintf("worker %s was lost (no heartbeat for %s) while running this run", w, Stale), restarted)
		n += ended
		if err != nil {
			return n, err
		}
		if err := s.RemoveWorker(ctx, w); err != nil {
			return n, err
		}
	}
	return n, nil
}

// Restarted ends, as terminated, the runs still held under worker's id
// when a worker process starts with it. An id is host:pid, and a
// container that restarts gets the same host name and, often, the same
// pid: those runs belonged to the process that died, whose heartbeat the
// new one would otherwise keep fresh.
func Restarted(ctx context.Context, s *store.Store, worker string) (int, error) {
	ids, n, err := endHeld(ctx, s, worker, fmt.Sprintf("worker %s restarted while running this run", worker), nil)
	if err != nil {
		return n, err
	}
	for _, id := range ids {
		if err := s.ReleaseRun(ctx, worker, id); err != nil {
			return n, err
		}
	}
	return n, nil
}

// endHeld ends (or restarts, by their policy) the runs worker holds with
// reason; it returns their ids and how many of them it ended or
// restarted (the others had ended already).
func endHeld(ctx context.Context, s *store.Store, worker, reason string, restarted func(string)) ([]string, int, error) {
	ids, err := s.HeldRuns(ctx, worker)
	if err != nil {
		return nil, 0, fmt.Errorf("liveness: runs of %s: %w", worker, err)
	}
	n := 0
	for _, id := range ids {
		r, err := s.GetRun(ctx, id)
		if run.ErrorCode(err) == run.ECodeNotFound {
			continue
		}
		if err != nil {
			return ids, n, err
		}
		e := run.Ending{Status: run.StatusTerminated, Reason: reason, Started: true}
		res, err := restart.End(ctx, s, r, worker, e, time.Now())
		if err != nil {
			return ids, n, err
		}
		switch {
		case res.Next != nil:
			n++
			slog.Warn("run restarting: "+reason, "run_id", id, "worker", worker, "attempt", r.AttemptNo()+1,
				"next_attempt_in", res.Next.Delay())
			if restarted != nil {
				restarted(restart.Cause(e))
			}
		case res.Applied:
			n++
			slog.Warn("run "+string(res.Change.Status)+": "+res.Change.Error, "run_id", id, "worker", worker)
		}
	}
	return ids, n, nil
}
