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

// app is one worker process: what newApp built, what serve started, and
// what shutdown and close end, in that order.
type app struct {
	cfg  *config.Config
	w    *worker
	info store.WorkerInfo
	rds  store.Redis
	qc   *queue.Client

	research, scripts *dispatcher

	// bg lives until the worker has stopped (heartbeats, the reaper,
	// subscriptions); wake until it stops taking runs.
	bg, wake             context.Context
	cancelBg, cancelWake context.CancelFunc

	srv      *queue.Server
	metrics  *http.Server
	lastBeat atomic.Int64 // unix ns of the last heartbeat Redis took
	serverID string       // Redis's run_id at the last beat that landed
	closers  []func()
}

// researchGrace is how long a stopping worker lets research runs finish.
const researchGrace = 5 * time.Second

// signalContext ends on SIGINT or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
}

// newApp connects to the K-line database and Redis (waiting for both:
// compose starts everything at once), starts the executor, and builds
// the worker and its two dispatchers. Nothing runs yet.
func newApp(ctx context.Context, cfg *config.Config) (*app, error) {
	a := &app{cfg: cfg}
	db, err := openKlines(ctx, cfg)
	if err != nil {
		return a.fail(err)
	}
	a.closers = append(a.closers, func() { db.Close() })
	py, err := executor.FindPython(cfg.Python)
	if err != nil {
		return a.fail(err)
	}
	exe, err := newExecutor(cfg, py, cfg.Readonly)
	if err != nil {
		return a.fail(err)
	}
	a.closers = append(a.closers, func() { exe.Close() })
	st, rds, err := store.Connect(ctx, store.ConnectOptions{URL: cfg.RedisURL, SentinelPassword: cfg.RedisSentinelPassword, Prefix: cfg.KeyPrefix, TTL: cfg.ResultTTL,
		RecoveryWindow: liveness.RecoveryWindow, RequireDurable: cfg.RequireDurableRedis,
		TLS: store.TLSFiles{CA: cfg.RedisCAFile, Cert: cfg.RedisCertFile, Key: cfg.RedisKeyFile}})
	if err != nil {
		return a.fail(err)
	}
	a.closers = append(a.closers, func() { st.Close() })
	a.rds = rds
	if a.w, err = newWorker(cfg, db, exe, st, py); err != nil {
		return a.fail(err)
	}
	a.info = workerInfo(a.w)
	if n, err := liveness.Restarted(ctx, st, a.w.id); err != nil {
		return a.fail(err)
	} else if n > 0 {
		slog.Warn("ended the runs of this worker's previous process (same host and pid)", "worker", a.w.id, "runs", n)
	}
	a.qc = queue.NewClient(rds)
	a.closers = append(a.closers, func() { a.qc.Close() })
	a.bg, a.cancelBg = context.WithCancel(context.Background())
	a.wake, a.cancelWake = context.WithCancel(a.bg)
	a.dispatchers()
	return a, nil
}

// fail closes what newApp opened so far and returns err.
func (a *app) fail(err error) (*app, error) {
	a.close()
	return nil, err
}

// close releases what newApp opened, last first.
func (a *app) close() {
	if a.cancelBg != nil {
		a.cancelBg()
	}
	if a.metrics != nil {
		if err := a.metrics.Close(); err != nil {
			slog.Warn("closing the worker metrics server", "err", err)
		}
	}
	for i := len(a.closers) - 1; i >= 0; i-- {
		a.closers[i]()
	}
	a.closers = nil
}

// openKlines opens the read-only K-line database, waiting for it.
func openKlines(ctx context.Context, cfg *config.Config) (*kline.DB, error) {
	kc := cfg.Readonly
	if m := kc.Missing(); m != "" {
		return nil, errors.New(m)
	}
	var db *kline.DB
	err := backoff.Retry(ctx, backoff.Startup("connect to the K-line database"), func() (err error) {
		if db, err = kline.Open(kc, cfg.MaxRows); err != nil && !kline.IsConnect(err) {
			return backoff.Permanent(err)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if cfg.KlineCacheMB > 0 {
		db.UseCache(kline.NewCache(int64(cfg.KlineCacheMB) << 20))
	}
	return db, nil
}

// newWorker builds the worker that runs what the dispatchers claim.
func newWorker(cfg *config.Config, db *kline.DB, exe executor.Executor, st *store.Store, py string) (*worker, error) {
	keeper, err := scriptrun.FindKeeper()
	if err != nil {
		return nil, err
	}
	folder, err := scripts.New(cfg.ScriptsPath)
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	return &worker{
		id: fmt.Sprintf("%s:%d", host, os.Getpid()), host: host, cfg: cfg, db: db, exec: exe, store: st,
		scripts: folder, python: py, keeper: keeper, lease: scriptrun.NewLease(time.Now().Add(liveness.Fence)),
	}, nil
}

// workerInfo is what w's heartbeats say of it (GET /health lists it).
func workerInfo(w *worker) store.WorkerInfo {
	sandbox, note := w.exec.Sandbox()
	return store.WorkerInfo{
		ID: w.id, Host: w.host, PID: os.Getpid(), StartedAt: run.FormatTime(time.Now()),
		Executor: w.exec.Mode(), Sandbox: sandbox, SandboxNote: note, Python: w.python, DBType: w.db.Type(),
		ResearchConcurrency: w.cfg.ResearchConcurrency, ScriptConcurrency: w.cfg.ScriptConcurrency,
	}
}

// dispatchers builds the research and script dispatchers and the
// metrics that watch them.
func (a *app) dispatchers() {
	w, cfg := a.w, a.cfg
	a.research = newDispatcher(w.store, w.id, queue.QueueResearch, cfg.ResearchConcurrency, w.handleResearch)
	a.scripts = newDispatcher(w.store, w.id, queue.QueueScripts, cfg.ScriptConcurrency, w.handleScript)
	a.research.claimed, a.scripts.claimed = a.qc.Drop, a.qc.Drop
	a.scripts.restored = w.restoreLogs
	a.research.prepare, a.research.ready = w.exec.Prepare, w.exec.Ready
	byQueue := map[string]*dispatcher{queue.QueueResearch: a.research, queue.QueueScripts: a.scripts}
	restarts := func() int64 { return 0 }
	if z, ok := w.exec.(interface{ ZygoteRestarts() int64 }); ok {
		restarts = z.ZygoteRestarts
	}
	w.metrics = metrics.NewWorker(metrics.WorkerGauges{
		Queues: []string{queue.QueueResearch, queue.QueueScripts},
		Slots:  func(q string) int { return cap(byQueue[q].slots) }, Busy: func(q string) int { return byQueue[q].busy() },
		ZygoteRestarts: restarts, Sandbox: a.info.Sandbox, Executor: a.info.Executor,
	})
	observeStart := func(r *run.Run) {
		w.metrics.Started.WithLabelValues(string(r.Kind)).Inc()
		if !r.StartedAt.IsZero() && !r.CreatedAt.IsZero() {
			w.metrics.QueueWait.WithLabelValues(string(r.Kind)).Observe(r.StartedAt.Sub(r.CreatedAt).Seconds())
		}
	}
	a.research.started, a.scripts.started = observeStart, observeStart
}

// serve starts everything that runs: the metrics and health server,
// heartbeats, the reaper, the market list, the stop subscription, the
// wake loops, and asynq's server.
func (a *app) serve() error {
	a.lastBeat.Store(time.Now().UnixNano())
	if err := a.serveMetrics(); err != nil {
		return fmt.Errorf("refusing to start: PYRUNNER_METRICS_LISTEN: %w", err)
	}
	st := a.w.store
	info := func() store.WorkerInfo {
		i := a.info
		i.Ready = a.w.exec.Ready()
		return i
	}
	go liveness.Beat(a.bg, st, info, a.onBeat)
	go liveness.Reap(a.bg, st, func(cause string) { a.w.metrics.Restarts.WithLabelValues(cause).Inc() })
	go reportMarkets(a.bg, a.w.db, st)
	onCancel := func(id string) { a.research.cancel(id); a.scripts.cancel(id) }
	// After a gap in the subscription (a reconnect), re-assert at once.
	if err := st.OnCancel(a.bg, onCancel, a.reassert); err != nil {
		return err
	}
	go a.research.wakeLoop(a.wake)
	go a.scripts.wakeLoop(a.wake)
	go a.scripts.restartLoop(a.wake)
	var err error
	a.srv, err = queue.Start(queue.ServerConfig{
		Redis:           a.rds,
		Concurrency:     map[string]int{queue.QueueResearch: a.cfg.ResearchConcurrency, queue.QueueScripts: a.cfg.ScriptConcurrency},
		CheckInterval:   a.cfg.TaskCheckInterval,
		ShutdownTimeout: researchGrace + a.scriptGrace() + 5*time.Second,
		Handlers: map[string]queue.Handler{
			queue.TypeResearch: a.research.fromQueue,
			queue.TypeScript:   a.scripts.fromQueue,
		},
	})
	if err != nil {
		return err
	}
	slog.Info("worker ready", "worker", a.w.id, "redis", config.RedactURL(a.cfg.RedisURL), "db_type", a.info.DBType,
		"python", a.info.Python, "executor", a.info.Executor, "sandbox", a.info.Sandbox,
		"research_concurrency", a.cfg.ResearchConcurrency, "script_concurrency", a.cfg.ScriptConcurrency,
		"scripts_root", a.w.scripts.Root())
	return nil
}

// scriptGrace is how long a stopping script gets after SIGTERM.
func (a *app) scriptGrace() time.Duration {
	return time.Duration(a.cfg.TerminateTimeoutSeconds) * time.Second
}

// reassert checks every run this worker holds against Redis.
func (a *app) reassert() { a.research.reassert(a.bg); a.scripts.reassert(a.bg) }

// onBeat follows the heartbeats: one that landed renews the scripts'
// lease and re-asserts the runs; none for the fence time kills them.
func (a *app) onBeat(tk liveness.Tick) {
	switch {
	case tk.SinceOK == 0:
		a.lastBeat.Store(time.Now().UnixNano())
		// Scripts may run until the fence time after this beat was
		// sent; their keepers kill them then unless renewed again.
		a.w.lease.Renew(tk.LandedAt.Add(liveness.Fence))
		if a.serverID != "" && tk.ServerID != a.serverID {
			slog.Warn("redis restarted (its run_id changed); re-asserting this worker's runs", "worker", a.w.id)
			go a.w.store.WarnDurable(a.bg)
		}
		a.serverID = tk.ServerID
		// Every heartbeat: records Redis lost are written again, stops
		// whose message was lost and runs ended under this worker while
		// it was away are seen here.
		a.reassert()
	case tk.SinceOK >= liveness.Fence:
		why := fmt.Errorf("%w: no heartbeat for %s, the reaper will end its runs at %s", scriptrun.ErrKill,
			tk.SinceOK.Round(time.Second), liveness.Stale)
		a.research.fence(why)
		a.scripts.fence(why)
	}
}

// serveMetrics serves /metrics and /healthz on PYRUNNER_METRICS_LISTEN.
func (a *app) serveMetrics() error {
	if a.cfg.MetricsListen == "" {
		return nil
	}
	ln, err := net.Listen("tcp", a.cfg.MetricsListen)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", metrics.Handler(a.w.metrics.Registry))
	mux.HandleFunc("/healthz", func(rw http.ResponseWriter, _ *http.Request) {
		// Healthy while heartbeats reach Redis (the container's healthcheck).
		if since := time.Since(time.Unix(0, a.lastBeat.Load())); since >= liveness.Fence {
			http.Error(rw, fmt.Sprintf("no heartbeat has reached redis for %s", since.Round(time.Second)), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(rw, "ok")
	})
	a.metrics = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := a.metrics.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			slog.Error("worker metrics server stopped", "err", err)
		}
	}()
	slog.Info("worker metrics", "listen", ln.Addr().String())
	return nil
}

// shutdown takes nothing new and stops scripts at once (they end
// terminated, never re-run); research runs may finish for a moment,
// then end too. The worker leaves the list of workers last.
func (a *app) shutdown() {
	slog.Info("worker shutting down", "worker", a.w.id)
	a.cancelWake()
	a.scripts.halt()
	go func() {
		time.Sleep(researchGrace)
		a.research.halt()
	}()
	a.srv.Stop()
	a.scripts.drain(a.scriptGrace() + 5*time.Second)
	a.research.drain(researchGrace + 5*time.Second)
	a.cancelBg()
	if err := a.w.store.RemoveWorker(context.Background(), a.w.id); err != nil {
		slog.Warn("could not remove this worker from Redis; its entry expires on its own", "worker", a.w.id, "err", err)
	}
	slog.Info("worker stopped", "worker", a.w.id)
}

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
