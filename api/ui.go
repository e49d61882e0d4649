package main

import (
	"embed"
	"encoding/json"
	"net/http"
	"path"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/ztrade/pyrunner/pkg/run"
)

// The dashboard (/ui/): one page and its two assets, embedded in the
// binary, no build step and nothing fetched from elsewhere. Every path
// under /ui/ that is not an asset is the page (the app routes itself), so
// /ui/runs/<id> works when opened directly.
//
//go:embed ui
var uiFS embed.FS

var uiTypes = map[string]string{".js": "application/javascript", ".css": "text/css"}

// ui serves /ui/…: assets as they are, anything else as index.html with the
// script API prefix filled in.
func (s *server) ui(c echo.Context) error {
	rel := strings.TrimPrefix(c.Request().URL.Path, "/ui/")
	if strings.HasPrefix(rel, "assets/") {
		b, err := uiFS.ReadFile("ui/" + path.Clean(rel))
		if err != nil {
			return run.Errorf(run.ECodeNotFound, "no such asset")
		}
		return c.Blob(http.StatusOK, uiTypes[path.Ext(rel)], b)
	}
	b, err := uiFS.ReadFile("ui/index.html")
	if err != nil {
		return err
	}
	page := strings.NewReplacer("{{SCRIPT_API_PREFIX}}", s.cfg.APIPrefix,
		"{{STATUSES}}", uiStatuses, "{{TERMINAL_STATUSES}}", uiTerminal).Replace(string(b))
	c.Response().Header().Set("Cache-Control", "no-cache")
	return c.HTML(http.StatusOK, page)
}

// markets is GET /v1/research/markets: the K-line tables the workers'
// database has (workers report them; the API never reads that database).
func (s *server) markets(c echo.Context) error {
	b, err := s.store.Markets(c.Request().Context())
	if err != nil {
		return err
	}
	if b == nil {
		b = []byte("[]")
	}
	return c.JSONBlob(http.StatusOK, append(append([]byte(`{"markets":`), b...), '}'))
}

// The dashboard's lists of statuses, from pkg/run's (JSON arrays).
var uiStatuses, uiTerminal = func() (string, string) {
	all, _ := json.Marshal(run.Statuses)
	terminal, _ := json.Marshal(run.TerminalStatuses)
	return string(all), string(terminal)
}()
