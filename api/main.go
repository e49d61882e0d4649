// Command pyrunner-api is pyrunner's HTTP front: it validates requests,
// records and queues runs in Redis, and answers from what the workers
// write back. It never touches the K-line database and keeps no state of
// its own, so any number can run behind a load balancer.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"

	"github.com/ztrade/pyrunner/pkg/auth"
	"github.com/ztrade/pyrunner/pkg/config"
	"github.com/ztrade/pyrunner/pkg/liveness"
	"github.com/ztrade/pyrunner/pkg/metrics"
	"github.com/ztrade/pyrunner/pkg/queue"
	"github.com/ztrade/pyrunner/pkg/run"
	"github.com/ztrade/pyrunner/pkg/scripts"
	"github.com/ztrade/pyrunner/pkg/store"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "token" {
		if err := mintCommand(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "pyrunner-api token:", err)
			os.Exit(2)
		}
		return
	}
	if err := start(); errors.Is(err, config.ErrHelp) {
		return
	} else if err != nil {
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
	verifier  *auth.Verifier // nil without SCRIPT_JWT_SECRET
	minter    *auth.Minter
	metrics   *metrics.API
	monitor   http.Handler // asynqmon under /monitor/
	throttle  *throttle    // admin secret exchange failures, per client
	// tokenThrottle is bad bearer tokens (static or JWT), per client.
	tokenThrottle *throttle
	// echo is the router (routes), through which MCP tools call the
	// endpoints they wrap.
	echo *echo.Echo
}

func start() error {
	cfg, err := config.Load("pyrunner-api", os.Args[1:], os.Getenv, os.Stderr)
	if err != nil {
		return err
	}
	cfg.SetupLogging("pyrunner-api")
	if cfg.JWTAuth && cfg.JWTSecret == "" {
		return fmt.Errorf("SCRIPT_JWT_AUTH=true needs SCRIPT_JWT_SECRET (there is no default secret)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	st, rds, err := store.Connect(ctx, store.ConnectOptions{URL: cfg.RedisURL, SentinelPassword: cfg.RedisSentinelPassword, Prefix: cfg.KeyPrefix, TTL: cfg.ResultTTL,
		RecoveryWindow: liveness.RecoveryWindow, RequireDurable: cfg.RequireDurableRedis,
		TLS: store.TLSFiles{CA: cfg.RedisCAFile, Cert: cfg.RedisCertFile, Key: cfg.RedisKeyFile}})
	if err != nil {
		return fmt.Errorf("refusing to start: %w", err)
	}
	defer st.Close()
	q := queue.NewClient(rds)
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
	go watchRestarts(bg, st)
	folder, err := scripts.New(cfg.ScriptsPath)
	if err != nil {
		return err
	}
	if list, err := folder.Rescan(); err != nil {
		slog.Warn("scripts folder not scanned", "root", folder.Root(), "err", err)
	} else {
		slog.Info("scripts scanned", "root", folder.Root(), "count", len(list))
	}

	s := &server{cfg: cfg, store: st, queue: q, waiter: waiter, logWaiter: logWaiter, scripts: folder, throttle: newThrottle(5), tokenThrottle: newThrottle(10)}
	s.verifier, s.minter = jwtFromConfig(cfg)
	s.metrics = metrics.NewAPI(q.Collector(), metrics.QueueDepth([]string{queue.QueueResearch, queue.QueueScripts}, cfg.MaxQueued,
		func(name string) (int64, error) { return st.QueueDepth(context.Background(), name) }))
	go liveness.Reap(bg, st, func(cause string) { s.metrics.Restarts.WithLabelValues(cause).Inc() })
	go s.fireSchedules(bg)
	s.monitor = queue.Monitor(rds, "/monitor")
	e := s.routes()
	httpSrv := &http.Server{Addr: cfg.Listen, Handler: e, ReadHeaderTimeout: 10 * time.Second}
	ln, err := net.Listen("tcp", cfg.Listen) // bound before "ready" is said; a taken port is an error
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	errc := make(chan error, 1)
	go func() { errc <- httpSrv.Serve(ln) }()
	slog.Info("api ready", "listen", ln.Addr().String(), "redis", config.RedactURL(cfg.RedisURL))
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

// watchRestarts looks at Redis every few seconds and, when it has
// restarted (its run_id changed) or the API reconnected to another one,
// reads its durability again and warns if a crash of it would lose runs.
func watchRestarts(ctx context.Context, st *store.Store) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	seen := ""
	for {
		if d, err := st.Durability(ctx); err == nil {
			if seen != "" && d.ServerID != seen {
				slog.Warn("redis restarted (its run_id changed)", "persistence", d.Persistence, "eviction", d.Eviction)
				st.WarnDurable(ctx)
			}
			seen = d.ServerID
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// serveMetrics is GET /metrics: the API's Prometheus metrics.
func (s *server) serveMetrics(c echo.Context) error {
	if s.metrics == nil {
		return run.Errorf(run.ECodeNotFound, "no metrics")
	}
	metrics.Handler(s.metrics.Registry).ServeHTTP(c.Response(), c.Request())
	return nil
}

// serveMonitor hands /monitor/… to asynqmon.
func (s *server) serveMonitor(c echo.Context) error {
	if s.monitor == nil {
		return run.Errorf(run.ECodeNotFound, "no monitor")
	}
	s.monitor.ServeHTTP(c.Response(), c.Request())
	return nil
}

// routes builds the Echo router with every endpoint.
func (s *server) routes() *echo.Echo {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = errorHandler
	e.IPExtractor = ipExtractor(s.cfg.TrustedProxyNets)
	e.Use(middleware.Recover())
	e.Use(middleware.BodyLimit(fmt.Sprintf("%dB", 2*s.cfg.MaxCodeBytes+64<<10)))

	// Public: health, docs, the spec and the admin exchange.
	e.GET("/health", s.health)
	e.GET(s.cfg.APIPrefix+"/health", s.health)
	e.GET("/openapi.json", s.openapiJSON)
	e.GET("/docs", s.docs)
	e.GET("/docs/", s.docs)
	e.GET("/docs/:file", s.docsAsset)
	e.POST(s.cfg.APIPrefix+"/auth/admin/token", s.adminToken)
	e.GET("/metrics", s.serveMetrics)
	e.GET("/ui", func(c echo.Context) error { return c.Redirect(http.StatusMovedPermanently, "ui/") })
	e.GET("/ui/*", s.ui)

	// asynqmon, the queue UI: everything, so scope * when auth is on.
	monitor := s.require(auth.ScopeAll)
	e.Any("/monitor", s.serveMonitor, monitor)
	e.Any("/monitor/*", s.serveMonitor, monitor)

	research := s.require(auth.ScopeResearchRun)
	e.POST("/v1/research/run", s.researchRun, research)
	e.GET("/v1/research/runs/:id", s.researchGet, research)
	e.POST("/v1/research/runs/:id/cancel", s.researchCancel, research)
	e.GET("/v1/research/markets", s.markets, research)

	p := s.cfg.APIPrefix
	read, runs, logs := s.require(auth.ScopeScriptsRead), s.require(auth.ScopeScriptsRun), s.require(auth.ScopeLogsRead)
	e.GET(p+"/scripts", s.listScripts, read)
	e.POST(p+"/scripts/rescan", s.rescanScripts, read)
	e.POST(p+"/runs", s.startRun, runs)
	e.GET(p+"/runs", s.listRuns, read)
	e.GET(p+"/runs/active", s.activeRuns, read)
	e.POST(p+"/runs/all", s.startAll, runs)
	e.POST(p+"/runs/stop_all", s.stopAll, runs)
	e.GET(p+"/runs/:run_id", s.getRun, read)
	e.POST(p+"/runs/:run_id/stop", s.stopRun, runs)
	e.GET(p+"/runs/:run_id/logs", s.runLogs, logs)

	// Schedules: listed with scripts:read; changed with the scope of the
	// schedule's kind (scripts:run or research:run), checked by the handler.
	change := s.require(auth.ScopeScriptsRun, auth.ScopeResearchRun)
	e.GET(p+"/schedules", s.listSchedules, read)
	e.POST(p+"/schedules", s.createSchedule, change)
	e.GET(p+"/schedules/:id", s.getSchedule, read)
	e.PATCH(p+"/schedules/:id", s.patchSchedule, change)
	e.DELETE(p+"/schedules/:id", s.deleteSchedule, change)
	e.POST(p+"/schedules/:id/trigger", s.triggerSchedule, change)

	// The Model Context Protocol: its own auth (a session lists only the
	// tools its token allows), and each tool calls a route above.
	m := newMCPEndpoint(s)
	for _, method := range []string{http.MethodPost, http.MethodGet, http.MethodDelete} {
		e.Add(method, "/mcp", m.serve)
	}
	s.echo = e
	return e
}

// jwtFromConfig builds the token verifier and minter from SCRIPT_JWT_*
// (both nil without a secret).
func jwtFromConfig(cfg *config.Config) (*auth.Verifier, *auth.Minter) {
	if cfg.JWTSecret == "" {
		return nil, nil
	}
	secret := []byte(cfg.JWTSecret)
	return &auth.Verifier{Secret: secret, Issuer: cfg.JWTIss, Audience: cfg.JWTAud, Leeway: time.Duration(cfg.JWTLeewaySeconds) * time.Second,
			AllowNoExp: !cfg.JWTRequireExp},
		&auth.Minter{Secret: secret, Issuer: cfg.JWTIss, Audience: cfg.JWTAud}
}

// mintCommand is `pyrunner-api token --sub alice --scopes scripts:read,logs:read --ttl 1h`:
// it prints a token signed with the configured SCRIPT_JWT_SECRET.
func mintCommand(args []string) error {
	fs := flag.NewFlagSet("pyrunner-api token", flag.ContinueOnError)
	sub := fs.String("sub", "", "subject (who the token is for)")
	scopes := fs.String("scopes", "", "comma-separated scopes: scripts:read, scripts:run, logs:read, research:run, or *")
	ttl := fs.Duration("ttl", time.Hour, "lifetime")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *sub == "" || *scopes == "" {
		return fmt.Errorf("--sub and --scopes are required")
	}
	cfg, err := config.Load("pyrunner-api", nil, os.Getenv, os.Stderr)
	if err != nil {
		return err
	}
	_, m := jwtFromConfig(cfg)
	if m == nil {
		return fmt.Errorf("SCRIPT_JWT_SECRET is not set")
	}
	tok, err := m.Mint(*sub, strings.Split(*scopes, ","), *ttl, map[string]any{"type": "user"})
	if err != nil {
		return err
	}
	fmt.Println(tok)
	return nil
}
