package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/ztrade/pyrunner/pkg/queue"
	"github.com/ztrade/pyrunner/pkg/research"
	"github.com/ztrade/pyrunner/pkg/run"
	"github.com/ztrade/pyrunner/pkg/store"
	"github.com/ztrade/pyrunner/pkg/wire"
)

// queueAllowance is how long past its own time limit a synchronous call
// waits for a run, to cover time spent in queue and loading data.
const queueAllowance = 30 * time.Second

// researchRun is POST /v1/research/run: validate, record, queue, and (by
// default) wait for the result.
func (s *server) researchRun(c echo.Context) error {
	var req research.Request
	dec := json.NewDecoder(c.Request().Body)
	if err := dec.Decode(&req); err != nil {
		return run.Errorf(run.ECodeInvalid, "invalid JSON body: %v", err)
	}
	wait := true
	if req.Wait != nil {
		wait = *req.Wait
	}
	if q := c.QueryParam("wait"); q != "" {
		b, err := strconv.ParseBool(q)
		if err != nil {
			return run.Errorf(run.ECodeInvalid, "wait must be true or false, not %q", q)
		}
		wait = b
	}
	r, timeout, err := s.newResearchRun(c.Request().Context(), req, owner(c), origin{})
	if err != nil {
		return err
	}
	if !wait {
		return c.JSON(http.StatusAccepted, map[string]string{"id": r.ID, "status": string(r.Status), "poll": pollURL(r.ID)})
	}
	return s.answerResearch(c, r.ID, s.waitCap(timeout+queueAllowance), false)
}

// origin is where a run came from, beyond its request: a schedule's
// firing names its run (schedule.FiringRunID) and itself.
type origin struct {
	id, scheduleID string
}

// newResearchRun validates, records and queues one research run. It
// returns the run and its time limit (the request's, normalized).
func (s *server) newResearchRun(ctx context.Context, req research.Request, owner string, o origin) (*run.Run, time.Duration, error) {
	now := time.Now()
	warnings, err := req.Normalize(s.researchLimits(), now)
	if err != nil {
		return nil, 0, err
	}
	req.Wait = nil
	stored, _ := json.Marshal(research.Stored{Request: req, Warnings: warnings})
	r := &run.Run{ID: o.id, Kind: run.KindResearch, Status: run.StatusQueued, CreatedAt: now, Request: string(stored), Owner: owner,
		ScheduleID: o.scheduleID}
	if r.ID == "" {
		r.ID = uuid.NewString()
	}
	timeout := time.Duration(req.TimeoutSec) * time.Second
	err = s.submit(ctx, r, queue.QueueResearch, timeout+time.Minute,
		func(ctx context.Context) error {
			err := s.store.CreateRun(ctx, r)
			if err != nil && run.ErrorCode(err) != run.ECodeConflict {
				return run.Errorf(run.ECodeUnavailable, "cannot record the run: redis unavailable")
			}
			return err
		})
	if err != nil {
		return nil, 0, err
	}
	return r, timeout, nil
}

// researchLimits are the API's limits on research requests.
func (s *server) researchLimits() research.Limits {
	return research.Limits{MaxCodeBytes: s.cfg.MaxCodeBytes, DefaultTimeoutSec: s.cfg.DefaultTimeoutSec,
		MaxTimeoutSec: s.cfg.MaxTimeoutSec, MaxRows: s.cfg.MaxRows}
}

// researchGet is GET /v1/research/runs/{id}[?wait=N].
func (s *server) researchGet(c echo.Context) error {
	var d time.Duration
	if q := c.QueryParam("wait"); q != "" {
		n, err := strconv.ParseFloat(q, 64)
		if err != nil || n < 0 {
			return run.Errorf(run.ECodeInvalid, "wait must be a number of seconds, not %q", q)
		}
		d = s.waitCap(time.Duration(n * float64(time.Second)))
	}
	if _, err := s.researchRecord(c); err != nil {
		return err
	}
	return s.answerResearch(c, c.Param("id"), d, true)
}

// researchCancel is POST /v1/research/runs/{id}/cancel: a queued run is
// dropped from the queue, a running one is killed; both end "stopped".
func (s *server) researchCancel(c echo.Context) error {
	r, err := s.researchRecord(c)
	if err != nil {
		return err
	}
	outcome, err := s.store.RequestStop(c.Request().Context(), r.ID)
	if err != nil {
		return err
	}
	if outcome == store.StopQueued {
		s.queue.Drop(queue.QueueResearch, r.ID)
	}
	return s.answerResearch(c, r.ID, 10*time.Second, false)
}

// researchRecord reads the research run named in the path.
func (s *server) researchRecord(c echo.Context) (*run.Run, error) {
	id := c.Param("id")
	if _, err := uuid.Parse(id); err != nil {
		return nil, run.Errorf(run.ECodeNotFound, "run %q not found", id)
	}
	r, err := s.store.GetRun(c.Request().Context(), id)
	if err != nil {
		return nil, err
	}
	if r.Kind != run.KindResearch {
		return nil, run.Errorf(run.ECodeNotFound, "research run %s not found", id)
	}
	return r, nil
}

// waitCap bounds a wait by PYRUNNER_MAX_WAIT_SEC.
func (s *server) waitCap(d time.Duration) time.Duration {
	return min(d, time.Duration(s.cfg.MaxWaitSec)*time.Second)
}

// answerResearch waits up to d for the run to end, then answers 200 with
// the finished body, or 202 with the run so far.
func (s *server) answerResearch(c echo.Context, id string, d time.Duration, withRequest bool) error {
	// The run and its result are read together: once the run has ended,
	// the look that sees it is the only read.
	var b []byte
	r, err := s.waitRead(c.Request().Context(), id, d, func(r *run.Run) bool { return r.Status.Terminal() },
		func(ctx context.Context, id string) (r *run.Run, err error) {
			r, b, err = s.store.GetRunWithResult(ctx, id)
			return r, err
		})
	if err != nil {
		return err
	}
	var req *wire.ResearchRequest
	if withRequest { // GET shows what was asked (the dashboard shows the code)
		var st research.Stored
		if json.Unmarshal([]byte(r.Request), &st) == nil {
			req = &st.Request.ResearchRequest
		}
	}
	if !r.Status.Terminal() {
		resp := research.NewResponse(r, nil, pollURL(id))
		resp.Request = req
		return c.JSON(http.StatusAccepted, resp)
	}
	res := &wire.ResearchResult{}
	if b == nil || json.Unmarshal(b, res) != nil {
		res = research.Failure(r.Error, nil) // ended by a reaper: no result was written
	}
	resp := research.NewResponse(r, res, "")
	resp.Request = req
	return c.JSON(http.StatusOK, resp)
}

// waitFor returns the run once it has ended or d has passed, whichever is
// first. It wakes on the completion event, never by polling.
func (s *server) waitFor(ctx context.Context, id string, d time.Duration) (*run.Run, error) {
	return s.waitUntil(ctx, id, d, func(r *run.Run) bool { return r.Status.Terminal() })
}

// waitUntil returns the run once done(run) holds or d has passed. It
// wakes on the run's events (it started, it ended), never by polling.
func (s *server) waitUntil(ctx context.Context, id string, d time.Duration, done func(*run.Run) bool) (*run.Run, error) {
	return s.waitRead(ctx, id, d, done, s.store.GetRun)
}

// waitRead is waitUntil, looking at the run with read. A read that finds
// Redis unavailable (restarting, failing over) is tried again until d has
// passed; then the error stands (a 503).
func (s *server) waitRead(ctx context.Context, id string, d time.Duration, done func(*run.Run) bool,
	read func(context.Context, string) (*run.Run, error)) (*run.Run, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	retry := 100 * time.Millisecond
	for {
		woken, unregister := s.waiter.Register(id)
		r, err := read(context.WithoutCancel(ctx), id)
		var again <-chan time.Time
		switch {
		case store.IsUnavailable(err) && d > 0:
			again = time.After(retry)
			retry = min(2*retry, time.Second)
		case err != nil || done(r) || d <= 0:
			unregister()
			return r, err
		}
		select {
		case <-woken: // an event of the run, or a subscription gap: look again
			unregister()
		case <-again:
			unregister()
		case <-t.C:
			unregister()
			return read(context.WithoutCancel(ctx), id)
		case <-ctx.Done():
			unregister()
			return nil, fmt.Errorf("client went away: %w", ctx.Err())
		}
	}
}

func pollURL(id string) string { return "/v1/research/runs/" + id }
