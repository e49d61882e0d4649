package store

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/ztrade/pyrunner/pkg/run"
)

// Filter selects runs in a listing; empty fields match everything.
type Filter struct {
	Status string
	Script string
	Kind   string
	Limit  int
	// Cursor is the id of the last run of the previous page.
	Cursor string
}

func (f Filter) match(r *run.Run) bool {
	return (f.Status == "" || string(r.Status) == f.Status) &&
		(f.Script == "" || r.Script == f.Script) &&
		(f.Kind == "" || string(r.Kind) == f.Kind)
}

// ListRuns returns runs newest first, and the cursor of the next page
// ("" when there is none). Ids whose records expired are pruned.
func (s *Store) ListRuns(ctx context.Context, f Filter) ([]*run.Run, string, error) {
	start := int64(0)
	if f.Cursor != "" {
		rank, err := s.rdb.ZRevRank(ctx, s.RunsKey(), f.Cursor).Result()
		if err == redis.Nil {
			return nil, "", run.Errorf(run.ECodeInvalid, "cursor %q is not a known run", f.Cursor)
		} else if err != nil {
			return nil, "", fmt.Errorf("store: list runs: %w", err)
		}
		start = rank + 1
	}
	const page = 200
	var out []*run.Run
	for {
		ids, err := s.rdb.ZRevRange(ctx, s.RunsKey(), start, start+page-1).Result()
		if err != nil {
			return nil, "", fmt.Errorf("store: list runs: %w", err)
		}
		runs, err := s.getRuns(ctx, ids)
		if err != nil {
			return nil, "", err
		}
		for i, r := range runs {
			if r == nil {
				s.rdb.ZRem(ctx, s.RunsKey(), ids[i])
				continue
			}
			if f.match(r) {
				out = append(out, r)
				if len(out) == f.Limit {
					next := ""
					if i < len(ids)-1 || len(ids) == page {
						next = r.ID
					}
					return out, next, nil
				}
			}
		}
		if len(ids) < page {
			return out, "", nil
		}
		start += page
	}
}

// ActiveRuns lists the runs not yet ended, newest first.
func (s *Store) ActiveRuns(ctx context.Context) ([]*run.Run, error) {
	ids, err := s.rdb.SMembers(ctx, s.ActiveKey()).Result()
	if err != nil {
		return nil, fmt.Errorf("store: active runs: %w", err)
	}
	runs, err := s.getRuns(ctx, ids)
	if err != nil {
		return nil, err
	}
	var out []*run.Run
	for i, r := range runs {
		if r == nil || !r.Status.Active() {
			s.rdb.SRem(ctx, s.ActiveKey(), ids[i])
			continue
		}
		out = append(out, r)
	}
	sortNewestFirst(out)
	return out, nil
}

func sortNewestFirst(rs []*run.Run) {
	for i := 1; i < len(rs); i++ {
		for j := i; j > 0 && rs[j].CreatedAt.After(rs[j-1].CreatedAt); j-- {
			rs[j], rs[j-1] = rs[j-1], rs[j]
		}
	}
}

// getRuns reads many records in one round trip; missing ones are nil.
func (s *Store) getRuns(ctx context.Context, ids []string) ([]*run.Run, error) {
	cmds := make([]*redis.MapStringStringCmd, len(ids))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.HGetAll(ctx, s.RunKey(id))
		}
		return nil
	})
	if err != nil && err != redis.Nil {
		return nil, fmt.Errorf("store: read runs: %w", err)
	}
	out := make([]*run.Run, len(ids))
	for i, c := range cmds {
		if m := c.Val(); len(m) > 0 {
			out[i] = run.FromFields(m)
		}
	}
	return out, nil
}

// appendLogScript appends output to a stream's kept tail, trimming it back
// to max bytes once it passes twice that (so trimming costs O(1) a byte).
//
// KEYS[1] tail string, KEYS[2] total counter, KEYS[3] log channel
// ARGV[1] data, ARGV[2] max bytes, ARGV[3] TTL seconds, ARGV[4] run id
// Output: the total bytes written so far.
var appendLogScript = redis.NewScript(`
local n = redis.call('APPEND', KEYS[1], ARGV[1])
local max = tonumber(ARGV[2])
if n > 2 * max then
  redis.call('SET', KEYS[1], redis.call('GETRANGE', KEYS[1], n - max, -1))
end
local total = redis.call('INCRBY', KEYS[2], string.len(ARGV[1]))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('PUBLISH', KEYS[3], ARGV[4])
return total
`)

// AppendLog adds output of a run's stream ("stdout" or "stderr"), keeping
// at least the last max bytes.
func (s *Store) AppendLog(ctx context.Context, id, stream string, data []byte, max int) error {
	err := appendLogScript.Run(ctx, s.rdb, []string{s.LogKey(id, stream), s.LogTotalKey(id, stream), s.LogChannel()},
		data, max, int(s.ttl.Seconds()), id).Err()
	if err != nil {
		return fmt.Errorf("store: append log of %s: %w", id, err)
	}
	return nil
}

// ReadLog returns the kept tail of a stream and the offset (in all the
// bytes the stream ever had) at which that tail starts.
func (s *Store) ReadLog(ctx context.Context, id, stream string) (data []byte, offset int64, err error) {
	var tail *redis.StringCmd
	var total *redis.StringCmd
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		tail = p.Get(ctx, s.LogKey(id, stream))
		total = p.Get(ctx, s.LogTotalKey(id, stream))
		return nil
	})
	if err != nil && err != redis.Nil {
		return nil, 0, fmt.Errorf("store: read log of %s: %w", id, err)
	}
	data, _ = tail.Bytes()
	n, _ := total.Int64()
	return data, n - int64(len(data)), nil
}
