package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/ztrade/pyrunner/pkg/run"
)

// answer runs errorHandler on err and returns the status, the detail and
// the Retry-After header the client gets.
func answer(t *testing.T, err error) (int, string, string) {
	t.Helper()
	e := echo.New()
	rec := httptest.NewRecorder()
	c := e.NewContext(httptest.NewRequest(http.MethodGet, "/v1/runs/x", nil), rec)
	errorHandler(err, c)
	var body map[string]string
	if jerr := json.Unmarshal(rec.Body.Bytes(), &body); jerr != nil || len(body) != 1 {
		t.Fatalf("%v: body %q is not {\"detail\": ...}", err, rec.Body.String())
	}
	return rec.Code, body["detail"], rec.Header().Get("Retry-After")
}

// TestEveryCodeHasItsStatus: each error code maps to its HTTP status
// with its message as the detail, wrapped or not.
func TestEveryCodeHasItsStatus(t *testing.T) {
	want := map[run.Code]int{
		run.ECodeInvalid: 400, run.ECodeUnauthorized: 401, run.ECodeForbidden: 403, run.ECodeNotFound: 404,
		run.ECodeConflict: 409, run.ECodeTooLarge: 413, run.ECodeTooMany: 429, run.ECodeUnavailable: 503,
	}
	for code, status := range want {
		if statusOf[code] != status {
			t.Errorf("statusOf[%s] = %d, want %d", code, statusOf[code], status)
		}
		for _, err := range []error{run.Errorf(code, "what went wrong"), fmt.Errorf("context: %w", run.Errorf(code, "what went wrong"))} {
			if st, detail, _ := answer(t, err); st != status || detail != "what went wrong" {
				t.Errorf("%v: %d %q, want %d", err, st, detail, status)
			}
		}
	}
	if len(statusOf) != len(want)+1 { // and internal
		t.Errorf("statusOf has %d codes; this test knows %d", len(statusOf), len(want)+1)
	}
}

// TestInternalErrorsLeakNothing: an unexpected error is a 500 whose
// detail says nothing of it.
func TestInternalErrorsLeakNothing(t *testing.T) {
	for _, err := range []error{errors.New("dial mysql://root:hunter2@db"), run.Errorf(run.ECodeInternal, "hunter2")} {
		st, detail, _ := answer(t, err)
		if st != 500 || detail != "internal error" || strings.Contains(detail, "hunter2") {
			t.Errorf("%v: %d %q", err, st, detail)
		}
	}
}

func TestRetryAfter(t *testing.T) {
	st, detail, after := answer(t, run.TooMany(1500*time.Millisecond, "queue full"))
	if st != 429 || detail != "queue full" || after != "2" {
		t.Errorf("too many: %d %q Retry-After %q", st, detail, after)
	}
	st, detail, after = answer(t, fmt.Errorf("store: get run: %w", syscall.ECONNREFUSED))
	if st != 503 || !strings.Contains(detail, "redis is unavailable") || after != "1" {
		t.Errorf("redis away: %d %q Retry-After %q", st, detail, after)
	}
}

func TestEchoErrorsKeepTheirStatus(t *testing.T) {
	if st, detail, _ := answer(t, echo.ErrNotFound); st != 404 || detail != "Not Found" {
		t.Errorf("not found: %d %q", st, detail)
	}
	if st, detail, _ := answer(t, echo.NewHTTPError(http.StatusRequestEntityTooLarge)); st != 413 || detail != "request body too large" {
		t.Errorf("too large: %d %q", st, detail)
	}
}
