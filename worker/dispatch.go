package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ztrade/pyrunner/pkg/run"
	"github.com/ztrade/pyrunner/pkg/scriptrun"
	"github.com/ztrade/pyrunner/pkg/store"
)

// dispatcher starts runs from two sources, asynq's handler and the wake
// list (see store.Wake), within one concurrency limit per queue, and keeps
// the cancel function of every run it executes so that a stop request
// published by any API reaches the run. Both sources go through start,
// the one way a run begins on this worker.
type dispatcher struct {
	store  *store.Store
	worker string
	queue  string
	slots  chan struct{}
	exec   func(ctx context.Context, h *held) error
	// claimed is told of a run the wake list brought and this worker
	// claimed, so that its asynq task is dropped instead of delivered
	// again for nothing.
	claimed func(queue, id string)
	// started is told of every run this worker starts (metrics).
	started func(r *run.Run)
	// restored is told of a run whose record Redis had lost and reassert
	// wrote again (the worker restores its log tail).
	restored func(h *held)
	// prepare, when set, returns once a run taken now would start at once
	// (executor.Prepare), and ready says whether one would (Ready): the
	// dispatcher takes no run before.
	prepare func(ctx context.Context) error
	ready   func() bool

	mu      sync.Mutex
	running map[string]*held
	wg      sync.WaitGroup

	// halted is cancelled at shutdown: every run's context ends with it.
	halted context.Context
	halt   context.CancelFunc
}

func newDispatcher(st *store.Store, worker, queue string, concurrency int, exec func(context.Context, *held) error) *dispatcher {
	halted, halt := context.WithCancel(context.Background())
	return &dispatcher{store: st, worker: worker, queue: queue, slots: make(chan struct{}, concurrency),
		exec: exec, running: map[string]*held{}, halted: halted, halt: halt}
}

// fromQueue is the asynq handler: runs the task unless the wake path got
// to it first.
func (d *dispatcher) fromQueue(ctx context.Context, id string) error {
	r, err := d.store.GetRun(ctx, id)
	if err != nil || r.Status != run.StatusQueued {
		return nil // taken by another worker's wake path, stopped, or expired
	}
	// Not ready (the zygote restarting): wait, while a ready worker's
	// wake path may take the run; start claims it only if still queued.
	d.awaitReady(ctx)
	select {
	case d.slots <- struct{}{}:
	case <-ctx.Done():
		return nil
	}
	defer func() { <-d.slots }()
	return d.start(ctx, id, false)
}

// wakeLoop takes run ids from the wake list whenever a slot is free, until
// ctx ends. The runs it starts live as asynq's do (start, halt at
// shutdown, drain), only sooner.
func (d *dispatcher) wakeLoop(ctx context.Context) {
	for {
		select {
		case d.slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		d.awaitReady(ctx)
		id, err := d.store.Awaken(ctx, d.queue, 2*time.Second)
		if id != "" && d.ready != nil && !d.ready() {
			// No longer ready (the zygote died while this waited): the
			// run goes back to the list for a worker that is.
			if err := d.store.Unawaken(ctx, d.queue, id); err != nil {
				slog.Warn("could not give back a run this worker cannot start now; asynq delivers it", "run_id", id, "err", err)
			}
			id, err = "", errNotReady // and pause, should getting ready fail at once
		}
		if id == "" {
			<-d.slots
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				time.Sleep(200 * time.Millisecond)
			}
			continue
		}
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			defer func() { <-d.slots }()
			if err := d.start(context.Background(), id, true); err != nil {
				slog.Error("run failed in the worker", "run_id", id, "err", err)
			}
		}()
	}
}

// errNotReady: the worker could not start a run at once.
var errNotReady = errors.New("worker not ready")

// awaitReady returns once the worker can start a run at once (see
// prepare), or when ctx ends; a failure to get ready is logged, and the run
// taken next reports it.
func (d *dispatcher) awaitReady(ctx context.Context) {
	if d.prepare == nil {
		return
	}
	if err := d.prepare(ctx); err != nil && ctx.Err() == nil {
		slog.Error("worker not ready", "queue", d.queue, "err", err)
	}
}

// restartPoll is how often a worker looks for restarts that are due.
const restartPoll = 250 * time.Millisecond

// restartLoop starts the next attempt of a restarting run whose back-off
// is over (store.DueRestart) whenever a slot is free, until ctx ends.
// Every worker looks; the claim decides which one starts it.
func (d *dispatcher) restartLoop(ctx context.Context) {
	var pending idSet // being claimed here: a claim that waits (Redis's recovery window) is not tried twice
	t := time.NewTicker(restartPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		select {
		case d.slots <- struct{}{}:
		default:
			continue // no free slot: another worker may take it
		}
		id, err := d.store.DueRestart(ctx, time.Now())
		if id == "" || !pending.add(id) {
			<-d.slots
			if err != nil && ctx.Err() == nil {
				slog.Debug("could not look for due restarts", "err", err)
			}
			continue
		}
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			defer func() { <-d.slots }()
			defer pending.remove(id)
			if err := d.start(context.Background(), id, false); err != nil {
				slog.Error("run failed in the worker", "run_id", id, "err", err)
			}
		}()
	}
}

// idSet is a set of run ids safe for concurrent use.
type idSet struct {
	mu  sync.Mutex
	ids map[string]bool
}

// add adds id, reporting false if it was there already.
func (s *idSet) add(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ids[id] {
		return false
	}
	if s.ids == nil {
		s.ids = map[string]bool{}
	}
	s.ids[id] = true
	return true
}

func (s *idSet) remove(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.ids, id)
}

// start is the one way a run begins here, whichever path brought its id:
// claim and hold it in one step (only one caller, on any worker, wins;
// the hold lets the reaper find it should this worker die), and only then
// register its cancel and execute it. A caller that loses the claim
// touches nothing: registering before the claim let a losing path's
// clean-up remove the winner's cancel, and its stop was lost.
func (d *dispatcher) start(parent context.Context, id string, woken bool) error {
	bg := context.WithoutCancel(parent)
	r, err := d.store.Claim(parent, id, d.worker, time.Now())
	if err != nil || r == nil {
		return err // another worker has it, or it was stopped in queue
	}
	defer func() {
		err := d.store.Retry(bg, redisWrite(), func() error { return d.store.ReleaseRun(bg, d.worker, id) })
		if err != nil {
			slog.Warn("could not release a run", "run_id", id, "err", err)
		}
	}()
	if woken && d.claimed != nil {
		go d.claimed(d.queue, id) // best effort, and off the run's path
	}
	if d.started != nil {
		d.started(r)
	}
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	defer context.AfterFunc(d.halted, func() { cancel(errHalted) })()
	h := &held{cancel: cancel, rec: *r}
	d.mu.Lock()
	d.running[id] = h
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.running, id)
		d.mu.Unlock()
	}()
	return d.exec(ctx, h)
}

var errHalted = errors.New("worker shutting down")

// busy is how many runs of the queue this worker executes now.
func (d *dispatcher) busy() int { return len(d.held()) }

// held lists the runs this worker executes now.
func (d *dispatcher) held() []*held {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]*held, 0, len(d.running))
	for _, h := range d.running {
		out = append(out, h)
	}
	return out
}

// kill ends run h at once (SIGKILL, no grace), with why as the cause.
func (d *dispatcher) kill(h *held, why error) {
	slog.Warn("killing run at once", "run_id", h.record().ID, "worker", d.worker, "reason", why)
	h.cancel(why)
}

// cancel stops run id if this worker runs it.
func (d *dispatcher) cancel(id string) {
	d.mu.Lock()
	h := d.running[id]
	d.mu.Unlock()
	if h != nil {
		slog.Info("stop requested", "run_id", id, "worker", d.worker)
		h.cancel(nil)
	}
}

// reassert makes the records of the runs this worker executes agree with
// its processes (store.Reassert): a record Redis lost is written again
// from the worker's copy; a run whose record was ended under it (the
// reaper took this worker for lost: it was frozen, or cut off from
// Redis), or that another worker holds, or whose script another copy has
// locked meanwhile, is killed at once; a stop requested but not received
// (pub/sub lost it, or the subscription was down) is carried out now.
// The worker calls it at every heartbeat, after a subscription gap, and
// when Redis restarted.
func (d *dispatcher) reassert(ctx context.Context) {
	for _, h := range d.held() {
		if h.ending.Load() {
			continue
		}
		rec := h.record()
		found, detail, stop, err := d.store.Reassert(ctx, d.worker, &rec, h.duplicate())
		if err != nil {
			if ctx.Err() == nil {
				slog.Debug("could not re-assert a run", "run_id", rec.ID, "err", err)
			}
			continue
		}
		switch found {
		case store.Restored:
			slog.Warn("redis had lost this run's record; written again from the worker's copy", "run_id", rec.ID,
				"worker", d.worker, "status", rec.Status, "pid", rec.PID)
			if d.restored != nil {
				d.restored(h)
			}
		case store.Ended:
			d.kill(h, fmt.Errorf("%w: its record says %s", scriptrun.ErrKill, detail))
			continue
		case store.Other:
			d.kill(h, fmt.Errorf("%w: its record says worker %s holds it", scriptrun.ErrKill, detail))
			continue
		case store.Conflict:
			d.kill(h, fmt.Errorf("%w: its record was lost and run %s of the same script started meanwhile", scriptrun.ErrKill, detail))
			continue
		}
		if stop {
			d.cancel(rec.ID)
		}
	}
}

// fence kills every run of this worker at once: it has not renewed its
// heartbeat for long enough that the reaper will soon end them.
func (d *dispatcher) fence(why error) {
	for _, h := range d.held() {
		d.kill(h, why)
	}
}

// drain waits up to grace for the wake path's runs to finish.
func (d *dispatcher) drain(grace time.Duration) bool {
	done := make(chan struct{})
	go func() { d.wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(grace):
		return false
	}
}
