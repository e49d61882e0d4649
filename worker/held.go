package main

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"

	"github.com/ztrade/pyrunner/pkg/run"
	"github.com/ztrade/pyrunner/pkg/wire"
)

// held is a run this worker executes: how to end it, and its record as
// the worker last wrote it. Redis is where everyone reads runs, but the
// worker is the truth about the processes it runs: should Redis lose the
// record (a restart without its files, the last second of its append-only
// file), the worker writes this copy again (dispatcher.reassert).
type held struct {
	cancel context.CancelCauseFunc
	// ending is set once its process has ended and its outcome is being
	// written: re-assertion leaves it alone (its record may already say
	// it ended, and there is nothing left to kill).
	ending atomic.Bool

	mu  sync.Mutex
	rec run.Run
}

// record is a copy of the run's record as the worker knows it.
func (h *held) record() run.Run {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.rec
	r.Argv = append([]string(nil), h.rec.Argv...)
	return r
}

// note merges a change the worker writes into its copy: every field the
// change sets (as run.Fields would write it) replaces the copy's.
func (h *held) note(change *run.Run) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.rec.Merge(change)
}

// duplicate says whether other live copies of the run are allowed: a
// research run, or a script started with duplicate:true.
func (h *held) duplicate() bool {
	r := h.record()
	if r.Kind != run.KindScript {
		return true
	}
	var req wire.ScriptRequest
	return json.Unmarshal([]byte(r.Request), &req) == nil && req.Duplicate
}

// update writes a change of run h to Redis and notes it in the worker's
// copy. It reports whether Redis applied it: not when the run had ended,
// nor when the record is no longer this worker's attempt (a reaper took
// the worker for lost and another attempt began).
func (w *worker) update(ctx context.Context, h *held, change *run.Run) (bool, error) {
	h.note(change)
	rec := h.record()
	return w.store.UpdateHeld(ctx, rec.ID, w.id, rec.AttemptNo(), change)
}
