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
	exec   func(ctx context.Context, r *run.Run) error
	// claimed is told of a run the wake list brought and this worker
	// claimed, so that its asynq task is dropped instead of delivered
	// again for nothing.
	claimed func(queue, id string)
	// started is told of every run this worker starts (metrics).
	started func(r *run.Run)

	mu      sync.Mutex
	running map[string]context.CancelCauseFunc
	wg      sync.WaitGroup

	// halted is cancelled at shutdown: every run's context ends with it.
	halted context.Context
	halt   context.CancelFunc
}

func newDispatcher(st *store.Store, worker, queue string, concurrency int, exec func(context.Context, *run.Run) error) *dispatcher {
	halted, halt := context.WithCancel(context.Background())
	return &dispatcher{store: st, worker: worker, queue: queue, slots: make(chan struct{}, concurrency),
		exec: exec, running: map[string]context.CancelCauseFunc{}, halted: halted, halt: halt}
}

// fromQueue is the asynq handler: runs the task unless the wake path got
// to it first.
func (d *dispatcher) fromQueue(ctx context.Context, id string) error {
	r, err := d.store.GetRun(ctx, id)
	if err != nil || r.Status != run.StatusQueued {
		return nil // taken by another worker's wake path, stopped, or expired
	}
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
		id, err := d.store.Awaken(ctx, d.queue, 2*time.Second)
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
		if err := d.store.ReleaseRun(bg, d.worker, id); err != nil {
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
	d.mu.Lock()
	d.running[id] = cancel
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.running, id)
		d.mu.Unlock()
	}()
	return d.exec(ctx, r)
}

var errHalted = errors.New("worker shutting down")

// busy is how many runs of the queue this worker executes now.
func (d *dispatcher) busy() int { return len(d.ids()) }

// ids lists the runs this worker executes now.
func (d *dispatcher) ids() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	ids := make([]string, 0, len(d.running))
	for id := range d.running {
		ids = append(ids, id)
	}
	return ids
}

// kill ends run id at once (SIGKILL, no grace), with why as the cause.
func (d *dispatcher) kill(id string, why error) {
	d.mu.Lock()
	c := d.running[id]
	d.mu.Unlock()
	if c != nil {
		slog.Warn("killing run at once", "run_id", id, "worker", d.worker, "reason", why)
		c(why)
	}
}

// cancel stops run id if this worker runs it.
func (d *dispatcher) cancel(id string) {
	d.mu.Lock()
	c := d.running[id]
	d.mu.Unlock()
	if c != nil {
		slog.Info("stop requested", "run_id", id, "worker", d.worker)
		c(nil)
	}
}

// resync looks at the records of the runs this worker executes: a stop
// requested but not received (pub/sub lost it, or the subscription was
// down) is carried out now; a run whose record was ended under it (the
// reaper took this worker for lost: it was frozen, or cut off from Redis)
// is killed at once, so that record and process agree. The worker calls
// it at every heartbeat and after a subscription gap.
func (d *dispatcher) resync(ctx context.Context) {
	for _, id := range d.ids() {
		r, err := d.store.GetRun(ctx, id)
		switch {
		case err != nil:
		case r.Status.Terminal():
			d.kill(id, fmt.Errorf("%w: its record says %s (%s)", scriptrun.ErrKill, r.Status, r.Error))
		case r.StopRequested:
			d.cancel(id)
		}
	}
}

// fence kills every run of this worker at once: it has not renewed its
// heartbeat for long enough that the reaper will soon end them.
func (d *dispatcher) fence(why error) {
	for _, id := range d.ids() {
		d.kill(id, why)
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
