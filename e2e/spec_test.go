package e2e

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
)

var (
	specOnce   sync.Once
	specRouter routers.Router
	specErr    error
)

// checkAgainstSpec validates every JSON response the tests receive against
// the API's OpenAPI description (api/openapi.yaml): status, and body schema.
func checkAgainstSpec(t *testing.T, req *http.Request, resp *http.Response, body []byte) {
	t.Helper()
	specOnce.Do(func() {
		doc, err := openapi3.NewLoader().LoadFromFile("../api/openapi.yaml")
		if err != nil {
			specErr = err
			return
		}
		specRouter, specErr = gorillamux.NewRouter(doc)
	})
	if specErr != nil {
		t.Fatalf("load spec: %v", specErr)
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		return // event streams and pages are not JSON documents
	}
	route, params, err := specRouter.FindRoute(req)
	if err != nil {
		t.Errorf("%s %s is not in the OpenAPI description: %v", req.Method, req.URL.Path, err)
		return
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
			Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}},
		Status: resp.StatusCode, Header: resp.Header, Body: io.NopCloser(bytes.NewReader(body)),
		Options: &openapi3filter.Options{IncludeResponseStatus: true},
	}
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		t.Errorf("%s %s → %d does not match the OpenAPI description: %v\n%.500s", req.Method, req.URL.Path, resp.StatusCode, err, body)
	}
}
