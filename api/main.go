// Command pyrunner-api is pyrunner's HTTP front: it validates requests,
// records and queues runs in Redis, and answers from what the workers
// write back. It never touches the K-line database and keeps no state of
// its own, so any number can run behind a load balancer.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"

	"github.com/ztrade/pyrunner/pkg/config"
	"github.com/ztrade/pyrunner/pkg/liveness"
	"github.com/ztrade/pyrunner/pkg/queue"
	"github.com/ztrade/pyrunner/pkg/scripts"
	"github.com/ztrade/pyrunner/pkg/store"
)

func main() {
	if err := start(); err != nil {
		fmt.Fprintln(os.Stderr, "pyrunner-api:", err)
		os.Exit(1)
	}
}

// server holds what the handlers share.
type server struct {
	cfg       *config.Config
	store     *store.Store
	queue     *queue.Client
	waiter    *store.Waiter
	logWaiter *store.Waiter
	scripts   *scripts.Folder
}

func start() error {
	cfg, err := config.Load("pyrunner-api", os.Args[1:], os.Getenv, os.Stderr)
	if err != nil {
		return err
	}
	cfg.SetupLogging("pyrunner-api")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	st, err := store.Open(ctx, cfg.RedisURL, cfg.KeyPrefix, cfg.ResultTTL)
	if err != nil {
		return err
	}
	defer st.Close()
	q, err := queue.NewClient(cfg.RedisURL)
	if err != nil {
		return err
	}
	defer q.Close()
	bg, cancelBg := context.WithCancel(context.Background())
	defer cancelBg()
	waiter, err := st.NewWaiter(bg)
	if err != nil {
		return fmt.Errorf("subscribe to completions: %w", err)
	}
	logWaiter, err := st.NewLogWaiter(bg)
	if err != nil {
		return fmt.Errorf("subscribe to output: %w", err)
	}
	go liveness.Reap(bg, st)
	folder, err := scripts.New(cfg.ScriptsPath)
	if err != nil {
		return err
	}
	if list, err := folder.Rescan(); err != nil {
		slog.Warn("scripts folder not scanned", "root", folder.Root(), "err", err)
	} else {
		slog.Info("scripts scanned", "root", folder.Root(), "count", len(list))
	}

	s := &server{cfg: cfg, store: st, queue: q, waiter: waiter, logWaiter: logWaiter, scripts: folder}
	e := s.routes()
	httpSrv := &http.Server{Addr: cfg.Listen, Handler: e, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- httpSrv.ListenAndServe() }()
	slog.Info("api ready", "listen", cfg.Listen, "redis", config.RedactURL(cfg.RedisURL))
	select {
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
		}
	case <-ctx.Done():
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return httpSrv.Shutdown(shutCtx)
}

// routes builds the Echo router with every endpoint.
func (s *server) routes() *echo.Echo {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = errorHandler
	e.Use(middleware.Recover())
	e.Use(middleware.BodyLimit(fmt.Sprintf("%dB", 2*s.cfg.MaxCodeBytes+64<<10)))

	e.GET("/health", s.health)
	e.GET(s.cfg.APIPrefix+"/health", s.health)

	e.POST("/v1/research/run", s.researchRun)
	e.GET("/v1/research/runs/:id", s.researchGet)
	e.POST("/v1/research/runs/:id/cancel", s.researchCancel)

	p := s.cfg.APIPrefix
	e.GET(p+"/scripts", s.listScripts)
	e.POST(p+"/scripts/rescan", s.rescanScripts)
	e.POST(p+"/runs", s.startRun)
	e.GET(p+"/runs", s.listRuns)
	e.GET(p+"/runs/active", s.activeRuns)
	e.POST(p+"/runs/all", s.startAll)
	e.POST(p+"/runs/stop_all", s.stopAll)
	e.GET(p+"/runs/:run_id", s.getRun)
	e.POST(p+"/runs/:run_id/stop", s.stopRun)
	e.GET(p+"/runs/:run_id/logs", s.runLogs)
	return e
}
