package store

import (
	"context"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/ztrade/pyrunner/pkg/run"
)

// Re-assertion: a worker is the truth about the processes it runs, and
// Redis may lose what it was told (a restart without its files, the last
// second of an append-only file, a failover to a replica that lagged).
// At every heartbeat, and at once after a reconnect or a Redis restart,
// a worker re-asserts every run it holds (Reassert): the record must
// exist, be held by it and not have ended. A missing record is written
// again from the worker's copy, with the per-script lock; an ended one,
// or one held by another worker, means the process must die.

// Reassertion is what Reassert found, and what the worker must do.
type Reassertion string

const (
	// Held: the record is this worker's and live; carry on.
	Held Reassertion = "held"
	// Restored: the record was missing (or set back to queued) and has
	// been written again from the worker's copy.
	Restored Reassertion = "restored"
	// Ended: the record has ended (the reaper took this worker for lost,
	// or a stop landed while it was away), or waits for its next attempt
	// (the reaper restarted it elsewhere): kill the process.
	Ended Reassertion = "ended"
	// Other: another worker (or another attempt) holds the run: kill
	// this copy.
	Other Reassertion = "other"
	// Conflict: the record was missing, and another live run of the same
	// script (started while it was missing) holds the script's lock: this
	// copy must die so that one copy runs.
	Conflict Reassertion = "conflict"
)

// reassertScript checks a held run's record and writes it again if it is
// missing or was set back to queued by a restart that lost its claim.
//
// KEYS[1] run hash
// KEYS[2] active set
// KEYS[3] runs sorted set
// KEYS[4] the worker's held runs
// ARGV[1] RunKey(""), ARGV[2] run id, ARGV[3] script ("" for research),
// ARGV[4] "1" when duplicates are allowed, ARGV[5] TTL seconds,
// ARGV[6] created score (ms), ARGV[7] worker id, ARGV[8] the worker's
// attempt, ARGV[9..] field, value pairs
// Output: {outcome, detail, stop_requested}: held, restored, ended (detail:
// the status), other (detail: the holder), conflict (detail: the other run).
var reassertScript = redis.NewScript(luaTerminal + luaActiveCopy + `
local f = redis.call('HMGET', KEYS[1], 'status', 'worker', 'stop_requested', 'attempt')
if f[1] and f[1] ~= 'queued' then
  if terminal[f[1]] or f[1] == 'restarting' then return {'ended', f[1], f[3] or ''} end
  if f[2] ~= ARGV[7] then return {'other', f[2] or '', f[3] or ''} end
  if (f[4] or '1') ~= ARGV[8] then return {'other', f[2] .. ' (attempt ' .. (f[4] or '1') .. ')', f[3] or ''} end
  redis.call('SADD', KEYS[4], ARGV[2])
  return {'held', '', f[3] or ''}
end
if not f[1] and ARGV[3] ~= '' and ARGV[4] ~= '1' then
  local other = activeCopy(KEYS[2], ARGV[1], ARGV[3])
  if other and other ~= ARGV[2] then return {'conflict', other, ''} end
end
for i = 9, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i+1]) end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[2])
return {'restored', '', ''}
`)

// Reassert checks that worker's run r (the worker's own copy of the
// record) is recorded as held by it and not ended, writing it again when
// Redis lost it. duplicate says whether the run may have other live
// copies (a script started with duplicate:true, or a research run);
// otherwise a restored script run takes its script's lock. It returns
// what it found, a detail for the log, and whether a stop was requested.
func (s *Store) Reassert(ctx context.Context, worker string, r *run.Run, duplicate bool) (Reassertion, string, bool, error) {
	dup := "0"
	if duplicate || r.Kind != run.KindScript {
		dup = "1"
	}
	rec := *r
	rec.Worker = worker
	args := []any{s.RunKey(""), r.ID, r.Script, dup, int(s.ttl.Seconds()), r.CreatedAt.UnixMilli(), worker, strconv.Itoa(r.AttemptNo())}
	for k, v := range rec.Fields() {
		args = append(args, k, v)
	}
	out, err := reassertScript.Run(ctx, s.rdb, []string{s.RunKey(r.ID), s.ActiveKey(), s.RunsKey(), s.WorkerRunsKey(worker)}, args...).StringSlice()
	if err != nil {
		return "", "", false, fmt.Errorf("store: re-assert run %s: %w", r.ID, err)
	}
	return Reassertion(out[0]), out[1], out[2] == "1", nil
}

// restoreLogScript sets a stream's kept tail and its byte count, unless
// the run has written output since Redis lost them.
//
// KEYS[1] tail string, KEYS[2] total counter
// ARGV[1] tail, ARGV[2] total bytes, ARGV[3] TTL seconds
// Output: 1 when restored, 0 when there was a tail already.
var restoreLogScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return 1
`)

// RestoreLog writes again the kept tail of a run's stream, from the
// worker's full log file, after Redis lost it: tail is the file's last
// bytes and total its size.
func (s *Store) RestoreLog(ctx context.Context, id, stream string, tail []byte, total int64) error {
	err := restoreLogScript.Run(ctx, s.rdb, []string{s.LogKey(id, stream), s.LogTotalKey(id, stream)}, tail, total, int(s.ttl.Seconds())).Err()
	if err != nil {
		return fmt.Errorf("store: restore log of %s: %w", id, err)
	}
	return nil
}
