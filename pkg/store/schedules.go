package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ztrade/pyrunner/pkg/run"
	"github.com/ztrade/pyrunner/pkg/schedule"
)

// Schedules live in one hash (id → the schedule's JSON), beside a hash of
// their last firings (id → Firing JSON): a firing's write never races a
// PATCH of the definition. Both are kept like run records: with Redis's
// persistence, they survive its restart.

// SchedulesKey is the hash of schedules by id.
func (s *Store) SchedulesKey() string { return s.prefix + "schedules" }

// FiringsKey is the hash of schedules' last firings by schedule id.
func (s *Store) FiringsKey() string { return s.prefix + "schedules:fired" }

// Firing is a schedule's last firing.
type Firing struct {
	At     time.Time `json:"at"`
	RunID  string    `json:"run_id,omitempty"`
	Result string    `json:"result"` // fired, skipped, failed
	Detail string    `json:"detail,omitempty"`
}

// SaveSchedule writes a schedule (created or changed).
func (s *Store) SaveSchedule(ctx context.Context, sc *schedule.Schedule) error {
	b, err := json.Marshal(sc)
	if err != nil {
		return fmt.Errorf("store: encode schedule: %w", err)
	}
	if err := s.rdb.HSet(ctx, s.SchedulesKey(), sc.ID, b).Err(); err != nil {
		return fmt.Errorf("store: save schedule %s: %w", sc.ID, err)
	}
	return nil
}

// GetSchedule reads one schedule (a not-found error if there is none).
func (s *Store) GetSchedule(ctx context.Context, id string) (*schedule.Schedule, error) {
	b, err := s.rdb.HGet(ctx, s.SchedulesKey(), id).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, run.Errorf(run.ECodeNotFound, "schedule %s not found", id)
	}
	if err != nil {
		return nil, fmt.Errorf("store: get schedule %s: %w", id, err)
	}
	var sc schedule.Schedule
	if err := json.Unmarshal(b, &sc); err != nil {
		return nil, fmt.Errorf("store: decode schedule %s: %w", id, err)
	}
	return &sc, nil
}

// Schedules lists every schedule, oldest first.
func (s *Store) Schedules(ctx context.Context) ([]*schedule.Schedule, error) {
	all, err := s.rdb.HGetAll(ctx, s.SchedulesKey()).Result()
	if err != nil {
		return nil, fmt.Errorf("store: list schedules: %w", err)
	}
	out := make([]*schedule.Schedule, 0, len(all))
	for id, b := range all {
		var sc schedule.Schedule
		if err := json.Unmarshal([]byte(b), &sc); err != nil {
			return nil, fmt.Errorf("store: decode schedule %s: %w", id, err)
		}
		out = append(out, &sc)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// DeleteSchedule removes a schedule and its last firing; it reports
// whether there was one.
func (s *Store) DeleteSchedule(ctx context.Context, id string) (bool, error) {
	var n *redis.IntCmd
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		n = p.HDel(ctx, s.SchedulesKey(), id)
		p.HDel(ctx, s.FiringsKey(), id)
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("store: delete schedule %s: %w", id, err)
	}
	return n.Val() == 1, nil
}

// SetFiring records a schedule's last firing, unless a later one is
// recorded already, or the same one as fired (replicas may finish in any
// order, and one may skip a firing another submitted).
func (s *Store) SetFiring(ctx context.Context, id string, f Firing) error {
	b, _ := json.Marshal(f)
	err := setFiringScript.Run(ctx, s.rdb, []string{s.FiringsKey()}, id, b, f.At.UnixMilli()).Err()
	if err != nil {
		return fmt.Errorf("store: record firing of %s: %w", id, err)
	}
	return nil
}

// setFiringScript: KEYS[1] firings hash; ARGV[1] id, ARGV[2] JSON, ARGV[3]
// its time (ms), compared with the recorded one's "at_ms".
var setFiringScript = redis.NewScript(`
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local ok, f = pcall(cjson.decode, cur)
  if ok then
    local at, new = tonumber(f['at_ms'] or 0), tonumber(ARGV[3])
    -- a firing another replica submitted stays recorded as such
    if at > new or (at == new and f['result'] == 'fired') then return 0 end
  end
end
local f = cjson.decode(ARGV[2])
f['at_ms'] = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(f))
return 1
`)

// Firings reads the last firing of every schedule that has fired.
func (s *Store) Firings(ctx context.Context) (map[string]Firing, error) {
	all, err := s.rdb.HGetAll(ctx, s.FiringsKey()).Result()
	if err != nil {
		return nil, fmt.Errorf("store: read firings: %w", err)
	}
	out := make(map[string]Firing, len(all))
	for id, b := range all {
		var f Firing
		if json.Unmarshal([]byte(b), &f) == nil {
			out[id] = f
		}
	}
	return out, nil
}
