// Package restart ends an attempt of a run: it asks the run's restart
// policy (run.RestartPolicy) whether another attempt follows, and either
// moves the run to restarting (store.Restart) or ends it. The worker that
// saw a script exit and a reaper that found a worker lost both end
// attempts here, so the rule is the same whoever applies it.
package restart

import (
	"context"
	"encoding/json"
	"time"

	"github.com/ztrade/pyrunner/pkg/run"
	"github.com/ztrade/pyrunner/pkg/store"
	"github.com/ztrade/pyrunner/pkg/wire"
)

// Result is what End did.
type Result struct {
	// Next is the restart recorded (nil when the run ended).
	Next *run.Restart
	// Change is what was written: the run's end, or its move to
	// restarting.
	Change *run.Run
	// Applied is false when the record was no longer worker's attempt
	// (it had ended, or another attempt began): nothing was written.
	Applied bool
}

// PolicyOf is the restart policy in a script run's request (nil for none
// and for research runs, which are never restarted).
func PolicyOf(r *run.Run) *run.RestartPolicy {
	if r.Kind != run.KindScript {
		return nil
	}
	var req wire.ScriptRequest
	if json.Unmarshal([]byte(r.Request), &req) != nil || req.Restart == nil {
		return nil
	}
	p := *req.Restart
	if p.Normalize() != nil {
		return nil
	}
	return &p
}

// End ends the attempt of r (as worker's copy or the record has it)
// that worker ran, as e says, at now.
func End(ctx context.Context, s *store.Store, r *run.Run, worker string, e run.Ending, now time.Time) (Result, error) {
	attempt := r.AttemptNo()
	next, gaveUp := PolicyOf(r).NextAttempt(attempt, r.Restarts, e, now)
	if next != nil {
		change := &run.Run{Attempt: attempt + 1, Restarts: append(append([]run.Restart{}, r.Restarts...), *next),
			RestartAt: now.Add(next.Delay()), ReturnCode: e.ReturnCode, Error: e.Reason}
		out, err := s.Restart(ctx, r.ID, worker, attempt, change)
		if err != nil {
			return Result{}, err
		}
		switch out {
		case store.Restarting:
			change.Status = run.StatusRestarting
			return Result{Next: next, Change: change, Applied: true}, nil
		case store.RestartGone:
			return Result{}, nil
		}
		// a stop was requested: the run ends as the attempt did
	}
	change := &run.Run{Status: e.Status, FinishedAt: now, ReturnCode: e.ReturnCode, Error: e.Reason}
	if gaveUp != "" {
		change.Status, change.Error = run.StatusFailed, gaveUp
	}
	ok, err := s.UpdateHeld(ctx, r.ID, worker, attempt, change)
	return Result{Change: change, Applied: ok}, err
}

// Cause is the kind of ending that led to a restart, for metrics:
// exit_code, signal, exit_zero (policy always) or worker_lost.
func Cause(e run.Ending) string {
	switch {
	case e.Status == run.StatusSucceeded:
		return "exit_zero"
	case e.Status == run.StatusTerminated:
		return "worker_lost"
	case e.ReturnCode != nil && *e.ReturnCode < 0:
		return "signal"
	}
	return "exit_code"
}
