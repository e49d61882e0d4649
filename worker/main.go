// Command pyrunner-worker takes runs off the Redis queue and executes
// them: it loads K-lines read-only, runs the user's Python, and writes
// status, output and results back to Redis. Start as many as you like, on
// as many machines; they share nothing but Redis.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ztrade/pyrunner/pkg/backoff"
	"github.com/ztrade/pyrunner/pkg/config"
	"github.com/ztrade/pyrunner/pkg/executor"
	"github.com/ztrade/pyrunner/pkg/kline"
	"github.com/ztrade/pyrunner/pkg/liveness"
	"github.com/ztrade/pyrunner/pkg/metrics"
	"github.com/ztrade/pyrunner/pkg/queue"
	"github.com/ztrade/pyrunner/pkg/run"
	"github.com/ztrade/pyrunner/pkg/scriptrun"
	"github.com/ztrade/pyrunner/pkg/scripts"
	"github.com/ztrade/pyrunner/pkg/store"
)

func main() {
	if err := start(); errors.Is(err, config.ErrHelp) {
		return
	} else if err != nil {
		fmt.Fprintln(os.Stderr, "pyrunner-worker:", err)
		os.Exit(1)
	}
}

func start() error {
	cfg, err := config.Load("pyrunner-worker", os.Args[1:], os.Getenv, os.Stderr)
	if err != nil {
		return err
	}
	cfg.SetupLogging("pyrunner-worker")
	hideEnviron()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	kc := cfg.Readonly
	if m := kc.Missing(); m != "" {
		return fmt.Errorf("refusing to start: %s", m)
	}
	// Redis and the database may still be coming up (compose starts
	// everything at once): wait for them rather than exit and crash-loop.
	var db *kline.DB
	err = backoff.Retry(ctx, backoff.Startup("connect to the K-line database"), func() (err error) {
		if db, err = kline.Open(kc, cfg.MaxRows); err != nil && !kline.IsConnect(err) {
			return backoff.Permanent(err)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("refusing to start: %w", err)
	}
	defer db.Close()
	if cfg.KlineCacheMB > 0 {
		db.UseCache(kline.NewCache(int64(cfg.KlineCacheMB) << 20))
	}
	py, err := executor.FindPython(cfg.Python)
	if err != nil {
		return fmt.Errorf("refusing to start: %w", err)
	}
	exe, err := newExecutor(cfg, py, kc)
	if err != nil {
		return fmt.Errorf("refusing to start: %w", err)
	}
	defer exe.Close()
	sandbox, sandboxNote := exe.Sandbox()
	rds, err := store.ParseRedisURL(cfg.RedisURL) // parsed once: the store and asynq share it
	if err != nil {
		return fmt.Errorf("refusing to start: %w", err)
	}
	var st *store.Store
	err = backoff.Retry(ctx, backoff.Startup("connect to redis"), func() (err error) {
		st, err = store.Open(ctx, rds, cfg.KeyPrefix, cfg.ResultTTL)
		return err
	})
	if err != nil {
		return fmt.Errorf("refusing to start: %w", err)
	}
	defer st.Close()
	st.SetRecoveryWindow(liveness.RecoveryWindow)
	if err := st.CheckDurable(ctx, cfg.RequireDurableRedis); err != nil {
		return fmt.Errorf("refusing to start: %w", err)
	}

	keeper, err := scriptrun.FindKeeper()
	if err != nil {
		return fmt.Errorf("refusing to start: %w", err)
	}
	host, _ := os.Hostname()
	folder, err := scripts.New(cfg.ScriptsPath)
	if err != nil {
		return fmt.Errorf("refusing to start: %w", err)
	}
	w := &worker{
		id: fmt.Sprintf("%s:%d", host, os.Getpid()), cfg: cfg, db: db, exec: exe, store: st, scripts: folder, python: py,
		keeper: keeper, lease: scriptrun.NewLease(time.Now().Add(liveness.Fence)),
	}
	info := store.WorkerInfo{
		ID: w.id, Host: host, PID: os.Getpid(), StartedAt: run.FormatTime(time.Now()),
		Executor: exe.Mode(), Sandbox: sandbox, SandboxNote: sandboxNote, Python: py, DBType: db.Type(),
		ResearchConcurrency: cfg.ResearchConcurrency, ScriptConcurrency: cfg.ScriptConcurrency,
	}
	if n, err := liveness.Restarted(ctx, st, w.id); err != nil {
		return fmt.Errorf("refusing to start: %w", err)
	} else if n > 0 {
		slog.Warn("ended the runs of this worker's previous process (same host and pid)", "worker", w.id, "runs", n)
	}
	bg, cancelBg := context.WithCancel(context.Background())
	defer cancelBg()
	qc := queue.NewClient(rds)
	defer qc.Close()

	research := newDispatcher(st, w.id, queue.QueueResearch, cfg.ResearchConcurrency, w.handleResearch)
	scriptsD := newDispatcher(st, w.id, queue.QueueScripts, cfg.ScriptConcurrency, w.handleScript)
	research.claimed, scriptsD.claimed = qc.Drop, qc.Drop
	scriptsD.restored = w.restoreLogs
	dispatchers := map[string]*dispatcher{queue.QueueResearch: research, queue.QueueScripts: scriptsD}
	restarts := func() int64 { return 0 }
	if z, ok := exe.(interface{ ZygoteRestarts() int64 }); ok {
		restarts = z.ZygoteRestarts
	}
	w.metrics = metrics.NewWorker(metrics.WorkerGauges{
		Queues: []string{queue.QueueResearch, queue.QueueScripts},
		Slots:  func(q string) int { return cap(dispatchers[q].slots) }, Busy: func(q string) int { return dispatchers[q].busy() },
		ZygoteRestarts: restarts, Sandbox: sandbox, Executor: exe.Mode(),
	})
	observeStart := func(r *run.Run) {
		w.metrics.Started.WithLabelValues(string(r.Kind)).Inc()
		if !r.StartedAt.IsZero() && !r.CreatedAt.IsZero() {
			w.metrics.QueueWait.WithLabelValues(string(r.Kind)).Observe(r.StartedAt.Sub(r.CreatedAt).Seconds())
		}
	}
	research.started, scriptsD.started = observeStart, observeStart
	var lastBeat atomic.Int64 // unix ns of the last heartbeat Redis took
	lastBeat.Store(time.Now().UnixNano())
	if cfg.MetricsListen != "" {
		ln, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			return fmt.Errorf("refusing to start: PYRUNNER_METRICS_LISTEN: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", metrics.Handler(w.metrics.Registry))
		mux.HandleFunc("/healthz", func(rw http.ResponseWriter, _ *http.Request) {
			// Healthy while heartbeats reach Redis (the container's healthcheck).
			if since := time.Since(time.Unix(0, lastBeat.Load())); since >= liveness.Fence {
				http.Error(rw, fmt.Sprintf("no heartbeat has reached redis for %s", since.Round(time.Second)), http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(rw, "ok")
		})
		msrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go msrv.Serve(ln)
		defer msrv.Close()
		slog.Info("worker metrics", "listen", ln.Addr().String())
	}
	reassert := func() { research.reassert(bg); scriptsD.reassert(bg) }
	var serverID string // Redis's run_id at the last beat that landed
	go liveness.Beat(bg, st, func() store.WorkerInfo { return info }, func(tk liveness.Tick) {
		switch {
		case tk.SinceOK == 0:
			lastBeat.Store(time.Now().UnixNano())
			// Scripts may run until the fence time after this beat was
			// sent; their keepers kill them then unless renewed again.
			w.lease.Renew(tk.LandedAt.Add(liveness.Fence))
			if serverID != "" && tk.ServerID != serverID {
				slog.Warn("redis restarted (its run_id changed); re-asserting this worker's runs", "worker", w.id)
				go st.WarnDurable(bg)
			}
			serverID = tk.ServerID
			// Every heartbeat: records Redis lost are written again, stops
			// whose message was lost and runs ended under this worker
			// while it was away are seen here.
			reassert()
		case tk.SinceOK >= liveness.Fence:
			why := fmt.Errorf("%w: no heartbeat for %s, the reaper will end its runs at %s", scriptrun.ErrKill,
				tk.SinceOK.Round(time.Second), liveness.Stale)
			research.fence(why)
			scriptsD.fence(why)
		}
	})
	go liveness.Reap(bg, st)
	go reportMarkets(bg, db, st)
	onCancel := func(id string) { research.cancel(id); scriptsD.cancel(id) }
	// After a gap in the subscription (a reconnect), re-assert at once.
	if err := st.OnCancel(bg, onCancel, reassert); err != nil {
		return err
	}
	wakeCtx, stopWake := context.WithCancel(bg)
	defer stopWake()
	go research.wakeLoop(wakeCtx)
	go scriptsD.wakeLoop(wakeCtx)
	grace := time.Duration(cfg.TerminateTimeoutSeconds) * time.Second
	srv, err := queue.Start(queue.ServerConfig{
		Redis:           rds,
		Concurrency:     map[string]int{queue.QueueResearch: cfg.ResearchConcurrency, queue.QueueScripts: cfg.ScriptConcurrency},
		CheckInterval:   cfg.TaskCheckInterval,
		ShutdownTimeout: researchGrace + grace + 5*time.Second,
		Handlers: map[string]queue.Handler{
			queue.TypeResearch: research.fromQueue,
			queue.TypeScript:   scriptsD.fromQueue,
		},
	})
	if err != nil {
		return err
	}
	slog.Info("worker ready", "worker", w.id, "redis", config.RedactURL(cfg.RedisURL), "db_type", db.Type(),
		"python", py, "executor", exe.Mode(), "sandbox", sandbox, "research_concurrency", cfg.ResearchConcurrency,
		"script_concurrency", cfg.ScriptConcurrency, "scripts_root", w.scripts.Root())
	<-ctx.Done()
	slog.Info("worker shutting down", "worker", w.id)
	// Take nothing new; stop scripts now (they end terminated, never
	// re-run); let research runs finish for a moment, then end them too.
	stopWake()
	scriptsD.halt()
	go func() {
		time.Sleep(researchGrace)
		research.halt()
	}()
	srv.Stop()
	scriptsD.drain(grace + 5*time.Second)
	research.drain(researchGrace + 5*time.Second)
	cancelBg()
	if err := st.RemoveWorker(context.Background(), w.id); err != nil {
		slog.Warn("could not remove this worker from Redis; its entry expires on its own", "worker", w.id, "err", err)
	}
	slog.Info("worker stopped", "worker", w.id)
	return nil
}

// researchGrace is how long a stopping worker lets research runs finish.
const researchGrace = 5 * time.Second

// newExecutor builds the configured executor. Inside the sandbox, the
// worker's config file, its SQLite database and its state are masked.
func newExecutor(cfg *config.Config, py string, kc kline.Config) (executor.Executor, error) {
	hide := []string{cfg.ZtradeConfig, cfg.StateDir, cfg.LogsDir}
	if kc.DBType() == "sqlite" {
		hide = append(hide, strings.TrimPrefix(strings.SplitN(kc.URI, "?", 2)[0], "file:"))
	}
	opt := executor.Options{
		Python:      py,
		WorkDir:     cfg.WorkDir,
		Passthrough: cfg.EnvPassthrough,
		Sandbox:     cfg.Sandbox,
		Hide:        hide,
		Preload:     cfg.Preload,
		Limits: executor.Limits{
			MaxOutputBytes: cfg.MaxOutputBytes,
			MaxImages:      cfg.MaxImages,
			MaxImageBytes:  cfg.MaxImageBytes,
			MemoryBytes:    int64(cfg.MemoryLimitMB) << 20,
			FileBytes:      int64(cfg.MaxFileMB) << 20,
			OpenFiles:      1024,
			Processes:      cfg.MaxProcs,
			DiskBytes:      int64(cfg.DiskMB) << 20,
			MaxResultBytes: cfg.MaxResultBytes,
		},
	}
	if cfg.Executor == "cold" {
		return executor.NewCold(opt)
	}
	return executor.NewWarm(opt)
}

// hideEnviron makes this process non-dumpable, so processes of the same
// user (user code, when the worker is not root) cannot read its
// /proc/<pid>/environ, where the DB password and Redis URL live.
func hideEnviron() {
	const prSetDumpable = 4
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetDumpable, 0, 0); errno != 0 {
		slog.Warn("could not make the worker non-dumpable", "err", errno)
	}
}

// reportMarkets records the database's markets in Redis at start and
// every minute, for the research API's market list (the API never reads
// the K-line database itself).
func reportMarkets(ctx context.Context, db *kline.DB, st *store.Store) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		if ms, err := db.Tables(ctx, 1000); err != nil {
			slog.Warn("could not list markets", "err", err)
		} else if b, err := json.Marshal(ms); err == nil {
			if err := st.SetMarkets(ctx, b); err != nil && ctx.Err() == nil {
				slog.Warn("could not record markets", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
