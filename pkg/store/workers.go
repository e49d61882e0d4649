package store

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// WorkerInfo is what a worker says about itself in its heartbeat.
type WorkerInfo struct {
	ID                  string `json:"id"`
	Host                string `json:"host"`
	PID                 int    `json:"pid"`
	StartedAt           string `json:"started_at"`
	LastHeartbeat       string `json:"last_heartbeat"`
	Executor            string `json:"executor"`
	Sandbox             string `json:"sandbox"`
	SandboxNote         string `json:"sandbox_note,omitempty"`
	Python              string `json:"python"`
	DBType              string `json:"db_type"`
	ResearchConcurrency int    `json:"research_concurrency"`
	ScriptConcurrency   int    `json:"script_concurrency"`
	ActiveRuns          int64  `json:"active_runs"`
	// Ready says the worker can start a research run at once: its warm
	// executor's zygote is up. It is false while the zygote (re)starts;
	// the worker takes no research run meanwhile.
	Ready bool `json:"ready"`
}

// Heartbeat records that the worker is alive now. Its description lives
// for ttl, so a dead worker's entry disappears on its own. It returns the
// Redis server's run_id (INFO server), which changes at every restart: a
// worker that sees it change re-asserts its runs at once.
//
// Beats go over a client of their own, with one connection, dropped after
// a beat that failed: when Redis comes back at another address (a
// container restarted, a failover), pooled connections to the old one
// may hang rather than fail, and a worker whose beats hang on them fences
// its scripts although Redis is back. The next beat dials afresh.
func (s *Store) Heartbeat(ctx context.Context, w WorkerInfo, ttl time.Duration) (string, error) {
	s.beatMu.Lock()
	defer s.beatMu.Unlock()
	if s.beat == nil {
		s.beat = s.conf.clientWith(func(o *redis.UniversalOptions) { o.PoolSize, o.MaxRetries = 1, -1 })
	}
	id, err := s.heartbeat(ctx, s.beat, w, ttl)
	if err != nil {
		s.beat.Close()
		s.beat = nil
	}
	return id, err
}

func (s *Store) heartbeat(ctx context.Context, rdb redis.UniversalClient, w WorkerInfo, ttl time.Duration) (string, error) {
	now := time.Now()
	w.ActiveRuns = rdb.SCard(ctx, s.WorkerRunsKey(w.ID)).Val()
	w.LastHeartbeat = now.UTC().Format("2006-01-02T15:04:05.000000-07:00")
	b, _ := json.Marshal(w)
	var info *redis.StringCmd
	_, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, s.WorkerKey(w.ID), b, ttl)
		p.ZAdd(ctx, s.WorkersKey(), redis.Z{Score: float64(now.UnixMilli()), Member: w.ID})
		info = p.Info(ctx, "server")
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("store: heartbeat: %w", err)
	}
	return parseInfo(info.Val())["run_id"], nil
}

// RemoveWorker forgets a worker that shut down cleanly.
func (s *Store) RemoveWorker(ctx context.Context, id string) error {
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.ZRem(ctx, s.WorkersKey(), id)
		p.Del(ctx, s.WorkerKey(id), s.WorkerRunsKey(id))
		return nil
	})
	return err
}

// Workers lists the workers whose heartbeat is younger than fresh.
func (s *Store) Workers(ctx context.Context, fresh time.Duration) ([]WorkerInfo, error) {
	min := strconv.FormatInt(time.Now().Add(-fresh).UnixMilli(), 10)
	ids, err := s.rdb.ZRangeByScore(ctx, s.WorkersKey(), &redis.ZRangeBy{Min: min, Max: "+inf"}).Result()
	if err != nil {
		return nil, fmt.Errorf("store: list workers: %w", err)
	}
	out := []WorkerInfo{}
	for _, id := range ids {
		b, err := s.rdb.Get(ctx, s.WorkerKey(id)).Bytes()
		if err != nil {
			continue
		}
		var w WorkerInfo
		if json.Unmarshal(b, &w) == nil {
			out = append(out, w)
		}
	}
	return out, nil
}

// HoldRun notes that worker holds run id; ReleaseRun undoes it.
func (s *Store) HoldRun(ctx context.Context, worker, id string) error {
	return s.rdb.SAdd(ctx, s.WorkerRunsKey(worker), id).Err()
}

// ReleaseRun notes that worker no longer holds run id.
func (s *Store) ReleaseRun(ctx context.Context, worker, id string) error {
	return s.rdb.SRem(ctx, s.WorkerRunsKey(worker), id).Err()
}

// LostWorkers lists workers whose last heartbeat is older than stale.
func (s *Store) LostWorkers(ctx context.Context, stale time.Duration) ([]string, error) {
	max := strconv.FormatInt(time.Now().Add(-stale).UnixMilli(), 10)
	ids, err := s.rdb.ZRangeByScore(ctx, s.WorkersKey(), &redis.ZRangeBy{Min: "-inf", Max: max}).Result()
	if err != nil {
		return nil, fmt.Errorf("store: lost workers: %w", err)
	}
	return ids, nil
}

// HeldRuns lists the runs a worker holds.
func (s *Store) HeldRuns(ctx context.Context, worker string) ([]string, error) {
	return s.rdb.SMembers(ctx, s.WorkerRunsKey(worker)).Result()
}

// QueueDepth is how many runs of queue wait for a worker in asynq.
func (s *Store) QueueDepth(ctx context.Context, queue string) (int64, error) {
	n, err := s.rdb.LLen(ctx, AsynqPendingKey(queue)).Result()
	if err != nil {
		return 0, fmt.Errorf("store: depth of queue %s: %w", queue, err)
	}
	return n, nil
}

// SetMarkets records the K-line markets a worker's database has (JSON, as
// the research API lists them) for an hour.
func (s *Store) SetMarkets(ctx context.Context, markets []byte) error {
	if err := s.rdb.Set(ctx, s.MarketsKey(), markets, time.Hour).Err(); err != nil {
		return fmt.Errorf("store: set markets: %w", err)
	}
	return nil
}

// Markets is what a worker last recorded with SetMarkets (nil if none).
func (s *Store) Markets(ctx context.Context) ([]byte, error) {
	b, err := s.rdb.Get(ctx, s.MarketsKey()).Bytes()
	if err == redis.Nil {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: get markets: %w", err)
	}
	return b, nil
}
