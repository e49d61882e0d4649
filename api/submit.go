package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/ztrade/pyrunner/pkg/backoff"
	"github.com/ztrade/pyrunner/pkg/run"
)

// submit is the one way a run enters pyrunner, research and scripts alike:
// admission (PYRUNNER_MAX_QUEUED), record (create: a script's duplicate
// check happens there, atomically), enqueue on asynq, wake an idle
// worker. A step that fails leaves nothing behind: a refused run is
// neither recorded nor queued.
func (s *server) submit(ctx context.Context, r *run.Run, queueName string, timeout time.Duration, create func(context.Context) error) error {
	if err := s.admit(ctx, queueName); err != nil {
		return err
	}
	if err := create(ctx); err != nil {
		return err
	}
	if err := s.queue.Enqueue(ctx, queueName, r.ID, timeout); err != nil {
		if err := s.store.DeleteRun(context.WithoutCancel(ctx), r.ID); err != nil {
			slog.Error("could not remove a run that was not queued", "run_id", r.ID, "err", err)
		}
		return run.Errorf(run.ECodeUnavailable, "cannot queue the run: redis unavailable")
	}
	if err := s.store.Replicated(ctx); err != nil {
		s.unsubmit(ctx, r, queueName)
		slog.Warn("a run was not accepted: its writes may not survive a redis failover", "run_id", r.ID, "err", err)
		return run.Errorf(run.ECodeUnavailable, "redis is failing over: the run was not accepted; retry")
	}
	if err := s.store.Wake(ctx, queueName, r.ID); err != nil {
		slog.Warn("could not wake workers; the run waits for asynq's next poll", "run_id", r.ID, "err", err)
	}
	if s.metrics != nil {
		s.metrics.Submitted.WithLabelValues(string(r.Kind)).Inc()
	}
	return nil
}

// unsubmit takes back a run whose writes may not have reached a replica
// before its primary died: the new primary may hold its record without
// its task (a run queued forever) or both (a run the client was told
// failed). Both are removed, retried through the failover.
func (s *server) unsubmit(ctx context.Context, r *run.Run, queueName string) {
	err := s.store.Retry(context.WithoutCancel(ctx), undoPolicy, func() error {
		if err := s.store.DeleteRun(context.WithoutCancel(ctx), r.ID); err != nil {
			return err
		}
		s.queue.Drop(queueName, r.ID)
		return nil
	})
	if err != nil {
		slog.Error("could not remove a run that was not accepted", "run_id", r.ID, "err", err)
	}
}

// undoPolicy retries unsubmit through a failover (about 15 s).
var undoPolicy = backoff.Policy{First: 100 * time.Millisecond, Max: time.Second, Tries: 20, What: "remove a run that was not accepted"}

// admitRetry is the Retry-After of a queue that is full.
const admitRetry = 5 * time.Second

// admit refuses a new run while its queue already holds
// PYRUNNER_MAX_QUEUED runs waiting for a worker. The cap is per queue and
// soft across API replicas (two submissions at the same instant may both
// pass it by one).
func (s *server) admit(ctx context.Context, queueName string) error {
	if s.cfg.MaxQueued <= 0 {
		return nil
	}
	n, err := s.store.QueueDepth(ctx, queueName)
	if err != nil {
		return run.Errorf(run.ECodeUnavailable, "cannot check the queue: redis unavailable")
	}
	if n >= int64(s.cfg.MaxQueued) {
		if s.metrics != nil {
			s.metrics.Refused.WithLabelValues(queueName).Inc()
		}
		return run.TooMany(admitRetry, "the %s queue is full: %d runs wait for a worker (PYRUNNER_MAX_QUEUED=%d); retry later", queueName, n, s.cfg.MaxQueued)
	}
	return nil
}
