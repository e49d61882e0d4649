package main

import (
	"embed"
	"encoding/json"
	"fmt"
	"net/http"
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
	_, b, err := Spec()
	if err != nil {
		return err
	}
	return c.Blob(http.StatusOK, "application/json", b)
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
