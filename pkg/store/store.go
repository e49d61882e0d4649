// Package store keeps pyrunner's shared state in Redis: run records and
// results (with a retention TTL), completion events over pub/sub, and the
// worker heartbeats that let any process find runs whose worker is gone.
// It is the only package that imports go-redis.
package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ztrade/pyrunner/pkg/run"
)

// redisLogger sends go-redis's own messages (reconnects, pool errors)
// through slog, so that every line a binary writes has one format.
type redisLogger struct{}

func (redisLogger) Printf(_ context.Context, format string, v ...interface{}) {
	slog.Warn(fmt.Sprintf(format, v...), "component", "go-redis")
}

func init() { redis.SetLogger(redisLogger{}) }

// Store is a handle on the shared Redis.
type Store struct {
	rdb    redis.UniversalClient
	prefix string
	ttl    time.Duration
	// recovery is the window after a Redis restart in which scripts wait
	// to start (SetRecoveryWindow).
	recovery time.Duration
	// conf makes new clients; beat is the heartbeat's own client (see
	// Heartbeat), made afresh after a failed beat.
	conf   Redis
	beatMu sync.Mutex
	beat   redis.UniversalClient
	// sentinels, with Sentinel, watch the primary (sentinel.go);
	// stopWatch ends that.
	sentinels *sentinels
	stopWatch context.CancelFunc
}

// Redis is a parsed PYRUNNER_REDIS_URL: the one description of the Redis
// that the store and asynq both connect with (asynq takes it as its
// RedisConnOpt), so a database number, password or sentinel set means the
// same to both.
type Redis struct {
	opt *redis.UniversalOptions
}

// ParseRedisURL reads redis://[user:pass@]host:port[/db],
// rediss://… (TLS), or
// redis-sentinel://[:pass@]host:port[,host:port]?master=name[&db=N].
func ParseRedisURL(rawURL string) (Redis, error) {
	if strings.HasPrefix(rawURL, "redis-sentinel://") {
		u, err := url.Parse(rawURL)
		if err != nil {
			return Redis{}, fmt.Errorf("store: parse redis url: %w", err)
		}
		o := &redis.UniversalOptions{MasterName: u.Query().Get("master"), Addrs: strings.Split(u.Host, ",")}
		if u.User != nil {
			o.Username = u.User.Username()
			o.Password, _ = u.User.Password()
		}
		if db := u.Query().Get("db"); db != "" {
			n, err := strconv.Atoi(db)
			if err != nil {
				return Redis{}, fmt.Errorf("store: redis-sentinel url: db=%q is not a number", db)
			}
			o.DB = n
		}
		if o.MasterName == "" {
			return Redis{}, errors.New("store: redis-sentinel url needs ?master=<name>")
		}
		return Redis{opt: o}, nil
	}
	o, err := redis.ParseURL(rawURL)
	if err != nil {
		return Redis{}, fmt.Errorf("store: parse redis url: %w", err)
	}
	return Redis{opt: &redis.UniversalOptions{Addrs: []string{o.Addr}, Username: o.Username, Password: o.Password,
		DB: o.DB, TLSConfig: o.TLSConfig}}, nil
}

// DB is the database number records and tasks live in.
func (r Redis) DB() int { return r.opt.DB }

// MakeRedisClient makes a new client (a failover client for sentinels),
// as asynq's RedisConnOpt asks.
func (r Redis) MakeRedisClient() interface{} { return r.client() }

func (r Redis) client() redis.UniversalClient {
	return r.clientWith(func(*redis.UniversalOptions) {})
}

// clientWith makes a client with options changed by edit.
func (r Redis) clientWith(edit func(*redis.UniversalOptions)) redis.UniversalClient {
	o := *r.opt
	edit(&o)
	if o.MasterName != "" {
		return redis.NewFailoverClient(o.Failover())
	}
	return redis.NewClient(o.Simple())
}

// Open connects to r and checks it answers. prefix starts every key; ttl
// is how long run records live.
func Open(ctx context.Context, r Redis, prefix string, ttl time.Duration) (*Store, error) {
	rdb := r.client()
	s := &Store{rdb: rdb, prefix: prefix, ttl: ttl, conf: r}
	if err := s.Ping(ctx); err != nil {
		rdb.Close()
		return nil, err
	}
	if r.Sentinel() {
		s.sentinels = newSentinels(r)
		var watchCtx context.Context
		watchCtx, s.stopWatch = context.WithCancel(context.Background())
		go s.sentinels.watch(watchCtx, 500*time.Millisecond)
	}
	return s, nil
}

// Ping checks Redis answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("store: redis unreachable: %w", err)
	}
	return nil
}

// Close closes the connections.
func (s *Store) Close() error {
	s.beatMu.Lock()
	if s.beat != nil {
		s.beat.Close()
	}
	s.beatMu.Unlock()
	if s.sentinels != nil {
		s.stopWatch()
		s.sentinels.close()
	}
	return s.rdb.Close()
}

// createRunScript writes a run record unless one with its id exists.
//
// KEYS[1] run hash, KEYS[2] runs sorted set, KEYS[3] active set
// ARGV[1] TTL seconds, ARGV[2] run id, ARGV[3] created score (ms),
// ARGV[4..] field, value pairs
// Output: 1 when created, 0 when the id was taken.
var createRunScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i+1]) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[2])
return 1
`)

// CreateRun writes a new run record and indexes it. An id already taken
// (a schedule's firing that another API replica submitted) is a conflict
// error, and nothing is written.
func (s *Store) CreateRun(ctx context.Context, r *run.Run) error {
	args := []any{int(s.ttl.Seconds()), r.ID, r.CreatedAt.UnixMilli()}
	for k, v := range r.Fields() {
		args = append(args, k, v)
	}
	n, err := createRunScript.Run(ctx, s.rdb, []string{s.RunKey(r.ID), s.RunsKey(), s.ActiveKey()}, args...).Int()
	if err != nil {
		return fmt.Errorf("store: create run %s: %w", r.ID, err)
	}
	if n == 0 {
		return run.Errorf(run.ECodeConflict, "run %s exists already", r.ID)
	}
	return nil
}

// createScriptRunScript creates a script run, unless duplicate is off and
// another run of the same script is active (atomic across API replicas),
// or Redis restarted so recently that a worker may not yet have written
// again the record of a copy it runs (see luaRecovering).
//
// KEYS[1] run hash
// KEYS[2] active set
// KEYS[3] runs sorted set
// ARGV[1] RunKey(""), ARGV[2] run id, ARGV[3] script, ARGV[4] "1" to allow duplicates
// ARGV[5] TTL seconds, ARGV[6] created score (ms), ARGV[7] recovery window (s)
// ARGV[8..] field, value pairs
// Output: {"created"}, {"conflict", id of the active run}, {"exists", id}
// (the id is taken: a schedule's firing another replica submitted), or
// {"wait", seconds}.
var createScriptRunScript = redis.NewScript(luaTerminal + luaRecovering + luaActiveCopy + `
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists', ARGV[2]} end
if ARGV[4] ~= '1' then
  local other = activeCopy(KEYS[2], ARGV[1], ARGV[3])
  if other then return {'conflict', other} end
  local left = recovering(ARGV[7])
  if left > 0 then return {'wait', tostring(left)} end
end
for i = 8, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i+1]) end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[2])
return {'created'}
`)

// CreateScriptRun records a new script run. With duplicate false and a run
// of the same script still active, it creates nothing and returns a
// conflict *run.Error naming that run. Within the recovery window after a
// Redis restart (SetRecoveryWindow) such a start waits, up to ctx, until
// every worker has had the time to write again the runs it holds.
func (s *Store) CreateScriptRun(ctx context.Context, r *run.Run, duplicate bool) error {
	dup := "0"
	if duplicate {
		dup = "1"
	}
	args := []any{s.RunKey(""), r.ID, r.Script, dup, int(s.ttl.Seconds()), r.CreatedAt.UnixMilli(), int(s.recovery.Seconds())}
	for k, v := range r.Fields() {
		args = append(args, k, v)
	}
	for {
		out, err := createScriptRunScript.Run(ctx, s.rdb, []string{s.RunKey(r.ID), s.ActiveKey(), s.RunsKey()}, args...).StringSlice()
		if err != nil {
			return fmt.Errorf("store: create script run: %w", err)
		}
		switch out[0] {
		case "created":
			return nil
		case "conflict":
			return run.Errorf(run.ECodeConflict, "script %s is already running (run %s); pass duplicate:true to start another", r.Script, out[1])
		case "exists":
			return run.Errorf(run.ECodeConflict, "run %s exists already", r.ID)
		}
		if err := s.waitRecovery(ctx, out[1], "start of script "+r.Script); err != nil {
			return err
		}
	}
}

// waitRecovery sleeps the seconds a script's recovery gate said are left.
func (s *Store) waitRecovery(ctx context.Context, seconds, what string) error {
	n, _ := strconv.Atoi(seconds)
	slog.Info("redis restarted moments ago: the "+what+" waits until workers have written again the runs they hold",
		"wait_s", n)
	select {
	case <-time.After(time.Duration(n) * time.Second):
		return nil
	case <-ctx.Done():
		return run.Errorf(run.ECodeUnavailable, "redis restarted moments ago; workers are re-registering the scripts they run: retry in %d s", n)
	}
}

// SetRecoveryWindow sets how long after a Redis (re)start script starts
// and claims wait, so that no script starts that a worker's copy, whose
// record the restart lost, would have refused: liveness.RecoveryWindow
// in the binaries, 0 (no wait) by default.
func (s *Store) SetRecoveryWindow(d time.Duration) { s.recovery = d }

// DeleteRun removes a run that never got queued.
func (s *Store) DeleteRun(ctx context.Context, id string) error {
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, s.RunKey(id), s.ResultKey(id))
		p.ZRem(ctx, s.RunsKey(), id)
		p.SRem(ctx, s.ActiveKey(), id)
		return nil
	})
	return err
}

// GetRun reads a run record; a missing one is a not-found *run.Error.
func (s *Store) GetRun(ctx context.Context, id string) (*run.Run, error) {
	f, err := s.rdb.HGetAll(ctx, s.RunKey(id)).Result()
	if err != nil {
		return nil, fmt.Errorf("store: get run %s: %w", id, err)
	}
	if len(f) == 0 {
		return nil, run.Errorf(run.ECodeNotFound, "run %s not found", id)
	}
	return run.FromFields(f), nil
}

// updateScript changes a run unless it has already ended, and announces
// the run on the done channel when the change ends it or makes it
// running (an API waiting for a script to start wakes then). A stopping
// run is never moved back to starting or running.
//
// KEYS[1] run hash
// KEYS[2] done channel
// KEYS[3] active set
// ARGV[1] record TTL in seconds
// ARGV[2] run id
// ARGV[3..] field, value pairs
// Output: 1 when applied; 0 when the run is missing or already terminal.
var updateScript = redis.NewScript(luaTerminal + "local last = #ARGV\n" + updateBody)

// finishScript stores a run's result (KEYS[4], ARGV[#ARGV], for ARGV[1]
// seconds), then is updateScript with the other arguments. Should the
// result not be stored, the script stops there and the run is unchanged.
var finishScript = redis.NewScript(luaTerminal + "redis.call('SET', KEYS[4], ARGV[#ARGV], 'EX', ARGV[1])\nlocal last = #ARGV - 1\n" + updateBody)

// updateBody is updateScript's, after "last" (the index of its last field
// argument) is set.
const updateBody = `
local st = redis.call('HGET', KEYS[1], 'status')
if not st or terminal[st] then return 0 end
local ended, started = false, false
for i = 3, last, 2 do
  local k, v = ARGV[i], ARGV[i+1]
  -- a run being stopped stays "stopping" until it ends
  if not (k == 'status' and st == 'stopping' and (v == 'running' or v == 'starting')) then
    redis.call('HSET', KEYS[1], k, v)
  end
  if k == 'status' and terminal[v] then ended = true end
  if k == 'status' and v == 'running' and st ~= 'running' then started = true end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
if ended then
  redis.call('SREM', KEYS[3], ARGV[2])
end
if ended or started then
  redis.call('PUBLISH', KEYS[2], ARGV[2])
end
return 1
`

// Update applies the non-empty fields of change to run id, unless the run
// has already ended. It reports whether it applied them. A change to a
// terminal status, or to running, publishes the run's id on the done
// channel.
func (s *Store) Update(ctx context.Context, id string, change *run.Run) (bool, error) {
	n, err := updateScript.Run(ctx, s.rdb, []string{s.RunKey(id), s.DoneChannel(), s.ActiveKey()}, s.updateArgs(id, change)...).Int()
	if err != nil {
		return false, fmt.Errorf("store: update run %s: %w", id, err)
	}
	return n == 1, nil
}

// SetResult stores a research run's result JSON. Call it before the
// terminal Update so that a woken waiter finds it.
func (s *Store) SetResult(ctx context.Context, id string, result []byte) error {
	if err := s.rdb.Set(ctx, s.ResultKey(id), result, s.ttl).Err(); err != nil {
		return fmt.Errorf("store: set result of %s: %w", id, err)
	}
	return nil
}

// updateArgs are updateScript's arguments for change to run id.
func (s *Store) updateArgs(id string, change *run.Run) []any {
	args := []any{int(s.ttl.Seconds()), id}
	for k, v := range change.Fields() {
		args = append(args, k, v)
	}
	return args
}

// Finish stores a research run's result and applies change (its end) in
// one step (finishScript): a waiter the end wakes finds the result, and a
// result Redis refuses leaves the run as it was, for the caller to end it
// otherwise.
func (s *Store) Finish(ctx context.Context, id string, result []byte, change *run.Run) error {
	args := append(s.updateArgs(id, change), result)
	if err := finishScript.Run(ctx, s.rdb, []string{s.RunKey(id), s.DoneChannel(), s.ActiveKey(), s.ResultKey(id)}, args...).Err(); err != nil {
		return fmt.Errorf("store: finish run %s: %w", id, err)
	}
	return nil
}

// GetRunWithResult reads a run record and its result (nil when there is
// none yet) in one round trip.
func (s *Store) GetRunWithResult(ctx context.Context, id string) (*run.Run, []byte, error) {
	pipe := s.rdb.Pipeline()
	fields := pipe.HGetAll(ctx, s.RunKey(id))
	result := pipe.Get(ctx, s.ResultKey(id))
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, nil, fmt.Errorf("store: get run %s: %w", id, err)
	}
	if len(fields.Val()) == 0 {
		return nil, nil, run.Errorf(run.ECodeNotFound, "run %s not found", id)
	}
	b, err := result.Bytes()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, nil, fmt.Errorf("store: get result of %s: %w", id, err)
	}
	return run.FromFields(fields.Val()), b, nil
}
