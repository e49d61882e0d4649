package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ztrade/pyrunner/pkg/backoff"
)

// Durability is what a Redis keeps across a crash, as its own INFO and
// CONFIG say: whether it persists (the append-only file and how often it
// is synced, or RDB snapshots) and whether it may evict keys (asynq loses
// tasks under eviction). pyrunner reads it at start, after a reconnect and
// for /health, and warns loudly when the Redis is not durable.
type Durability struct {
	// Persistence is aof-everysec, aof-always, aof-no, rdb, none, or
	// unknown (CONFIG is not allowed, as on some managed Redis).
	Persistence string `json:"persistence"`
	// Eviction is maxmemory-policy: noeviction is the only safe one.
	Eviction string `json:"eviction"`
	// Warnings say, in words, what a crash of this Redis would lose.
	Warnings []string `json:"warnings,omitempty"`
	// ServerID is INFO server's run_id: it changes at every restart.
	ServerID string `json:"-"`
	// UptimeSec is how long the server has been up.
	UptimeSec int64 `json:"-"`
}

// Durable reports whether a crash of this Redis keeps what pyrunner
// wrote (bar the last second with aof-everysec) and no key is evicted.
func (d Durability) Durable() bool { return len(d.Warnings) == 0 }

// Durability reads the server's persistence and eviction settings.
func (s *Store) Durability(ctx context.Context) (Durability, error) {
	text, err := s.rdb.Info(ctx, "server", "persistence", "memory").Result()
	if err != nil {
		return Durability{}, fmt.Errorf("store: redis info: %w", err)
	}
	info := parseInfo(text)
	d := Durability{ServerID: info["run_id"], Eviction: info["maxmemory_policy"]}
	d.UptimeSec, _ = strconv.ParseInt(info["uptime_in_seconds"], 10, 64)
	conf := map[string]string{}
	if kv, err := s.rdb.ConfigGet(ctx, "appendfsync").Result(); err == nil {
		conf = kv
	}
	if kv, err := s.rdb.ConfigGet(ctx, "save").Result(); err == nil {
		for k, v := range kv {
			conf[k] = v
		}
	}
	save, saveKnown := conf["save"]
	switch {
	case info["aof_enabled"] == "1" && conf["appendfsync"] != "":
		d.Persistence = "aof-" + conf["appendfsync"]
	case info["aof_enabled"] == "1":
		d.Persistence = "aof"
	case saveKnown && strings.TrimSpace(save) != "":
		d.Persistence = "rdb"
	case saveKnown:
		d.Persistence = "none"
	default:
		d.Persistence = "unknown"
	}
	switch d.Persistence {
	case "none":
		d.Warnings = append(d.Warnings, "redis keeps nothing on disk (no append-only file, no snapshots): a crash or restart loses every run record, queued run and result, and running scripts become invisible; turn on appendonly yes")
	case "unknown":
		d.Warnings = append(d.Warnings, "redis does not say whether it persists (CONFIG is refused); make sure it runs with appendonly yes")
	case "rdb":
		d.Warnings = append(d.Warnings, "redis persists only by snapshots: a crash loses everything since the last one; appendonly yes with appendfsync everysec loses at most a second")
	case "aof-no":
		d.Warnings = append(d.Warnings, "redis leaves syncing the append-only file to the OS (appendfsync no): a host crash may lose up to ~30 s of runs")
	}
	if d.Eviction != "noeviction" {
		d.Warnings = append(d.Warnings, fmt.Sprintf("redis may evict keys (maxmemory-policy %s): under memory pressure it would drop run records and queued tasks; set maxmemory-policy noeviction", d.Eviction))
	}
	return d, nil
}

// CheckDurable reads Redis's persistence and eviction settings and warns
// loudly (a log line per risk) when a crash of it would lose runs; with
// require set (PYRUNNER_REQUIRE_DURABLE_REDIS), such a Redis is an error
// instead. Settings it cannot read are a warning, not an error.
func (s *Store) CheckDurable(ctx context.Context, require bool) error {
	d, ok := s.WarnDurable(ctx)
	if ok && require && !d.Durable() {
		return fmt.Errorf("PYRUNNER_REQUIRE_DURABLE_REDIS=true but redis is not durable (persistence %s, eviction %s): %s",
			d.Persistence, d.Eviction, strings.Join(d.Warnings, "; "))
	}
	return nil
}

// WarnDurable logs a loud warning per risk a crash of Redis would bring
// (see Durability); ok is false when the settings could not be read
// (that is logged too).
func (s *Store) WarnDurable(ctx context.Context) (d Durability, ok bool) {
	d, err := s.Durability(ctx)
	if err != nil {
		slog.Warn("could not read redis's persistence settings", "err", err)
		return d, false
	}
	for _, w := range d.Warnings {
		slog.Warn("REDIS IS NOT DURABLE: "+w, "persistence", d.Persistence, "eviction", d.Eviction)
	}
	return d, true
}

// parseInfo reads INFO's "key:value" lines.
func parseInfo(text string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok && !strings.HasPrefix(k, "#") {
			out[k] = v
		}
	}
	return out
}

// IsUnavailable reports whether err means Redis could not be reached or
// cannot serve yet (down, restarting, loading its data, a failover): a
// passing state worth a retry, and a 503 to a client. A command Redis
// refused for what it was (out of memory, too large) is not.
func IsUnavailable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrFailingOver) {
		return true
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		for _, p := range []string{"LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN"} {
			if strings.HasPrefix(rerr.Error(), p) {
				return true
			}
		}
		return false
	}
	var nerr net.Error
	return errors.As(err, &nerr) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, redis.ErrClosed) || errors.Is(err, redis.ErrPoolTimeout)
}

// Retry runs a write until it lands, through a Redis outage (restart,
// failover), with policy p. A write Redis refuses for what it is (too
// large, wrong type) is not retried. Redis signals some refusals by
// closing the connection, which looks like an outage: a write that fails
// so twice while Redis answers PING in between counts as refused. A write
// that could not even connect was refused by no one: during a failover
// the sentinels can name the old primary to one dial and the new one to
// the next (PING), so a failed dial is always retried.
func (s *Store) Retry(ctx context.Context, p backoff.Policy, write func() error) error {
	refusedOnce := false
	return backoff.Retry(ctx, p, func() error {
		err := write()
		switch {
		case err == nil:
			return nil
		case !IsUnavailable(err):
			return backoff.Permanent(err)
		case errors.Is(err, ErrFailingOver), isDial(err):
			// a primary replaced mid-write, or not reached at all: not a
			// write Redis refused
		case s.Ping(ctx) == nil:
			if refusedOnce {
				return backoff.Permanent(err)
			}
			refusedOnce = true
		}
		return err
	})
}

// RetryReplicated is Retry for a write that must outlive a failover (a
// run's outcome): after it lands, it waits for a replica to have it
// (Replicated), and when the primary dies first it writes it again on the
// new one, so write must be idempotent. A replica that only lags (the
// primary answered, but no replica acknowledged in time) is not waited
// out: the write stands on the primary, with the durability of one
// Redis, and a warning says so.
func (s *Store) RetryReplicated(ctx context.Context, p backoff.Policy, write func() error) error {
	return s.Retry(ctx, p, func() error {
		if err := write(); err != nil {
			return err
		}
		err := s.Replicated(ctx)
		if err != nil && !IsUnavailable(err) {
			slog.Warn("a write landed on the primary, but no replica has it yet", "err", err)
			return nil
		}
		return err
	})
}

// isDial reports whether err is a failure to connect (nothing was sent).
func isDial(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// ConnectOptions say how a process connects to pyrunner's Redis.
type ConnectOptions struct {
	URL string // PYRUNNER_REDIS_URL
	// SentinelPassword is PYRUNNER_REDIS_SENTINEL_PASSWORD.
	SentinelPassword string
	Prefix           string        // the start of every key
	TTL              time.Duration // how long run records live
	// RecoveryWindow is how long after a Redis start script starts and
	// claims wait for workers to re-assert their runs (SetRecoveryWindow).
	RecoveryWindow time.Duration
	// RequireDurable refuses a Redis that could lose runs (CheckDurable).
	RequireDurable bool
	// TLS: the CA and client certificate of a rediss:// URL.
	TLS TLSFiles
}

// Connect opens the Store the API and the workers share, waiting out a
// Redis that is still starting (compose starts everything at once), and
// checks its durability. It returns the parsed Redis too, for asynq.
func Connect(ctx context.Context, o ConnectOptions) (*Store, Redis, error) {
	rds, err := ParseRedisURL(o.URL) // parsed once: the store and asynq share it
	if err != nil {
		return nil, Redis{}, err
	}
	if o.SentinelPassword != "" {
		rds = rds.WithSentinelPassword(o.SentinelPassword)
	}
	if rds, err = rds.WithTLSFiles(o.TLS); err != nil {
		return nil, Redis{}, err
	}
	var st *Store
	err = backoff.Retry(ctx, backoff.Startup("connect to redis"), func() (err error) {
		if err := rds.checkTLS(); err != nil {
			return err
		}
		st, err = Open(ctx, rds, o.Prefix, o.TTL)
		return rds.misconfigured(err)
	})
	if err != nil {
		return nil, Redis{}, err
	}
	st.SetRecoveryWindow(o.RecoveryWindow)
	if err := st.CheckDurable(ctx, o.RequireDurable); err != nil {
		st.Close()
		return nil, Redis{}, err
	}
	return st, rds, nil
}
