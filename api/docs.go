package main

import (
	"embed"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/labstack/echo/v4"

	"github.com/ztrade/pyrunner/pkg/run"
)

// The OpenAPI description (openapi.yaml) and Swagger UI's assets live in
// the binary: the docs work with no network.
//
//go:embed openapi.yaml docs
var docsFS embed.FS

var (
	specOnce sync.Once
	specDoc  *openapi3.T
	specJSON []byte
	specErr  error
)

// Spec loads and validates the embedded OpenAPI description.
func Spec() (*openapi3.T, []byte, error) {
	specOnce.Do(func() {
		b, err := docsFS.ReadFile("openapi.yaml")
		if err != nil {
			specErr = err
			return
		}
		doc, err := openapi3.NewLoader().LoadFromData(b)
		if err != nil {
			specErr = fmt.Errorf("openapi.yaml: %w", err)
			return
		}
		specDoc = doc
		specJSON, specErr = json.Marshal(doc)
	})
	return specDoc, specJSON, specErr
}

func (s *server) openapiJSON(c echo.Context) error {
	doc, b, err := s.spec()
	if err != nil {
		return err
	}
	if doc != nil {
		b, err = json.Marshal(doc)
		if err != nil {
			return err
		}
	}
	return c.Blob(http.StatusOK, "application/json", b)
}

// spec is the description for this server: the embedded one, with the
// script API's paths moved under SCRIPT_API_PREFIX when that is not /v1
// (doc is nil when nothing moved).
func (s *server) spec() (*openapi3.T, []byte, error) {
	doc, b, err := Spec()
	if err != nil || s.cfg.APIPrefix == "/v1" {
		return nil, b, err
	}
	var moved openapi3.T
	if err := json.Unmarshal(b, &moved); err != nil {
		return nil, nil, err
	}
	moved.Paths = openapi3.NewPaths()
	for path, item := range doc.Paths.Map() {
		if strings.HasPrefix(path, "/v1/") && !strings.HasPrefix(path, "/v1/research/") {
			path = s.cfg.APIPrefix + strings.TrimPrefix(path, "/v1")
		}
		moved.Paths.Set(path, item)
	}
	return &moved, nil, nil
}

const docsPage = `<!doctype html>
<html><head><meta charset="utf-8"><title>pyrunner API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body></html>`

func (s *server) docs(c echo.Context) error { return c.HTML(http.StatusOK, docsPage) }

var docsTypes = map[string]string{"swagger-ui-bundle.js": "application/javascript", "swagger-ui.css": "text/css", "LICENSE": "text/plain"}

func (s *server) docsAsset(c echo.Context) error {
	name := c.Param("file")
	typ, ok := docsTypes[name]
	if !ok {
		return run.Errorf(run.ECodeNotFound, "Not Found")
	}
	b, err := docsFS.ReadFile("docs/" + name)
	if err != nil {
		return run.Errorf(run.ECodeNotFound, "Not Found")
	}
	c.Response().Header().Set("Cache-Control", "public, max-age=86400")
	return c.Blob(http.StatusOK, typ, b)
}
