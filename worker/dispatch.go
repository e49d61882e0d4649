package main

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/ztrade/pyrunner/pkg/run"
	"github.com/ztrade/pyrunner/pkg/store"
)

// dispatcher starts runs from two sources, asynq's handler and the wake
// list (see store.Wake), within one concurrency limit per queue, and keeps
// the cancel function of every run it executes so that a stop request
// published by any API reaches the run.
type dispatcher struct {
	store  *store.Store
	worker string
	queue  string
	slots  chan struct{}
	exec   func(ctx context.Context, id string) error

	mu      sync.Mutex
	running map[string]context.CancelFunc
	wg      sync.WaitGroup

	// halted is cancelled at shutdown: every run's context ends with it.
	halted context.Context
	halt   context.CancelFunc
}

func newDispatcher(st *store.Store, worker, queue string, concurrency int, exec func(context.Context, string) error) *dispatcher {
	halted, halt := context.WithCancel(context.Background())
	return &dispatcher{store: st, worker: worker, queue: queue, slots: make(chan struct{}, concurrency),
		exec: exec, running: map[string]context.CancelFunc{}, halted: halted, halt: halt}
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
	return d.run(ctx, id)
}

// wakeLoop takes run ids from the wake list whenever a slot is free, until
// ctx ends.
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
			if err := d.run(context.Background(), id); err != nil {
				slog.Error("run failed in the worker", "run_id", id, "err", err)
			}
		}()
	}
}

// run executes one run with a context that a stop request or the halt at
// shutdown cancels.
func (d *dispatcher) run(parent context.Context, id string) error {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	defer context.AfterFunc(d.halted, cancel)()
	d.mu.Lock()
	d.running[id] = cancel
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.running, id)
		d.mu.Unlock()
	}()
	return d.exec(ctx, id)
}

// cancel stops run id if this worker runs it.
func (d *dispatcher) cancel(id string) {
	d.mu.Lock()
	c := d.running[id]
	d.mu.Unlock()
	if c != nil {
		slog.Info("stop requested", "run_id", id, "worker", d.worker)
		c()
	}
}

// resync cancels the runs this worker holds whose records say a stop was
// requested: a stop published while the subscription was down.
func (d *dispatcher) resync() {
	d.mu.Lock()
	ids := make([]string, 0, len(d.running))
	for id := range d.running {
		ids = append(ids, id)
	}
	d.mu.Unlock()
	for _, id := range ids {
		if r, err := d.store.GetRun(context.Background(), id); err == nil && r.StopRequested {
			d.cancel(id)
		}
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
