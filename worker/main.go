// Command pyrunner-worker takes runs off the Redis queue and executes
// them: it loads K-lines read-only, runs the user's Python, and writes
// status, output and results back to Redis. Start as many as you like, on
// as many machines; they share nothing but Redis.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/ztrade/pyrunner/pkg/config"
	"github.com/ztrade/pyrunner/pkg/executor"
	"github.com/ztrade/pyrunner/pkg/kline"
	"github.com/ztrade/pyrunner/pkg/liveness"
	"github.com/ztrade/pyrunner/pkg/queue"
	"github.com/ztrade/pyrunner/pkg/run"
	"github.com/ztrade/pyrunner/pkg/store"
)

func main() {
	if err := start(); err != nil {
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

	kc := kline.Config(cfg.Readonly)
	if m := kc.Missing(); m != "" {
		return fmt.Errorf("refusing to start: %s", m)
	}
	db, err := kline.Open(kc, cfg.MaxRows)
	if err != nil {
		return fmt.Errorf("refusing to start: %w", err)
	}
	defer db.Close()
	py, err := executor.FindPython(cfg.Python)
	if err != nil {
		return fmt.Errorf("refusing to start: %w", err)
	}
	sandbox, err := executor.ProbeSandbox(cfg.Sandbox)
	if err != nil {
		return fmt.Errorf("refusing to start: %w", err)
	}
	exe, err := newExecutor(cfg, py, sandbox, kc)
	if err != nil {
		return fmt.Errorf("refusing to start: %w", err)
	}
	defer exe.Close()
	st, err := store.Open(ctx, cfg.RedisURL, cfg.KeyPrefix, cfg.ResultTTL)
	if err != nil {
		return fmt.Errorf("refusing to start: %w", err)
	}
	defer st.Close()

	host, _ := os.Hostname()
	w := &worker{
		id: fmt.Sprintf("%s:%d", host, os.Getpid()), cfg: cfg, db: db, exec: exe, store: st,
	}
	info := store.WorkerInfo{
		ID: w.id, Host: host, PID: os.Getpid(), StartedAt: run.FormatTime(time.Now()),
		Executor: exe.Mode(), Sandbox: sandbox, Python: py, DBType: db.Type(),
		ResearchConcurrency: cfg.ResearchConcurrency, ScriptConcurrency: cfg.ScriptConcurrency,
	}
	bg, cancelBg := context.WithCancel(context.Background())
	defer cancelBg()
	go liveness.Beat(bg, st, func() store.WorkerInfo { return info })
	go liveness.Reap(bg, st)

	research := newDispatcher(st, w.id, queue.QueueResearch, cfg.ResearchConcurrency, w.handleResearch)
	if err := st.OnCancel(bg, research.cancel); err != nil {
		return err
	}
	runsCtx, cancelRuns := context.WithCancel(context.Background())
	defer cancelRuns()
	wakeCtx, stopWake := context.WithCancel(bg)
	defer stopWake()
	go research.wakeLoop(wakeCtx, runsCtx)
	srv, err := queue.Start(queue.ServerConfig{
		RedisURL:        cfg.RedisURL,
		Concurrency:     map[string]int{queue.QueueResearch: cfg.ResearchConcurrency},
		CheckInterval:   cfg.TaskCheckInterval,
		ShutdownTimeout: shutdownGrace,
		Handlers:        map[string]queue.Handler{queue.TypeResearch: research.fromQueue},
	})
	if err != nil {
		return err
	}
	slog.Info("worker ready", "worker", w.id, "redis", config.RedactURL(cfg.RedisURL), "db_type", db.Type(),
		"python", py, "executor", exe.Mode(), "sandbox", sandbox, "research_concurrency", cfg.ResearchConcurrency)
	<-ctx.Done()
	slog.Info("worker shutting down", "worker", w.id)
	stopWake()
	srv.Stop() // waits up to shutdownGrace, then cancels its runs
	if !research.drain(time.Second) {
		cancelRuns() // runs still going end terminated
		research.drain(10 * time.Second)
	}
	cancelBg()
	st.RemoveWorker(context.Background(), w.id)
	return nil
}

// newExecutor builds the configured executor. Inside the sandbox, the
// worker's config file, its SQLite database and its state are masked.
// shutdownGrace is how long a stopping worker lets research runs finish.
const shutdownGrace = 5 * time.Second

func newExecutor(cfg *config.Config, py, sandbox string, kc kline.Config) (executor.Executor, error) {
	hide := []string{cfg.ZtradeConfig, cfg.StateDir, cfg.LogsDir}
	if kc.DBType() == "sqlite" {
		hide = append(hide, strings.TrimPrefix(strings.SplitN(kc.URI, "?", 2)[0], "file:"))
	}
	opt := executor.Options{
		Python:      py,
		WorkDir:     cfg.WorkDir,
		Passthrough: cfg.EnvPassthrough,
		Sandbox:     sandbox,
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
