package main

import (
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/ztrade/pyrunner/pkg/liveness"
	"github.com/ztrade/pyrunner/pkg/queue"
	"github.com/ztrade/pyrunner/pkg/store"
)

// redisHealth is /health's "redis": reachable or not, and what a crash
// of it would keep (store.Durability), with a warning per risk.
type redisHealth struct {
	Status string `json:"status"` // ok or unreachable
	store.Durability
	store.Topology
}

// health is GET /health and GET /v1/health: Redis and its durability,
// live workers and queue sizes. It answers 503 when Redis is unreachable.
func (s *server) health(c echo.Context) error {
	ctx := c.Request().Context()
	body := map[string]any{
		"status":       "ok",
		"scripts_root": s.scripts.Root(),
		"jwt_auth":     s.cfg.JWTAuth,
		"redis":        redisHealth{Status: "ok"},
		"workers":      []store.WorkerInfo{},
		"queues":       map[string]queue.Sizes{},
	}
	d, err := s.store.Durability(ctx)
	if err != nil {
		body["status"], body["redis"] = "error", redisHealth{Status: "unreachable", Topology: s.store.Topology(ctx)}
		return c.JSON(http.StatusServiceUnavailable, body)
	}
	body["redis"] = redisHealth{Status: "ok", Durability: d, Topology: s.store.Topology(ctx)}
	if ws, err := s.store.Workers(ctx, liveness.Stale); err == nil {
		body["workers"] = ws
	}
	sizes := s.queue.Sizes(queue.QueueResearch, queue.QueueScripts)
	for q, sz := range sizes {
		sz.MaxQueued = s.cfg.MaxQueued
		sizes[q] = sz
	}
	body["queues"] = sizes
	return c.JSON(http.StatusOK, body)
}
