package main

import (
	"context"
	"io"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/ztrade/pyrunner/pkg/config"
)

func TestSpecIsValidOpenAPI3(t *testing.T) {
	doc, b, err := Spec()
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("openapi.yaml does not validate: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") || len(b) < 1000 {
		t.Fatalf("openapi %q, %d bytes", doc.OpenAPI, len(b))
	}
}

// TestRoutesMatchSpec: every route the server registers is described, and
// every described path and method is served.
func TestRoutesMatchSpec(t *testing.T) {
	for _, prefix := range []string{"/v1", "/quant"} {
		t.Run(prefix, func(t *testing.T) { testRoutesMatchSpec(t, prefix) })
	}
}

func testRoutesMatchSpec(t *testing.T, prefix string) {
	cfg, err := config.Load("t", []string{"--api-prefix", prefix}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	s := &server{cfg: cfg, throttle: newThrottle(5), tokenThrottle: newThrottle(10)}
	param := regexp.MustCompile(`:([a-z_]+)`)
	served := map[string]bool{}
	for _, r := range s.routes().Routes() {
		if strings.HasPrefix(r.Name, "github.com/labstack/echo") || r.Method == "echo_route_not_found" || strings.HasPrefix(r.Path, "/monitor") || strings.HasPrefix(r.Path, "/ui") {
			continue // asynqmon's own UI and API live under /monitor, the dashboard's pages under /ui
		}
		served[r.Method+" "+param.ReplaceAllString(r.Path, "{$1}")] = true
	}
	doc, _, err := s.spec()
	if err != nil {
		t.Fatal(err)
	}
	if doc == nil {
		doc, _, _ = Spec()
	}
	described := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			described[method+" "+path] = true
		}
	}
	var missing, extra []string
	for k := range served {
		if !described[k] {
			missing = append(missing, k)
		}
	}
	for k := range described {
		if !served[k] {
			extra = append(extra, k)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	if len(missing) > 0 || len(extra) > 0 || len(served) < 18 {
		t.Fatalf("routes not in the spec: %v\nspec paths not served: %v (%d served)", missing, extra, len(served))
	}
}
