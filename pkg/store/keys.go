package store

// Every Redis key pyrunner uses is built here, from the configured prefix
// (default "pyrunner:"), the way asynq's internal/base builds its keys.
// asynq's own keys live under "asynq:" beside these.

// RunKey is the hash holding one run's record.
func (s *Store) RunKey(id string) string { return s.prefix + "run:" + id }

// ResultKey is the string holding a finished research run's result JSON.
func (s *Store) ResultKey(id string) string { return s.prefix + "run:" + id + ":result" }

// RunsKey is the sorted set of all run ids, scored by creation time (ms).
func (s *Store) RunsKey() string { return s.prefix + "runs" }

// DoneChannel is the pub/sub channel on which a run's id is published when
// it reaches a terminal status (and when it starts running).
func (s *Store) DoneChannel() string { return s.prefix + "events:done" }

// WorkersKey is the sorted set of worker ids, scored by last heartbeat (ms).
func (s *Store) WorkersKey() string { return s.prefix + "workers" }

// WorkerKey is the string holding a worker's self-description (JSON).
func (s *Store) WorkerKey(id string) string { return s.prefix + "worker:" + id }

// WorkerRunsKey is the set of run ids a worker holds right now.
func (s *Store) WorkerRunsKey(id string) string { return s.prefix + "worker:" + id + ":runs" }

// CancelChannel is the pub/sub channel on which a run's id is published
// when a client asks to stop it; the worker running it kills it.
func (s *Store) CancelChannel() string { return s.prefix + "events:cancel" }

// WakeKey is the list a queue's new run ids are pushed to, so an idle
// worker blocked on it starts the run at once instead of at asynq's next
// poll.
func (s *Store) WakeKey(queue string) string { return s.prefix + "wake:" + queue }

// ActiveKey is the set of ids of runs not yet ended.
func (s *Store) ActiveKey() string { return s.prefix + "active" }

// LogKey is the string holding the kept tail of a script run's stream
// ("stdout" or "stderr").
func (s *Store) LogKey(id, stream string) string { return s.prefix + "run:" + id + ":" + stream }

// LogTotalKey counts every byte a run ever wrote to a stream.
func (s *Store) LogTotalKey(id, stream string) string {
	return s.prefix + "run:" + id + ":" + stream + ":total"
}

// LogChannel is the pub/sub channel on which a run's id is published when
// it has written more output.
func (s *Store) LogChannel() string { return s.prefix + "events:log" }

// AsynqPendingKey is asynq's own list of a queue's tasks waiting for a
// worker (asynq's base.PendingKey: "asynq:{<queue>}:pending"); its length
// is the queue depth admission control compares with PYRUNNER_MAX_QUEUED.
func AsynqPendingKey(queue string) string { return "asynq:{" + queue + "}:pending" }

// MarketsKey holds the K-line markets the workers' database has.
func (s *Store) MarketsKey() string { return s.prefix + "markets" }
