package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis with Sentinel: go-redis's failover client asks the sentinels for
// the primary on every new connection and drops its pooled connections to
// a demoted primary when a sentinel announces +switch-master. What it does
// not move are pub/sub connections: a demoted primary that stays up keeps
// them open and silent. So the store watches the primary itself (watch)
// and makes its subscriptions connect again when it changes.

// WithSentinelPassword is r with the sentinels' own password
// (PYRUNNER_REDIS_SENTINEL_PASSWORD); the URL's password is Redis's.
func (r Redis) WithSentinelPassword(password string) Redis {
	o := *r.opt
	o.SentinelPassword = password
	return Redis{opt: &o}
}

// Sentinel reports whether r is a sentinel set (redis-sentinel://).
func (r Redis) Sentinel() bool { return r.opt.MasterName != "" }

// Topology is where the store's Redis is: the primary's address and, with
// Sentinel, the master name and how many of the sentinels answered.
type Topology struct {
	Primary    string `json:"primary,omitempty"`
	MasterName string `json:"master_name,omitempty"`
	// SentinelsReached of SentinelsTotal answered (with Sentinel only).
	SentinelsReached int `json:"sentinels_reached,omitempty"`
	SentinelsTotal   int `json:"sentinels_total,omitempty"`
}

// sentinels are the clients of each sentinel of a set, made once.
type sentinels struct {
	master  string
	clients []*redis.SentinelClient

	mu       sync.Mutex
	primary  string        // the last primary the sentinels named
	switched chan struct{} // closed when the primary changes
}

func newSentinels(r Redis) *sentinels {
	s := &sentinels{master: r.opt.MasterName, switched: make(chan struct{})}
	for _, addr := range r.opt.Addrs {
		s.clients = append(s.clients, redis.NewSentinelClient(&redis.Options{Addr: addr,
			Username: r.opt.SentinelUsername, Password: r.opt.SentinelPassword, TLSConfig: r.opt.TLSConfig,
			DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second, MaxRetries: -1}))
	}
	return s
}

// ask asks every sentinel for the primary: the answer most of those that
// answered gave, and how many answered.
func (s *sentinels) ask(ctx context.Context) (primary string, reached int) {
	answers := make([]string, len(s.clients))
	var wg sync.WaitGroup
	for i, c := range s.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if a, err := c.GetMasterAddrByName(ctx, s.master).Result(); err == nil && len(a) == 2 {
				answers[i] = a[0] + ":" + a[1]
			}
		}()
	}
	wg.Wait()
	votes := map[string]int{}
	for _, a := range answers {
		if a != "" {
			reached++
			votes[a]++
			if votes[a] > votes[primary] {
				primary = a
			}
		}
	}
	return primary, reached
}

// watch asks the sentinels for the primary every interval until ctx ends;
// a change closes switched (see changed).
func (s *sentinels) watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if p, _ := s.ask(ctx); p != "" {
			s.mu.Lock()
			if s.primary != "" && p != s.primary {
				slog.Warn("redis failover: the sentinels name a new primary; subscriptions connect to it",
					"master_name", s.master, "old_primary", s.primary, "new_primary", p)
				close(s.switched)
				s.switched = make(chan struct{})
			}
			s.primary = p
			s.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// changed is closed at the next change of primary.
func (s *sentinels) changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.switched
}

func (s *sentinels) close() {
	for _, c := range s.clients {
		_ = c.Close() // a sentinel client holds no state worth an error
	}
}

// Topology says where the store's Redis is now.
func (s *Store) Topology(ctx context.Context) Topology {
	if s.sentinels == nil {
		return Topology{Primary: s.conf.opt.Addrs[0]}
	}
	primary, reached := s.sentinels.ask(ctx)
	return Topology{Primary: primary, MasterName: s.sentinels.master, SentinelsReached: reached,
		SentinelsTotal: len(s.sentinels.clients)}
}

// PrimaryChanged is closed when the sentinels name another primary (never,
// without Sentinel): a write waiting on the old primary may be given up
// and tried again.
func (s *Store) PrimaryChanged() <-chan struct{} {
	if s.sentinels == nil {
		return nil
	}
	return s.sentinels.changed()
}

// Replicated waits until every write made so far has reached a replica,
// under Sentinel: Redis replicates asynchronously, so a write the primary
// acknowledged may be lost when it dies and a replica takes over. The API
// calls it before it answers that a run was accepted. On one connection,
// it asks whether a replica is online, writes a probe and waits (WAIT) for
// it: the replication stream is ordered, so once the probe is on a
// replica, so is everything before it. A primary with no replica online
// (down, or still in its first sync) is not waited on: runs are still
// accepted, with the durability of one Redis. Without Sentinel it returns
// at once.
//
// A primary that died mid-wait may not answer at all (a dead container's
// address drops packets): the wait is given up, as ErrFailingOver, when
// the sentinels name another primary or replicationTimeout and a second
// have passed, and the blocked call is left to time out on its own.
func (s *Store) Replicated(ctx context.Context) error {
	c, ok := s.rdb.(*redis.Client) // a failover client is a *redis.Client
	if s.sentinels == nil || !ok {
		return nil
	}
	switched := s.PrimaryChanged()
	done := make(chan error, 1)
	go func() { done <- s.replicated(ctx, c) }()
	select {
	case err := <-done:
		return err
	case <-switched:
		return fmt.Errorf("store: wait for a replica: the sentinels named another primary: %w", ErrFailingOver)
	case <-time.After(replicationTimeout + time.Second):
		return fmt.Errorf("store: wait for a replica: the primary does not answer: %w", ErrFailingOver)
	case <-ctx.Done():
		return fmt.Errorf("store: wait for a replica: %w", ctx.Err())
	}
}

// ErrFailingOver says the primary stopped answering or was replaced while
// a write waited for a replica: IsUnavailable, worth a retry.
var ErrFailingOver = errors.New("redis is failing over")

// replicated is Replicated's wait, on one connection of c.
func (s *Store) replicated(ctx context.Context, c *redis.Client) error {
	// One connection throughout: WAIT counts the writes of its own.
	conn := c.Conn()
	defer func() { _ = conn.Close() }() // back to the pool; nothing to report
	info, err := conn.Info(ctx, "replication").Result()
	if err != nil {
		return fmt.Errorf("store: wait for a replica: %w", err)
	}
	if !strings.Contains(info, "state=online") {
		return nil
	}
	if err := conn.Set(ctx, s.prefix+"replication-probe", time.Now().UnixNano(), time.Minute).Err(); err != nil {
		return fmt.Errorf("store: wait for a replica: %w", err)
	}
	n, err := conn.Do(ctx, "WAIT", 1, replicationTimeout.Milliseconds()).Int()
	if err != nil {
		return fmt.Errorf("store: wait for a replica: %w", err)
	}
	if n == 0 {
		return fmt.Errorf("store: no replica acknowledged a write within %s", replicationTimeout)
	}
	return nil
}

// replicationTimeout is how long Replicated waits for a replica.
const replicationTimeout = 2 * time.Second
