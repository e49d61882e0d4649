package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ztrade/pyrunner/pkg/run"
)

// Attempts: a script run with a restart policy is started again when an
// attempt ends (see run.RestartPolicy). Whoever saw the attempt end (its
// worker, or a reaper that found the worker lost) moves the run to
// restarting (Restart), which puts it in a sorted set by due time; a
// worker with a free slot takes the next due one (DueRestart) and claims
// it like a queued run (Claim), so only one worker starts it. A write of
// an attempt's worker (UpdateHeld) lands only while the record is still
// that attempt's, held by that worker: a late write of a worker thought
// lost cannot undo the next attempt.

// RestartsKey is the sorted set of restarting runs, scored by when their
// next attempt is due (ms).
func (s *Store) RestartsKey() string { return s.prefix + "restarts" }

// luaHeldBy defines heldBy(runKey, worker, attempt): whether the record
// is attempt's of a run, held by worker.
const luaHeldBy = `
local function heldBy(runKey, worker, attempt)
  local f = redis.call('HMGET', runKey, 'worker', 'attempt', 'status')
  return f[1] == worker and (f[2] or '1') == attempt and f[3] ~= 'restarting'
end
`

// updateHeldScript is updateScript for an attempt's worker: ARGV[#ARGV-1]
// is the worker and ARGV[#ARGV] the attempt; the change is applied only
// while heldBy holds.
var updateHeldScript = redis.NewScript(luaTerminal + luaHeldBy + `
if not heldBy(KEYS[1], ARGV[#ARGV-1], ARGV[#ARGV]) then return 0 end
local last = #ARGV - 2
` + updateBody)

// UpdateHeld is Update for the worker running attempt of run id: it
// applies change only while the record is that attempt's and held by
// worker, and reports whether it did.
func (s *Store) UpdateHeld(ctx context.Context, id, worker string, attempt int, change *run.Run) (bool, error) {
	args := append(s.updateArgs(id, change), worker, strconv.Itoa(max(attempt, 1)))
	n, err := updateHeldScript.Run(ctx, s.rdb, []string{s.RunKey(id), s.DoneChannel(), s.ActiveKey()}, args...).Int()
	if err != nil {
		return false, fmt.Errorf("store: update run %s: %w", id, err)
	}
	return n == 1, nil
}

// restartScript moves an attempt that ended to restarting.
//
// KEYS[1] run hash, KEYS[2] done channel, KEYS[3] restarts due, KEYS[4]
// the worker's held runs
// ARGV[1] TTL seconds, ARGV[2] run id, ARGV[3] worker, ARGV[4] the
// attempt that ended, ARGV[5] when the next is due (ms), ARGV[6..] field,
// value pairs
// Output: "restarting"; "stop" when a stop was requested (the caller ends
// the run); "gone" when the record is not that attempt's any more.
var restartScript = redis.NewScript(luaTerminal + luaHeldBy + `
local st = redis.call('HGET', KEYS[1], 'status')
if not st or terminal[st] or not heldBy(KEYS[1], ARGV[3], ARGV[4]) then return 'gone' end
if redis.call('HGET', KEYS[1], 'stop_requested') == '1' then return 'stop' end
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i+1]) end
redis.call('HSET', KEYS[1], 'status', 'restarting')
redis.call('HDEL', KEYS[1], 'pid')
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[2])
redis.call('SREM', KEYS[4], ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[2])
return 'restarting'
`)

// RestartOutcome says what Restart did.
type RestartOutcome string

const (
	// Restarting: the run waits for its next attempt.
	Restarting RestartOutcome = "restarting"
	// RestartStop: a stop was requested; the caller ends the run.
	RestartStop RestartOutcome = "stop"
	// RestartGone: the record is no longer that attempt's (it ended, or
	// another attempt began): nothing was written.
	RestartGone RestartOutcome = "gone"
)

// Restart moves the run's attempt (held by worker) to restarting, with
// change (the next attempt's number, the restarts so far, RestartAt: when
// it is due), and lets worker's hold go.
func (s *Store) Restart(ctx context.Context, id, worker string, attempt int, change *run.Run) (RestartOutcome, error) {
	args := []any{int(s.ttl.Seconds()), id, worker, strconv.Itoa(max(attempt, 1)), change.RestartAt.UnixMilli()}
	for k, v := range change.Fields() {
		if k != "status" {
			args = append(args, k, v)
		}
	}
	out, err := restartScript.Run(ctx, s.rdb, []string{s.RunKey(id), s.DoneChannel(), s.RestartsKey(), s.WorkerRunsKey(worker)}, args...).Text()
	if err != nil {
		return "", fmt.Errorf("store: restart run %s: %w", id, err)
	}
	return RestartOutcome(out), nil
}

// dueRestartScript returns the id of a restarting run whose next attempt
// is due, dropping from the set the runs that are no longer restarting
// (stopped meanwhile, or taken).
//
// KEYS[1] restarts due; ARGV[1] now (ms), ARGV[2] RunKey("")
var dueRestartScript = redis.NewScript(`
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 20)) do
  if redis.call('HGET', ARGV[2] .. id, 'status') == 'restarting' then return id end
  redis.call('ZREM', KEYS[1], id)
end
return false
`)

// DueRestart returns a run whose next attempt is due ("" if none), for
// the caller to Claim.
func (s *Store) DueRestart(ctx context.Context, now time.Time) (string, error) {
	id, err := dueRestartScript.Run(ctx, s.rdb, []string{s.RestartsKey()}, now.UnixMilli(), s.RunKey("")).Text()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("store: due restarts: %w", err)
	}
	return id, nil
}
