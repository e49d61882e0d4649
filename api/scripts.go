package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/ztrade/pyrunner/pkg/queue"
	"github.com/ztrade/pyrunner/pkg/run"
	"github.com/ztrade/pyrunner/pkg/store"
	"github.com/ztrade/pyrunner/pkg/utf8cut"
	"github.com/ztrade/pyrunner/pkg/wire"
)

// strPtr is s, or nil (JSON null) when it is empty.
func strPtr(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// listScripts is GET /v1/scripts.
func (s *server) listScripts(c echo.Context) error {
	list, err := s.scripts.Scripts()
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"root": s.scripts.Root(), "count": len(list), "scripts": list})
}

// rescanScripts is POST /v1/scripts/rescan.
func (s *server) rescanScripts(c echo.Context) error {
	list, err := s.scripts.Rescan()
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"count": len(list)})
}

// startRun is POST /v1/runs.
func (s *server) startRun(c echo.Context) error {
	var req wire.ScriptRequest
	if err := json.NewDecoder(c.Request().Body).Decode(&req); err != nil {
		return run.Errorf(run.ECodeInvalid, "invalid JSON body: %v", err)
	}
	ctx := c.Request().Context()
	r, err := s.newScriptRun(ctx, req, owner(c), origin{})
	if err != nil {
		return err
	}
	audit(c, "script run started", "run_id", r.ID, "script", r.Script)
	// Answer with the started run, as quant-script-api does: wait (on the
	// run's events, not polling) until a worker has it running or it has
	// ended, up to SCRIPT_START_WAIT_SECONDS; "queued" only past that.
	wait := time.Duration(s.cfg.StartWaitSeconds * float64(time.Second))
	if started, err := s.waitUntil(ctx, r.ID, wait, startedOrEnded); err == nil {
		r = started
	}
	return c.JSON(http.StatusOK, wire.RunOf(r))
}

// startedOrEnded is true once a run is past queued and starting.
func startedOrEnded(r *run.Run) bool {
	return r.Status != run.StatusQueued && r.Status != run.StatusStarting
}

// newScriptRun validates, records and queues one script run.
func (s *server) newScriptRun(ctx context.Context, req wire.ScriptRequest, owner string, o origin) (*run.Run, error) {
	if req.TimeoutSec < 0 {
		return nil, run.Errorf(run.ECodeInvalid, "timeout_sec must not be negative")
	}
	if req.Restart != nil {
		if err := req.Restart.Normalize(); err != nil {
			return nil, err
		}
	}
	rel, abs, err := s.scripts.Resolve(req.Script)
	if err != nil {
		return nil, err
	}
	if _, err := s.scripts.ResolveDir(req.Cwd); err != nil {
		return nil, err
	}
	req.Script = rel
	if req.Args == nil {
		req.Args = []string{}
	}
	b, _ := json.Marshal(req)
	py := s.cfg.Python
	if py == "" {
		py = "python3"
	}
	r := &run.Run{ID: o.id, Kind: run.KindScript, Status: run.StatusQueued, CreatedAt: time.Now(),
		Script: rel, Argv: append([]string{py, "-u", abs}, req.Args...), Request: string(b), Owner: owner, ScheduleID: o.scheduleID}
	if r.ID == "" {
		r.ID = uuid.NewString()
	}
	err = s.submit(ctx, r, queue.QueueScripts, time.Duration(req.TimeoutSec)*time.Second,
		func(ctx context.Context) error { return s.store.CreateScriptRun(ctx, r, req.Duplicate) })
	if err != nil {
		return nil, err
	}
	return r, nil
}

// listRuns is GET /v1/runs.
func (s *server) listRuns(c echo.Context) error {
	f := store.Filter{Status: c.QueryParam("status"), Script: c.QueryParam("script"), Kind: c.QueryParam("kind"),
		Cursor: c.QueryParam("cursor"), Limit: 100}
	if v := c.QueryParam("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return run.Errorf(run.ECodeInvalid, "limit must be a number from 1 to 1000")
		}
		f.Limit = n
	}
	if f.Status != "" && !run.Status(f.Status).Valid() {
		return run.Errorf(run.ECodeInvalid, "unknown status %q", f.Status)
	}
	if f.Kind != "" && f.Kind != string(run.KindResearch) && f.Kind != string(run.KindScript) {
		return run.Errorf(run.ECodeInvalid, "kind must be research or script")
	}
	rs, next, err := s.store.ListRuns(c.Request().Context(), f)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"count": len(rs), "runs": wire.RunsOf(rs), "next_cursor": strPtr(next)})
}

// activeRuns is GET /v1/runs/active.
func (s *server) activeRuns(c echo.Context) error {
	rs, err := s.store.ActiveRuns(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"count": len(rs), "runs": wire.RunsOf(rs)})
}

// startAll is POST /v1/runs/all: every scanned script, skipping those
// already running; an optional body {"restart": {…}} gives them all that
// restart policy.
func (s *server) startAll(c echo.Context) error {
	var body struct {
		Restart *run.RestartPolicy `json:"restart"`
	}
	if err := json.NewDecoder(c.Request().Body).Decode(&body); err != nil && !errors.Is(err, io.EOF) {
		return run.Errorf(run.ECodeInvalid, "invalid JSON body: %v", err)
	}
	if body.Restart != nil {
		if err := body.Restart.Normalize(); err != nil {
			return err
		}
	}
	list, err := s.scripts.Scripts()
	if err != nil {
		return err
	}
	results := []map[string]any{}
	for _, sc := range list {
		r, err := s.newScriptRun(c.Request().Context(), wire.ScriptRequest{Script: sc.Path, Restart: body.Restart}, owner(c), origin{})
		switch {
		case err == nil:
			audit(c, "script run started (runs/all)", "run_id", r.ID, "script", r.Script)
			results = append(results, map[string]any{"script": sc.Path, "status": "started", "run_id": r.ID})
		case run.ErrorCode(err) == run.ECodeConflict:
			results = append(results, map[string]any{"script": sc.Path, "status": "skipped", "reason": "Already running"})
		default:
			results = append(results, map[string]any{"script": sc.Path, "status": "error", "error": run.ErrorMessage(err)})
		}
	}
	return c.JSON(http.StatusOK, map[string]any{"count": len(results), "results": results})
}

// stopAll is POST /v1/runs/stop_all: every active script run.
func (s *server) stopAll(c echo.Context) error {
	ctx := c.Request().Context()
	rs, err := s.store.ActiveRuns(ctx)
	if err != nil {
		return err
	}
	results := []map[string]any{}
	var ids []string
	for _, r := range rs {
		if r.Kind != run.KindScript {
			continue
		}
		if _, err := s.stop(ctx, r); err != nil {
			return err
		}
		audit(c, "script run stopped (stop_all)", "run_id", r.ID, "script", r.Script)
		ids = append(ids, r.ID)
	}
	for _, id := range ids {
		r, err := s.waitFor(ctx, id, s.stopWait())
		if err != nil {
			return err
		}
		results = append(results, map[string]any{"run_id": id, "status": string(r.Status)})
	}
	return c.JSON(http.StatusOK, map[string]any{"count": len(results), "results": results})
}

// stopWait is how long a stop call waits for the run to end: the grace
// between SIGTERM and SIGKILL, and a little more.
func (s *server) stopWait() time.Duration {
	return time.Duration(s.cfg.TerminateTimeoutSeconds)*time.Second + 3*time.Second
}

// stop asks for a run to end, dropping it from the queue if it had not started.
func (s *server) stop(ctx context.Context, r *run.Run) (store.StopOutcome, error) {
	out, err := s.store.RequestStop(ctx, r.ID)
	if err == nil && out == store.StopQueued {
		q := queue.QueueScripts
		if r.Kind == run.KindResearch {
			q = queue.QueueResearch
		}
		s.queue.Drop(q, r.ID)
	}
	return out, err
}

// scriptRecord reads the run named in the path.
func (s *server) scriptRecord(c echo.Context) (*run.Run, error) {
	id := c.Param("run_id")
	if _, err := uuid.Parse(id); err != nil {
		return nil, run.Errorf(run.ECodeNotFound, "run %q not found", id)
	}
	return s.store.GetRun(c.Request().Context(), id)
}

// getRun is GET /v1/runs/{run_id}.
func (s *server) getRun(c echo.Context) error {
	r, err := s.scriptRecord(c)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, wire.RunOf(r))
}

// stopRun is POST /v1/runs/{run_id}/stop: SIGTERM to the script's process
// group on whichever worker runs it, SIGKILL after the grace. It answers
// once the run has ended, or with "stopping" if the grace outlasts the call.
func (s *server) stopRun(c echo.Context) error {
	r, err := s.scriptRecord(c)
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	if _, err := s.stop(ctx, r); err != nil {
		return err
	}
	audit(c, "run stopped", "run_id", r.ID, "kind", r.Kind)
	r, err = s.waitFor(ctx, r.ID, s.stopWait())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, wire.RunOf(r))
}

// runLogs is GET /v1/runs/{run_id}/logs.
func (s *server) runLogs(c echo.Context) error {
	r, err := s.scriptRecord(c)
	if err != nil {
		return err
	}
	stream := c.QueryParam("stream")
	if stream == "" {
		stream = "stdout"
	}
	var streams []string
	switch stream {
	case "stdout", "stderr":
		streams = []string{stream}
	case "both":
		streams = []string{"stdout", "stderr"}
	default:
		return run.Errorf(run.ECodeInvalid, "stream must be stdout, stderr or both")
	}
	tail := 65536
	if v := c.QueryParam("tail_bytes"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return run.Errorf(run.ECodeInvalid, "tail_bytes must be a non-negative number")
		}
		tail = n
	}
	asked := tail
	if tail == 0 || tail > s.cfg.LogTailBytes {
		tail = s.cfg.LogTailBytes // 0 is the whole kept log, as quant-script-api
	}
	if b, _ := strconv.ParseBool(c.QueryParam("follow")); b {
		return s.followLogs(c, r.ID, streams, tail)
	}
	body := map[string]any{"run_id": r.ID, "stream": stream, "tail_bytes": asked}
	for _, st := range streams {
		data, _, err := s.store.ReadLog(c.Request().Context(), r.ID, st)
		if err != nil {
			return err
		}
		body[st] = string(utf8cut.Tail(data, tail))
	}
	return c.JSON(http.StatusOK, body)
}

// followLogs streams a run's output as Server-Sent Events: first the tail,
// then new output as the worker writes it (woken by pub/sub), until the
// run ends. Each event is `event: stdout|stderr` with the text as data; a
// last `event: end` carries the run record.
func (s *server) followLogs(c echo.Context, id string, streams []string, tail int) error {
	ctx := c.Request().Context()
	w := c.Response()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriter(w)
	sent := map[string]int64{} // absolute offset sent so far, per stream
	partial := map[string][]byte{}
	first := true
	for {
		// Register for both events before reading, so none is missed.
		wake, unregisterLog := s.logWaiter.Register(id)
		done, unregisterDone := s.waiter.Register(id)
		unregister := func() { unregisterLog(); unregisterDone() }
		r, err := s.store.GetRun(ctx, id)
		if err != nil {
			unregister()
			return nil
		}
		for _, st := range streams {
			data, off, err := s.store.ReadLog(ctx, id, st)
			if err != nil {
				unregister()
				return nil
			}
			var chunk []byte
			switch {
			case first:
				chunk = utf8cut.Tail(data, tail)
			case sent[st] < off: // fell behind the kept tail: skip ahead
				chunk = data
			default:
				chunk = data[min(int64(len(data)), sent[st]-off):]
			}
			sent[st] = off + int64(len(data))
			chunk = append(partial[st], chunk...)
			whole := len(utf8cut.TrimPartial(chunk))
			partial[st] = append([]byte(nil), chunk[whole:]...)
			if whole > 0 {
				writeEvent(bw, st, chunk[:whole])
			}
		}
		first = false
		if r.Status.Terminal() {
			unregister()
			b, _ := json.Marshal(wire.RunOf(r))
			fmt.Fprintf(bw, "event: end\ndata: %s\n\n", b)
			if err := bw.Flush(); err != nil {
				return nil // the reader has gone: nothing to tell it
			}
			w.Flush()
			return nil
		}
		if err := bw.Flush(); err != nil {
			return nil // the reader has gone
		}
		w.Flush()
		select {
		case <-wake:
		case <-done:
		case <-ctx.Done():
			unregister()
			return nil
		case <-time.After(15 * time.Second):
			fmt.Fprint(bw, ": keep-alive\n\n") // hold proxies open; not a poll
		}
		unregister()
	}
}

// writeEvent writes one SSE event; each line of text is a data line.
func writeEvent(w *bufio.Writer, event string, text []byte) {
	fmt.Fprintf(w, "event: %s\n", event)
	start := 0
	for i, b := range text {
		if b == '\n' {
			fmt.Fprintf(w, "data: %s\n", text[start:i])
			start = i + 1
		}
	}
	if start < len(text) {
		fmt.Fprintf(w, "data: %s\n", text[start:])
	} else {
		fmt.Fprint(w, "data: \n")
	}
	fmt.Fprint(w, "\n")
}
