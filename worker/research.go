package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ztrade/pyrunner/pkg/backoff"
	"github.com/ztrade/pyrunner/pkg/config"
	"github.com/ztrade/pyrunner/pkg/executor"
	"github.com/ztrade/pyrunner/pkg/frame"
	"github.com/ztrade/pyrunner/pkg/kline"
	"github.com/ztrade/pyrunner/pkg/metrics"
	"github.com/ztrade/pyrunner/pkg/research"
	"github.com/ztrade/pyrunner/pkg/run"
	"github.com/ztrade/pyrunner/pkg/scriptrun"
	"github.com/ztrade/pyrunner/pkg/scripts"
	"github.com/ztrade/pyrunner/pkg/store"
	"github.com/ztrade/pyrunner/pkg/wire"
)

// worker holds what the task handlers share.
type worker struct {
	id      string
	host    string
	cfg     *config.Config
	db      *kline.DB
	exec    executor.Executor
	store   *store.Store
	metrics *metrics.Worker
	scripts *scripts.Folder
	python  string
	// keeper is the pyrunner-keeper binary every script runs under, and
	// lease how long scripts may run without a heartbeat landing (renewed
	// at each one): their keepers hold them to it.
	keeper string
	lease  *scriptrun.Lease
}

// handleResearch runs one research run, claimed by this worker (see
// dispatcher.start), from its record to its result.
func (w *worker) handleResearch(ctx context.Context, h *held) error {
	// Writes after the run must land even when ctx was cancelled.
	bg := context.WithoutCancel(ctx)
	rec := h.record()
	r := &rec
	id := r.ID
	started := r.StartedAt
	if started.IsZero() {
		started = time.Now()
	}
	var stored research.Stored
	if err := json.Unmarshal([]byte(r.Request), &stored); err != nil {
		return w.finishResearch(bg, r, research.Failure("bad request in run record: "+err.Error(), nil), run.StatusFailed)
	}
	req := stored.Request
	meta := &wire.Meta{
		Exchange: req.Exchange, Symbol: req.Symbol, BinSize: req.BinSize, Start: req.Start, End: req.End,
		DBType: w.db.Type(), DBReadonly: true, RunID: id, Worker: w.id, Warnings: append([]string{}, stored.Warnings...),
		QueueMs: started.Sub(r.CreatedAt).Milliseconds(),
	}
	finish := func(res *wire.ResearchResult, st run.Status) error {
		h.ending.Store(true)
		meta.TotalMs = time.Since(r.CreatedAt).Milliseconds()
		return w.finishResearch(bg, r, res, st)
	}

	f, source, hit, err := w.db.LoadCached(ctx, kline.Query{Exchange: req.Exchange, Symbol: req.Symbol, BinSize: req.BinSize,
		Start: req.Start, End: req.End, Limit: req.Limit})
	meta.KlineCache = cacheResult(w.cfg.KlineCacheMB > 0, hit)
	if w.metrics != nil && w.cfg.KlineCacheMB > 0 {
		w.metrics.KlineCache.WithLabelValues(meta.KlineCache).Inc()
	}
	meta.LoadMs = time.Since(started).Milliseconds()
	if ctx.Err() != nil {
		res, st := w.interrupted(bg, id, meta, nil)
		return finish(res, st)
	}
	if err != nil {
		msg := run.ErrorMessage(err)
		if run.ErrorCode(err) == run.ECodeInternal {
			msg = "loading K-lines failed: " + err.Error()
		}
		return finish(research.Failure(msg, meta), run.StatusFailed)
	}
	meta.Rows, meta.Source = f.Len(), source
	// Recorded beside the run, not before it: a stopping run stays
	// stopping, and one that has ended by then stays ended.
	go func() {
		if _, err := w.update(bg, h, &run.Run{Status: run.StatusRunning}); err != nil {
			slog.Warn("could not record a research run as running", "run_id", id, "err", err)
		}
	}()

	execStart := time.Now()
	out, err := w.exec.Run(ctx, executor.Job{
		RunID: id, Code: req.Code, Timeout: time.Duration(req.TimeoutSec) * time.Second, Frame: f,
		LoadKline: w.loadKline,
	})
	meta.ExecMs = time.Since(execStart).Milliseconds()
	if errors.Is(err, executor.ErrCancelled) || ctx.Err() != nil {
		res, st := w.interrupted(bg, id, meta, out)
		return finish(res, st)
	}
	if err != nil {
		return finish(research.Failure(fmt.Sprintf("could not run python: %v", err), meta), run.StatusFailed)
	}
	res, status := outcome(out, meta)
	r.ReturnCode = &out.ExitCode
	return finish(res, status)
}

// loadKline serves user code's load_kline calls, with the API's rules.
func (w *worker) loadKline(ctx context.Context, lr wire.Market) (*frame.Frame, error) {
	if err := research.ValidateMarket(lr.Exchange, lr.Symbol, lr.BinSize); err != nil {
		return nil, err
	}
	if lr.Start < 0 || lr.End < lr.Start || lr.Limit < 0 {
		return nil, run.Errorf(run.ECodeInvalid, "load_kline needs 0 <= start <= end and limit >= 0")
	}
	f, _, err := w.db.Load(ctx, kline.Query{Exchange: lr.Exchange, Symbol: lr.Symbol, BinSize: lr.BinSize,
		Start: lr.Start, End: lr.End, Limit: lr.Limit})
	return f, err
}

// outcome is the result and status of a run Python finished.
func outcome(out *executor.Output, meta *wire.Meta) (*wire.ResearchResult, run.Status) {
	meta.Warnings = append(meta.Warnings, out.Warnings...)
	res := withOutput(&wire.ResearchResult{OK: out.OK, Result: out.Result, Meta: meta, Images: out.Images}, out)
	if out.OK {
		return res, run.StatusSucceeded
	}
	msg := out.Error
	res.Error = &msg
	if out.TimedOut {
		return res, run.StatusTimeout
	}
	return res, run.StatusFailed
}

// interrupted explains a run whose context was cancelled: a client asked
// to stop it, or the worker is shutting down under it.
func (w *worker) interrupted(ctx context.Context, id string, meta *wire.Meta, out *executor.Output) (*wire.ResearchResult, run.Status) {
	if cur, err := w.store.GetRun(ctx, id); err == nil && cur.StopRequested {
		return withOutput(research.Failure("stopped by request", meta), out), run.StatusStopped
	}
	return withOutput(research.Failure("terminated: worker "+w.id+" shut down during the run", meta), out), run.StatusTerminated
}

// withOutput copies a run's captured output into a result.
func withOutput(res *wire.ResearchResult, out *executor.Output) *wire.ResearchResult {
	if out != nil {
		res.Stdout, res.StdoutTruncated = out.Stdout, out.StdoutTruncated
		res.Stderr, res.StderrTruncated = out.Stderr, out.StderrTruncated
	}
	return res
}

// finishResearch stores the result and ends the run (which wakes
// waiters) in one step. It may not be lost while the worker lives: it is
// retried while Redis is unavailable (restarting, failing over), written
// again on a new primary when the old one died before a replica had it
// (store.RetryReplicated: replication is asynchronous), and a
// result Redis will not take (too large for it) is replaced by a small
// failure record that says why, so the run ends failed instead of
// staying running.
func (w *worker) finishResearch(ctx context.Context, r *run.Run, res *wire.ResearchResult, st run.Status) error {
	if res.Images == nil {
		res.Images = []wire.Image{}
	}
	end := func(st run.Status) *run.Run {
		change := &run.Run{Status: st, FinishedAt: time.Now(), ReturnCode: r.ReturnCode}
		if !res.OK && res.Error != nil {
			change.Error = *res.Error
		}
		return change
	}
	b, err := json.Marshal(res)
	if err == nil {
		// One round trip does it all, retried through a Redis restart or
		// failover; a write Redis refuses (too large, out of memory) is
		// not retried but replaced below.
		err = w.store.RetryReplicated(ctx, redisWrite(), func() error { return w.store.Finish(ctx, r.ID, b, end(st)) })
		if err == nil {
			w.finished(r, res, st)
			return nil
		}
	}
	slog.Error("could not store a run's result; storing a failure record instead", "run_id", r.ID, "bytes", len(b), "err", err)
	res = research.Failure(fmt.Sprintf("the run's outcome (%d bytes) could not be stored: %v", len(b), err), res.Meta)
	st = run.StatusFailed
	small, _ := json.Marshal(res)
	if err := w.store.Retry(ctx, redisWrite(), func() error { return w.store.SetResult(ctx, r.ID, small) }); err != nil {
		slog.Error("could not store a run's failure record", "run_id", r.ID, "err", err)
	}
	change := end(st)
	if err := w.store.RetryReplicated(ctx, redisWrite(), func() error { _, err := w.store.Update(ctx, r.ID, change); return err }); err != nil {
		return fmt.Errorf("end run %s: %w", r.ID, err)
	}
	w.finished(r, res, st)
	return nil
}

// finished logs and counts a research run that has ended.
func (w *worker) finished(r *run.Run, res *wire.ResearchResult, st run.Status) {
	slog.Info("research run finished", "run_id", r.ID, "status", st, "rows", metaRows(res.Meta))
	if w.metrics != nil {
		w.metrics.Finished.WithLabelValues(string(run.KindResearch), string(st)).Inc()
		if m := res.Meta; m != nil {
			w.metrics.Load.Observe(float64(m.LoadMs) / 1000)
			w.metrics.Exec.WithLabelValues(string(run.KindResearch)).Observe(float64(m.ExecMs) / 1000)
		}
	}
}

// redisWrite is how an outcome write is retried through a Redis outage (a
// restart, a failover): every second at most, so the run's slot is free
// again within a second of Redis coming back, for about 20 s in all.
func redisWrite() backoff.Policy {
	return backoff.Policy{First: 100 * time.Millisecond, Max: time.Second, Tries: 25, What: "redis write"}
}

// cacheResult is meta.klineCache: hit, miss, or off.
func cacheResult(on, hit bool) string {
	switch {
	case !on:
		return "off"
	case hit:
		return "hit"
	}
	return "miss"
}

func metaRows(m *wire.Meta) int {
	if m == nil {
		return 0
	}
	return m.Rows
}
