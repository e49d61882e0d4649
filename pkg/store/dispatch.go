package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ztrade/pyrunner/pkg/run"
)

// Dispatch: asynq is the durable queue, but it polls an empty queue only
// every TaskCheckInterval. To start a run at once, the API also pushes its
// id to a wake list that idle workers block on (BLPOP). Whichever path
// reaches a run first claims it atomically (Claim); the other finds it
// claimed and does nothing.

// claimScript moves a queued run (or a restarting one whose back-off is
// over: the next attempt) to starting for one worker, holding it
// in the worker's set in the same step (so the reaper finds it should the
// worker die), and returns the record: one round trip from the wake to
// the run. A script run is not claimed within the recovery window after a
// Redis restart (luaRecovering): its record may be one the restart set
// back to queued while a worker still runs it.
//
// KEYS[1] run hash
// KEYS[2] the worker's held runs
// KEYS[3] the restarts due (RestartsKey)
// ARGV[1] worker id
// ARGV[2] started_at
// ARGV[3] run id
// ARGV[4] recovery window (s)
// Output: the run's fields when claimed; a number (the seconds left of
// the recovery window) for a script run claimed too soon; nil when the
// run is missing, not queued, or stopped. A hold this call added and did
// not keep is taken back: the winner may be this same worker, on its
// other path.
var claimScript = redis.NewScript(luaRecovering + `
local added = redis.call('SADD', KEYS[2], ARGV[3])
local f = redis.call('HMGET', KEYS[1], 'status', 'stop_requested', 'kind')
if (f[1] ~= 'queued' and f[1] ~= 'restarting') or f[2] == '1' then
  if added == 1 then redis.call('SREM', KEYS[2], ARGV[3]) end
  return false
end
if f[3] == 'script' then
  local left = recovering(ARGV[4])
  if left > 0 then
    if added == 1 then redis.call('SREM', KEYS[2], ARGV[3]) end
    return left
  end
end
if f[1] == 'restarting' then
  -- the next attempt: what the last one ended with is in its restarts entry
  redis.call('HDEL', KEYS[1], 'restart_at', 'pid', 'return_code', 'error', 'finished_at')
  redis.call('ZREM', KEYS[3], ARGV[3])
end
redis.call('HSET', KEYS[1], 'status', 'starting', 'worker', ARGV[1], 'started_at', ARGV[2])
return redis.call('HGETALL', KEYS[1])
`)

// Claim makes worker the owner of queued run id, holds it for worker
// (ReleaseRun lets it go), and returns the run as claimed. Only one caller
// wins; the others get nil. A script run waits out the recovery window
// after a Redis restart (up to ctx) before it is claimed.
func (s *Store) Claim(ctx context.Context, id, worker string, at time.Time) (*run.Run, error) {
	for {
		v, err := claimScript.Run(ctx, s.rdb, []string{s.RunKey(id), s.WorkerRunsKey(worker), s.RestartsKey()}, worker, run.FormatTime(at), id,
			int(s.recovery.Seconds())).Result()
		if errors.Is(err, redis.Nil) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("store: claim %s: %w", id, err)
		}
		if left, ok := v.(int64); ok {
			if err := s.waitRecovery(ctx, strconv.FormatInt(left, 10), "claim of script run "+id); err != nil {
				return nil, err
			}
			at = time.Now()
			continue
		}
		kv, _ := v.([]any)
		f := make(map[string]string, len(kv)/2)
		for i := 0; i+1 < len(kv); i += 2 {
			k, _ := kv[i].(string)
			val, _ := kv[i+1].(string)
			f[k] = val
		}
		return run.FromFields(f), nil
	}
}

// stopScript marks a stop request; a run still queued, or waiting for its
// next attempt, ends stopped at once.
//
// KEYS[1] run hash
// KEYS[2] done channel
// KEYS[3] active set
// ARGV[1] run id
// ARGV[2] finished_at
// ARGV[3] error text for a run stopped in queue
// ARGV[4] error text for a run stopped between attempts
// Output: "queued" (ended now), "active" (its worker must kill it), or "ended".
var stopScript = redis.NewScript(luaTerminal + `
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if terminal[st] then return 'ended' end
redis.call('HSET', KEYS[1], 'stop_requested', '1')
if st == 'queued' or st == 'restarting' then
  local why = ARGV[3]
  if st == 'restarting' then why = ARGV[4] end
  redis.call('HSET', KEYS[1], 'status', 'stopped', 'finished_at', ARGV[2], 'error', why)
  redis.call('HDEL', KEYS[1], 'restart_at')
  redis.call('SREM', KEYS[3], ARGV[1])
  redis.call('PUBLISH', KEYS[2], ARGV[1])
  return 'queued'
end
if st == 'running' or st == 'starting' then redis.call('HSET', KEYS[1], 'status', 'stopping') end
return 'active'
`)

// StopOutcome tells what RequestStop did.
type StopOutcome string

const (
	StopQueued StopOutcome = "queued" // the run had not started (or waited to start again): it is stopped now
	StopActive StopOutcome = "active" // the run is starting or running: its worker was told
	StopEnded  StopOutcome = "ended"  // the run had already ended
)

// RequestStop records a client's stop request. A queued run ends stopped
// right away; for an active one the cancel is published to all workers.
func (s *Store) RequestStop(ctx context.Context, id string) (StopOutcome, error) {
	out, err := stopScript.Run(ctx, s.rdb, []string{s.RunKey(id), s.DoneChannel(), s.ActiveKey()},
		id, run.FormatTime(time.Now()), "stopped before it started", "stopped between attempts: no further attempt").Text()
	if err != nil {
		return "", fmt.Errorf("store: stop %s: %w", id, err)
	}
	if out == "missing" {
		return "", run.Errorf(run.ECodeNotFound, "run %s not found", id)
	}
	if StopOutcome(out) == StopActive {
		if err := s.rdb.Publish(ctx, s.CancelChannel(), id).Err(); err != nil {
			return "", fmt.Errorf("store: publish stop of %s: %w", id, err)
		}
	}
	return StopOutcome(out), nil
}

// OnCancel calls fn with each run id a client asks to stop, until ctx ends.
// It returns once subscribed.
// After a gap in the subscription, resync is called: a stop published in
// the gap was missed, so the worker checks its runs' records instead.
func (s *Store) OnCancel(ctx context.Context, fn func(id string), resync func()) error {
	return s.subscribeWithResync(ctx, s.CancelChannel(), fn, resync)
}

// Wake pushes a new run id for idle workers of queue. The list is trimmed
// so ids nobody was idle for cannot pile up (asynq still delivers them).
func (s *Store) Wake(ctx context.Context, queue, id string) error {
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.LPush(ctx, s.WakeKey(queue), id)
		p.LTrim(ctx, s.WakeKey(queue), 0, 999)
		p.Expire(ctx, s.WakeKey(queue), time.Hour)
		return nil
	})
	return err
}

// Awaken blocks up to timeout for a run id pushed by Wake ("" on timeout).
func (s *Store) Awaken(ctx context.Context, queue string, timeout time.Duration) (string, error) {
	v, err := s.rdb.BRPop(ctx, timeout, s.WakeKey(queue)).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		if ctx.Err() == nil {
			slog.Debug("wake list read failed", "err", err)
		}
		return "", err
	}
	return v[1], nil
}

// Unawaken puts back a run id Awaken returned to a worker that cannot
// start it now, at the end Awaken takes from: the next idle worker gets it.
func (s *Store) Unawaken(ctx context.Context, queue, id string) error {
	if err := s.rdb.RPush(ctx, s.WakeKey(queue), id).Err(); err != nil {
		return fmt.Errorf("store: give back run %s: %w", id, err)
	}
	return nil
}
