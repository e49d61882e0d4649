// Package queue puts runs on Redis with hibiken/asynq and serves them to
// workers. A task carries only the run id (the request lives in the run
// record) and uses the run id as its asynq task id, so enqueueing the same
// run twice is refused by asynq itself. Research and script tasks use
// their own queues so each gets its own share of a worker.
package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/hibiken/asynq"
	asynqmetrics "github.com/hibiken/asynq/x/metrics"
	"github.com/hibiken/asynqmon"
	"github.com/prometheus/client_golang/prometheus"
)

// Queue and task type names.
const (
	QueueResearch = "research"
	QueueScripts  = "scripts"
	TypeResearch  = "research:run"
	TypeScript    = "script:run"
)

type payload struct {
	RunID string `json:"run_id"`
}

// Client enqueues and cancels tasks and reads queue sizes.
type Client struct {
	client    *asynq.Client
	inspector *asynq.Inspector
}

// NewClient connects to redis (a store.Redis, parsed once for the store and
// asynq alike).
func NewClient(redis asynq.RedisConnOpt) *Client {
	return &Client{client: asynq.NewClient(redis), inspector: asynq.NewInspector(redis)}
}

// Close releases the connections.
// Collector is asynq's own Prometheus collector of this Redis's queues
// (asynq_tasks_enqueued_total, asynq_queue_size, asynq_queue_latency_seconds, …).
func (c *Client) Collector() prometheus.Collector {
	return asynqmetrics.NewQueueMetricsCollector(c.inspector)
}

// Monitor is asynqmon, the web UI of asynq's queues, rooted at path.
func Monitor(redis asynq.RedisConnOpt, path string) http.Handler {
	return asynqmon.New(asynqmon.Options{RootPath: path, RedisConnOpt: redis})
}

func (c *Client) Close() error {
	c.inspector.Close()
	return c.client.Close()
}

// Enqueue queues run runID on queue (QueueResearch or QueueScripts) with
// the run id as asynq's task id (enqueuing twice is refused), no retries,
// and timeout as the task's deadline (none when 0).
func (c *Client) Enqueue(ctx context.Context, queue, runID string, timeout time.Duration) error {
	typ := map[string]string{QueueResearch: TypeResearch, QueueScripts: TypeScript}[queue]
	if typ == "" {
		return fmt.Errorf("queue: unknown queue %q", queue)
	}
	return c.enqueue(ctx, typ, queue, runID, timeout)
}

func (c *Client) enqueue(ctx context.Context, typ, queue, runID string, timeout time.Duration) error {
	b, _ := json.Marshal(payload{RunID: runID})
	opts := []asynq.Option{asynq.TaskID(runID), asynq.Queue(queue), asynq.MaxRetry(0)}
	if timeout > 0 {
		opts = append(opts, asynq.Timeout(timeout))
	} else {
		// asynq's default is 30 minutes; a year stands for "no limit".
		opts = append(opts, asynq.Timeout(365*24*time.Hour))
	}
	if _, err := c.client.EnqueueContext(ctx, asynq.NewTask(typ, b), opts...); err != nil {
		return fmt.Errorf("queue: enqueue %s: %w", runID, err)
	}
	return nil
}

// Drop removes a run's task if it is still waiting in queue. It is
// best-effort: a task already taken finds its run stopped and does nothing.
func (c *Client) Drop(queue, runID string) {
	if err := c.inspector.DeleteTask(queue, runID); err != nil && !errors.Is(err, asynq.ErrTaskNotFound) {
		slog.Debug("task not dropped from queue", "run_id", runID, "err", err)
	}
}

// Sizes are a queue's task counts.
type Sizes struct {
	Pending   int `json:"pending"`
	Active    int `json:"active"`
	Scheduled int `json:"scheduled"`
	Retry     int `json:"retry"`
	Archived  int `json:"archived"`
	// MaxQueued is the admission cap pending is held to (0: none).
	MaxQueued int `json:"max_queued"`
}

// Sizes reports the task counts of each named queue (zeros for a queue
// asynq has not seen yet).
func (c *Client) Sizes(queues ...string) map[string]Sizes {
	out := map[string]Sizes{}
	for _, q := range queues {
		info, err := c.inspector.GetQueueInfo(q)
		if err != nil {
			out[q] = Sizes{}
			continue
		}
		out[q] = Sizes{Pending: info.Pending, Active: info.Active, Scheduled: info.Scheduled, Retry: info.Retry, Archived: info.Archived}
	}
	return out
}

// Handler runs one task, given its run id. It returns an error only for
// infrastructure faults; a run's own failure is written to its record.
type Handler func(ctx context.Context, runID string) error

// ServerConfig configures a worker's asynq server.
type ServerConfig struct {
	Redis asynq.RedisConnOpt
	// Concurrency per queue name; the server runs their sum at once and
	// picks queues in proportion to these numbers.
	Concurrency map[string]int
	// CheckInterval is how long an idle worker waits before polling an
	// empty queue again (asynq defaults to 1 s, which is 1 s of latency).
	CheckInterval   time.Duration
	ShutdownTimeout time.Duration
	Handlers        map[string]Handler
}

// Server is a running asynq server.
type Server struct{ srv *asynq.Server }

// Start starts processing tasks; Stop ends it.
func Start(cfg ServerConfig) (*Server, error) {
	opt := cfg.Redis
	total := 0
	for _, n := range cfg.Concurrency {
		total += n
	}
	srv := asynq.NewServer(opt, asynq.Config{
		Concurrency:       total,
		Queues:            cfg.Concurrency,
		TaskCheckInterval: cfg.CheckInterval,
		ShutdownTimeout:   cfg.ShutdownTimeout,
		Logger:            slogAdapter{},
		LogLevel:          asynq.WarnLevel,
		// A run's failure is recorded by its handler; never retry blindly.
		IsFailure: func(error) bool { return true },
	})
	mux := asynq.NewServeMux()
	for typ, h := range cfg.Handlers {
		h := h
		mux.HandleFunc(typ, func(ctx context.Context, t *asynq.Task) error {
			var p payload
			if err := json.Unmarshal(t.Payload(), &p); err != nil || p.RunID == "" {
				return fmt.Errorf("queue: bad payload %q: %w", t.Payload(), asynq.SkipRetry)
			}
			if err := h(ctx, p.RunID); err != nil {
				return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
			}
			return nil
		})
	}
	if err := srv.Start(mux); err != nil {
		return nil, fmt.Errorf("queue: start server: %w", err)
	}
	return &Server{srv: srv}, nil
}

// Stop stops taking tasks and waits (up to the shutdown timeout) for the
// running ones; their contexts are then cancelled.
func (s *Server) Stop() {
	s.srv.Stop()
	s.srv.Shutdown()
}

// slogAdapter sends asynq's log lines to slog.
type slogAdapter struct{}

func (slogAdapter) Debug(args ...any) { slog.Debug(fmt.Sprint(args...), "component", "asynq") }
func (slogAdapter) Info(args ...any)  { slog.Info(fmt.Sprint(args...), "component", "asynq") }
func (slogAdapter) Warn(args ...any)  { slog.Warn(fmt.Sprint(args...), "component", "asynq") }
func (slogAdapter) Error(args ...any) { slog.Error(fmt.Sprint(args...), "component", "asynq") }
func (slogAdapter) Fatal(args ...any) {
	slog.Error(fmt.Sprint(args...), "component", "asynq")
	panic(fmt.Sprint(args...))
}
