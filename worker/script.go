package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ztrade/pyrunner/pkg/config"
	"github.com/ztrade/pyrunner/pkg/liveness"
	"github.com/ztrade/pyrunner/pkg/proc"
	"github.com/ztrade/pyrunner/pkg/restart"
	"github.com/ztrade/pyrunner/pkg/run"
	"github.com/ztrade/pyrunner/pkg/scriptrun"
	"github.com/ztrade/pyrunner/pkg/wire"
)

// handleScript runs one script run, claimed by this worker (see
// dispatcher.start), from its record to its end. Output is streamed into
// Redis as it comes and written in full under SCRIPT_LOGS_DIR.
func (w *worker) handleScript(ctx context.Context, h *held) error {
	bg := context.WithoutCancel(ctx)
	r := h.record()
	id := r.ID
	var started atomic.Bool // the script's process ran
	end := func(st run.Status, code *int, msg string) error {
		return w.endAttempt(bg, h, run.Ending{Status: st, ReturnCode: code, Reason: msg, Started: started.Load()})
	}
	var req wire.ScriptRequest
	if err := json.Unmarshal([]byte(r.Request), &req); err != nil {
		return end(run.StatusFailed, nil, "bad request in run record: "+err.Error())
	}
	_, abs, err := w.scripts.Resolve(req.Script)
	if err != nil {
		return end(run.StatusFailed, nil, fmt.Sprintf("cannot start on worker %s: %s", w.id, run.ErrorMessage(err)))
	}
	dir, err := w.scripts.ResolveDir(req.Cwd)
	if err != nil {
		return end(run.StatusFailed, nil, fmt.Sprintf("cannot start on worker %s: %s", w.id, run.ErrorMessage(err)))
	}
	env, err := scriptEnv(w.cfg.EnvPassthrough, w.cfg.EnvFile, req.Env)
	if err != nil {
		return end(run.StatusFailed, nil, fmt.Sprintf("cannot start on worker %s: %v", w.id, err))
	}
	logs, _ := filepath.Abs(w.cfg.LogsDir)
	spec := scriptrun.Spec{
		Python: w.python, Script: abs, Args: req.Args, Dir: dir, Env: env,
		Keeper: w.keeper, Lease: w.lease,
		StdoutPath: filepath.Join(logs, id+".stdout.log"), StderrPath: filepath.Join(logs, id+".stderr.log"),
		Grace: time.Duration(w.cfg.TerminateTimeoutSeconds) * time.Second, Timeout: time.Duration(req.TimeoutSec) * time.Second,
		FlushEvery: 100 * time.Millisecond,
		OnOutput: func(stream string, data []byte) {
			if err := w.store.AppendLog(bg, id, stream, data, w.cfg.LogTailBytes); err != nil {
				slog.Warn("could not stream script output", "run_id", id, "err", err)
			}
		},
	}
	if r.AttemptNo() > 1 {
		w.announceAttempt(bg, &r, spec.StdoutPath)
	}
	spec.OnStart = func(pid int) {
		started.Store(true)
		if _, err := w.update(bg, h, &run.Run{Status: run.StatusRunning, PID: pid, Argv: spec.Argv(),
			StdoutPath: spec.StdoutPath, StderrPath: spec.StderrPath}); err != nil {
			slog.Warn("could not record a script as running", "run_id", id, "err", err)
		}
	}
	res, err := scriptrun.Run(ctx, spec)
	if err != nil {
		return end(run.StatusFailed, nil, err.Error())
	}
	code := res.ExitCode
	st, msg := w.scriptOutcome(ctx, id, res, req.TimeoutSec)
	return end(st, &code, msg)
}

// endAttempt writes how an attempt of script run h ended: the run's end,
// or, by its restart policy, its move to restarting. It is retried
// through a Redis restart, and written again on a new primary: a run
// must not stay "running" after its process has gone.
func (w *worker) endAttempt(ctx context.Context, h *held, e run.Ending) error {
	h.ending.Store(true)
	rec := h.record()
	var res restart.Result
	err := w.store.RetryReplicated(ctx, redisWrite(), func() (err error) {
		res, err = restart.End(ctx, w.store, &rec, w.id, e, time.Now())
		return err
	})
	if res.Applied {
		h.note(res.Change)
	}
	if res.Next != nil {
		slog.Warn("script run restarting", "run_id", rec.ID, "script", rec.Script, "attempt", rec.AttemptNo(), "reason", e.Reason,
			"next_attempt_in", res.Next.Delay())
	} else {
		slog.Info("script run finished", "run_id", rec.ID, "script", rec.Script, "status", e.Status, "error", e.Reason)
	}
	if w.metrics != nil {
		if res.Next != nil {
			w.metrics.Restarts.WithLabelValues(restart.Cause(e)).Inc()
		} else {
			w.metrics.Finished.WithLabelValues(string(run.KindScript), string(e.Status)).Inc()
		}
		if !rec.StartedAt.IsZero() {
			w.metrics.Exec.WithLabelValues(string(run.KindScript)).Observe(time.Since(rec.StartedAt).Seconds())
		}
	}
	return err
}

// announceAttempt writes, before a restarted run's next attempt starts, a
// line saying which attempt starts and why, to its output as Redis keeps
// it and to its full log file (which the attempt appends to).
func (w *worker) announceAttempt(ctx context.Context, r *run.Run, stdoutPath string) {
	why := "the previous attempt ended"
	if n := len(r.Restarts); n > 0 {
		why = r.Restarts[n-1].Reason
	}
	line := []byte(fmt.Sprintf("[pyrunner] attempt %d starts on worker %s; attempt %d ended: %s\n", r.AttemptNo(), w.id, r.AttemptNo()-1, why))
	if err := w.store.AppendLog(ctx, r.ID, "stdout", line, w.cfg.LogTailBytes); err != nil {
		slog.Warn("could not log a run's next attempt", "run_id", r.ID, "err", err)
	}
	if err := os.MkdirAll(filepath.Dir(stdoutPath), 0o755); err == nil {
		if f, err := os.OpenFile(stdoutPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
			_, _ = f.Write(line) // the Redis tail has it; the file is the long record
			_ = f.Close()
		}
	}
}

// scriptOutcome is the status and message of a script that ran and
// ended as res says (ctx was its run's context).
func (w *worker) scriptOutcome(ctx context.Context, id string, res scriptrun.Result, timeoutSec int) (run.Status, string) {
	code := res.ExitCode
	switch {
	case res.Fenced:
		return run.StatusTerminated, fmt.Sprintf("terminated: its keeper killed it: worker %s did not renew its lease within %s (frozen, cut off from redis, or dead)",
			w.id, liveness.Fence)
	case res.Stopped && errors.Is(context.Cause(ctx), scriptrun.ErrKill):
		return run.StatusTerminated, fmt.Sprintf("terminated: worker %s killed it: %v", w.id, context.Cause(ctx))
	case res.Stopped:
		how := "stopped by request"
		if res.Killed {
			how += fmt.Sprintf(" (killed after the %ds grace)", w.cfg.TerminateTimeoutSeconds)
		}
		bg := context.WithoutCancel(ctx)
		var cur *run.Run
		err := w.store.Retry(bg, redisWrite(), func() (err error) { cur, err = w.store.GetRun(bg, id); return err })
		if err == nil && cur.StopRequested {
			return run.StatusStopped, how
		}
		return run.StatusTerminated, fmt.Sprintf("terminated: worker %s shut down", w.id)
	case res.TimedOut:
		return run.StatusTimeout, fmt.Sprintf("timeout after %ds", timeoutSec)
	case code == 0:
		return run.StatusSucceeded, ""
	case code < 0:
		return run.StatusFailed, fmt.Sprintf("killed by signal %s", syscall.Signal(-code))
	default:
		return run.StatusFailed, fmt.Sprintf("exited with code %d", code)
	}
}

// scriptEnv is a script's whole environment: a minimal base, the
// worker's variables matching PYRUNNER_ENV_PASSTHROUGH (names or globs),
// the variables of SCRIPT_ENV_FILE (read at every start, so a changed key
// needs no restart), then the request's env. None of the worker's secrets.
func scriptEnv(passthrough []string, envFile string, extra map[string]string) ([]string, error) {
	env := map[string]string{"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "TZ": "UTC", "PYTHONUNBUFFERED": "1"}
	for _, kv := range proc.PassedEnv(append([]string{"PATH", "HOME", "LANG", "TZ"}, passthrough...), os.Environ()) {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	if envFile != "" {
		if _, err := os.Stat(envFile); err != nil {
			return nil, fmt.Errorf("SCRIPT_ENV_FILE: %w", err)
		}
		vars, err := config.ReadDotenv(envFile)
		if err != nil {
			return nil, fmt.Errorf("SCRIPT_ENV_FILE: %w", err)
		}
		for k, v := range vars {
			env[k] = v
		}
	}
	for k, v := range extra {
		env[k] = v
	}
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out, nil
}

// restoreLogs writes again the kept tails of a script run's output, from
// its full log files on this worker, after Redis lost them: the last
// PYRUNNER_LOG_TAIL_BYTES of each file, and its size as the byte count.
func (w *worker) restoreLogs(h *held) {
	r := h.record()
	for stream, path := range map[string]string{"stdout": r.StdoutPath, "stderr": r.StderrPath} {
		if path == "" {
			continue
		}
		tail, total, err := fileTail(path, int64(w.cfg.LogTailBytes))
		if err == nil {
			err = w.store.RestoreLog(context.Background(), r.ID, stream, tail, total)
		}
		if err != nil {
			slog.Warn("could not restore a script's log tail", "run_id", r.ID, "stream", stream, "err", err)
		}
	}
}

// fileTail reads the last max bytes of a file, and its size.
func fileTail(path string, limit int64) ([]byte, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	size := fi.Size()
	off := max(size-limit, 0)
	b := make([]byte, size-off)
	n, err := f.ReadAt(b, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, 0, err
	}
	return b[:n], off + int64(n), nil
}
