package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/ztrade/pyrunner/pkg/auth"
	"github.com/ztrade/pyrunner/pkg/research"
	"github.com/ztrade/pyrunner/pkg/run"
	"github.com/ztrade/pyrunner/pkg/schedule"
	"github.com/ztrade/pyrunner/pkg/store"
	"github.com/ztrade/pyrunner/pkg/wire"
)

// Schedules: /v1/schedules keeps cron specs that submit a run at each
// firing (package schedule). Every API replica runs fireSchedules; a
// firing is named by its schedule and time, so that it is submitted once.

// scheduleScope is the scope that may change a schedule of kind.
func scheduleScope(kind string) string {
	if kind == string(run.KindResearch) {
		return auth.ScopeResearchRun
	}
	return auth.ScopeScriptsRun
}

// allowed checks that the request may use scope (the route's middleware
// admitted it for some scope: a schedule's kind says which it needs).
func (s *server) allowed(c echo.Context, scope string) error {
	if s.open(scope) {
		return nil
	}
	p, _ := c.Get(principalKey).(auth.Principal)
	if !p.Allows(scope) {
		return run.Errorf(run.ECodeForbidden, "Insufficient scopes: a %s schedule needs %s", map[string]string{
			auth.ScopeResearchRun: "research", auth.ScopeScriptsRun: "script"}[scope], scope)
	}
	return nil
}

// changeable reads the schedule of the request's path, which the request
// must have the scope to change.
func (s *server) changeable(c echo.Context) (*schedule.Schedule, error) {
	sc, err := s.store.GetSchedule(c.Request().Context(), c.Param("id"))
	if err != nil {
		return nil, err
	}
	if err := s.allowed(c, scheduleScope(sc.Kind)); err != nil {
		return nil, err
	}
	return sc, nil
}

// scheduleOf is sc as the API shows it, with its last firing f.
func scheduleOf(sc *schedule.Schedule, f *store.Firing, now time.Time) wire.Schedule {
	out := wire.Schedule{ID: sc.ID, Name: sc.Name, Cron: sc.Cron, Timezone: sc.Timezone, Kind: sc.Kind, Request: sc.Request,
		Overlap: sc.Overlap, Paused: sc.Paused, Owner: strPtr(sc.Owner), CreatedAt: run.FormatTime(sc.CreatedAt),
		UpdatedAt: run.FormatTime(sc.UpdatedAt)}
	if !sc.Paused {
		out.NextFireAt = run.TimePtr(sc.Next(now))
	}
	if f != nil {
		out.LastFireAt, out.LastRunID = run.TimePtr(f.At), strPtr(f.RunID)
		out.LastResult, out.LastDetail = strPtr(f.Result), strPtr(f.Detail)
	}
	return out
}

// listSchedules is GET /v1/schedules.
func (s *server) listSchedules(c echo.Context) error {
	ctx := c.Request().Context()
	list, err := s.store.Schedules(ctx)
	if err != nil {
		return err
	}
	fired, err := s.store.Firings(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	out := make([]wire.Schedule, 0, len(list))
	for _, sc := range list {
		var f *store.Firing
		if v, ok := fired[sc.ID]; ok {
			f = &v
		}
		out = append(out, scheduleOf(sc, f, now))
	}
	return c.JSON(http.StatusOK, map[string]any{"count": len(out), "schedules": out})
}

// getSchedule is GET /v1/schedules/{id}.
func (s *server) getSchedule(c echo.Context) error {
	sc, err := s.store.GetSchedule(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	return s.answerSchedule(c, http.StatusOK, sc)
}

// answerSchedule answers with sc and its last firing.
func (s *server) answerSchedule(c echo.Context, status int, sc *schedule.Schedule) error {
	fired, err := s.store.Firings(c.Request().Context())
	if err != nil {
		return err
	}
	var f *store.Firing
	if v, ok := fired[sc.ID]; ok {
		f = &v
	}
	return c.JSON(status, scheduleOf(sc, f, time.Now()))
}

// createSchedule is POST /v1/schedules.
func (s *server) createSchedule(c echo.Context) error {
	var req wire.ScheduleRequest
	if err := json.NewDecoder(c.Request().Body).Decode(&req); err != nil {
		return run.Errorf(run.ECodeInvalid, "invalid JSON body: %v", err)
	}
	now := time.Now()
	sc := &schedule.Schedule{ID: uuid.NewString(), Owner: owner(c), CreatedAt: now, UpdatedAt: now}
	if err := s.applySchedule(c, sc, req); err != nil {
		return err
	}
	if err := s.store.SaveSchedule(c.Request().Context(), sc); err != nil {
		return err
	}
	audit(c, "schedule created", "schedule_id", sc.ID, "name", sc.Name, "cron", sc.Cron, "kind", sc.Kind)
	return s.answerSchedule(c, http.StatusCreated, sc)
}

// patchSchedule is PATCH /v1/schedules/{id}: the fields given change.
func (s *server) patchSchedule(c echo.Context) error {
	var req wire.ScheduleRequest
	if err := json.NewDecoder(c.Request().Body).Decode(&req); err != nil {
		return run.Errorf(run.ECodeInvalid, "invalid JSON body: %v", err)
	}
	sc, err := s.changeable(c)
	if err != nil {
		return err
	}
	sc.UpdatedAt = time.Now()
	if err := s.applySchedule(c, sc, req); err != nil {
		return err
	}
	if err := s.store.SaveSchedule(c.Request().Context(), sc); err != nil {
		return err
	}
	audit(c, "schedule changed", "schedule_id", sc.ID, "name", sc.Name, "paused", sc.Paused)
	return s.answerSchedule(c, http.StatusOK, sc)
}

// applySchedule sets the fields req gives on sc and checks the result,
// its request included (as the submit path would, now).
func (s *server) applySchedule(c echo.Context, sc *schedule.Schedule, req wire.ScheduleRequest) error {
	set := func(dst *string, src *string) {
		if src != nil {
			*dst = *src
		}
	}
	set(&sc.Name, req.Name)
	set(&sc.Cron, req.Cron)
	set(&sc.Timezone, req.Timezone)
	set(&sc.Kind, req.Kind)
	set(&sc.Overlap, req.Overlap)
	if req.Paused != nil {
		sc.Paused = *req.Paused
	}
	if r := bytes.TrimSpace(req.Request); len(r) > 0 && !bytes.Equal(r, []byte("null")) {
		sc.Request = append(json.RawMessage{}, bytes.TrimSpace(req.Request)...)
	}
	if err := sc.Normalize(); err != nil {
		return err
	}
	if err := s.allowed(c, scheduleScope(sc.Kind)); err != nil {
		return err
	}
	return s.checkScheduled(sc)
}

// checkScheduled checks a schedule's request as its firings will submit it.
func (s *server) checkScheduled(sc *schedule.Schedule) error {
	prefix := func(err error) error {
		code := run.ErrorCode(err)
		if code == run.ECodeNotFound { // a script not found is the schedule's bad input
			code = run.ECodeInvalid
		}
		return run.Errorf(code, "request: %s", run.ErrorMessage(err))
	}
	if sc.Kind == string(run.KindResearch) {
		var req research.Request
		if err := json.Unmarshal(sc.Request, &req); err != nil {
			return run.Errorf(run.ECodeInvalid, "request: %v", err)
		}
		if _, err := req.Normalize(s.researchLimits(), time.Now()); err != nil {
			return prefix(err)
		}
		return nil
	}
	var req wire.ScriptRequest
	if err := json.Unmarshal(sc.Request, &req); err != nil {
		return run.Errorf(run.ECodeInvalid, "request: %v", err)
	}
	if req.TimeoutSec < 0 {
		return run.Errorf(run.ECodeInvalid, "request: timeout_sec must not be negative")
	}
	if req.Restart != nil {
		if err := req.Restart.Normalize(); err != nil {
			return prefix(err)
		}
	}
	if _, _, err := s.scripts.Resolve(req.Script); err != nil {
		return prefix(err)
	}
	if _, err := s.scripts.ResolveDir(req.Cwd); err != nil {
		return prefix(err)
	}
	return nil
}

// deleteSchedule is DELETE /v1/schedules/{id}.
func (s *server) deleteSchedule(c echo.Context) error {
	ctx := c.Request().Context()
	sc, err := s.changeable(c)
	if err != nil {
		return err
	}
	if _, err := s.store.DeleteSchedule(ctx, sc.ID); err != nil {
		return err
	}
	audit(c, "schedule deleted", "schedule_id", sc.ID, "name", sc.Name)
	return c.JSON(http.StatusOK, map[string]any{"id": sc.ID, "deleted": true})
}

// triggerSchedule is POST /v1/schedules/{id}/trigger: one firing now, by
// the schedule's rules (a paused schedule fires too: it was asked to).
func (s *server) triggerSchedule(c echo.Context) error {
	ctx := c.Request().Context()
	sc, err := s.changeable(c)
	if err != nil {
		return err
	}
	f := s.fire(ctx, sc, time.Now().Truncate(time.Millisecond))
	audit(c, "schedule triggered", "schedule_id", sc.ID, "result", f.Result, "run_id", f.RunID)
	status := http.StatusAccepted
	if f.Result == resultFailed {
		status = http.StatusServiceUnavailable
	}
	return c.JSON(status, map[string]any{"schedule_id": sc.ID, "result": f.Result, "run_id": strPtr(f.RunID), "detail": strPtr(f.Detail)})
}

// Firing results (pyrunner_schedule_firings_total{result}).
const (
	resultFired   = "fired"
	resultSkipped = "skipped"
	resultFailed  = "failed"
)

// schedulePoll is how often each API replica looks for due firings.
const schedulePoll = 250 * time.Millisecond

// fireSchedules fires every schedule when due, until ctx ends. Every
// replica does it: the firing's run id (schedule.FiringRunID) makes the
// second submission of a firing a no-op. A firing missed while no
// replica ran is not made up for.
func (s *server) fireSchedules(ctx context.Context) {
	t := time.NewTicker(schedulePoll)
	defer t.Stop()
	next := map[string]time.Time{} // by schedule id and version
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		list, err := s.store.Schedules(ctx)
		if err != nil {
			if ctx.Err() == nil {
				slog.Debug("could not read schedules", "err", err)
			}
			continue
		}
		now := time.Now()
		seen := map[string]bool{}
		for _, sc := range list {
			if sc.Paused {
				continue
			}
			key := sc.ID + "@" + sc.UpdatedAt.String()
			seen[key] = true
			at, ok := next[key]
			switch {
			case !ok:
				next[key] = sc.Next(now)
			case !now.Before(at):
				go s.fire(context.WithoutCancel(ctx), sc, at)
				next[key] = sc.Next(now)
			}
		}
		for k := range next {
			if !seen[k] {
				delete(next, k)
			}
		}
	}
}

// fire submits the run of sc's firing at at, unless another replica did,
// or overlap "skip" finds the schedule's last run still live. It records
// and returns what it did.
func (s *server) fire(ctx context.Context, sc *schedule.Schedule, at time.Time) store.Firing {
	id := schedule.FiringRunID(sc.ID, at)
	if _, err := s.store.GetRun(ctx, id); err == nil {
		return store.Firing{At: at, RunID: id, Result: resultFired} // another replica fired it
	}
	f := store.Firing{At: at, Result: resultFired, RunID: id}
	if sc.Overlap == schedule.OverlapSkip {
		if last, err := s.lastLiveRun(ctx, sc.ID); err != nil {
			f = store.Firing{At: at, Result: resultFailed, Detail: run.ErrorMessage(err)}
		} else if last == id {
			return f // another replica fired it meanwhile
		} else if last != "" {
			f = store.Firing{At: at, Result: resultSkipped, RunID: last, Detail: "run " + last + " of the last firing is still live (overlap: skip)"}
		}
	}
	if f.Result == resultFired {
		if err := s.submitFiring(ctx, sc, id); err != nil {
			if run.ErrorCode(err) == run.ECodeConflict && s.exists(ctx, id) {
				return f // another replica fired it
			}
			f = store.Firing{At: at, Result: resultFailed, Detail: run.ErrorMessage(err)}
		}
	}
	if err := s.store.SetFiring(ctx, sc.ID, f); err != nil {
		slog.Warn("could not record a schedule's firing", "schedule_id", sc.ID, "err", err)
	}
	if s.metrics != nil {
		s.metrics.Firings.WithLabelValues(f.Result).Inc()
	}
	lvl := slog.LevelInfo
	if f.Result == resultFailed {
		lvl = slog.LevelWarn
	}
	slog.Log(ctx, lvl, "schedule fired", "schedule_id", sc.ID, "name", sc.Name, "at", run.FormatTime(at), "result", f.Result,
		"run_id", f.RunID, "detail", f.Detail)
	return f
}

// exists reports whether run id has a record.
func (s *server) exists(ctx context.Context, id string) bool {
	_, err := s.store.GetRun(ctx, id)
	return err == nil
}

// lastLiveRun is the run of sc's last firing if it has not ended ("" if
// there is none).
func (s *server) lastLiveRun(ctx context.Context, scheduleID string) (string, error) {
	fired, err := s.store.Firings(ctx)
	if err != nil {
		return "", err
	}
	f, ok := fired[scheduleID]
	if !ok || f.RunID == "" {
		return "", nil
	}
	r, err := s.store.GetRun(ctx, f.RunID)
	switch {
	case run.ErrorCode(err) == run.ECodeNotFound:
		return "", nil
	case err != nil:
		return "", err
	case r.Status.Terminal():
		return "", nil
	}
	return r.ID, nil
}

// submitFiring submits sc's request as run id, through the submit path
// every run takes (admission control included).
func (s *server) submitFiring(ctx context.Context, sc *schedule.Schedule, id string) error {
	o := origin{id: id, scheduleID: sc.ID}
	if sc.Kind == string(run.KindResearch) {
		var req research.Request
		if err := json.Unmarshal(sc.Request, &req); err != nil {
			return run.Errorf(run.ECodeInvalid, "request: %v", err)
		}
		_, _, err := s.newResearchRun(ctx, req, sc.Owner, o)
		return err
	}
	var req wire.ScriptRequest
	if err := json.Unmarshal(sc.Request, &req); err != nil {
		return run.Errorf(run.ECodeInvalid, "request: %v", err)
	}
	_, err := s.newScriptRun(ctx, req, sc.Owner, o)
	return err
}
