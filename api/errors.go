package main

import (
	"errors"
	"log/slog"
	"math"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/ztrade/pyrunner/pkg/run"
	"github.com/ztrade/pyrunner/pkg/store"
)

// statusOf is the one place error codes become HTTP statuses.
var statusOf = map[run.Code]int{
	run.ECodeInvalid:      http.StatusBadRequest,
	run.ECodeUnauthorized: http.StatusUnauthorized,
	run.ECodeForbidden:    http.StatusForbidden,
	run.ECodeNotFound:     http.StatusNotFound,
	run.ECodeConflict:     http.StatusConflict,
	run.ECodeTooLarge:     http.StatusRequestEntityTooLarge,
	run.ECodeTooMany:      http.StatusTooManyRequests,
	run.ECodeUnavailable:  http.StatusServiceUnavailable,
	run.ECodeInternal:     http.StatusInternalServerError,
}

// errorHandler answers every error as {"detail": "..."}: a *run.Error with
// its code's status, Echo's own errors (unknown route, body too large) as
// they are, and anything else as a 500 that leaks nothing.
func errorHandler(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	status, detail := http.StatusInternalServerError, "internal error"
	var he *echo.HTTPError
	switch {
	case errors.As(err, &he):
		status = he.Code
		detail = http.StatusText(he.Code)
		if m, ok := he.Message.(string); ok {
			detail = m
		}
		if status == http.StatusRequestEntityTooLarge {
			detail = "request body too large"
		}
	case store.IsUnavailable(err):
		status, detail = http.StatusServiceUnavailable, "redis is unavailable (restarting or unreachable); retry shortly"
		c.Response().Header().Set("Retry-After", "1")
		slog.Warn("request failed: redis unavailable", "method", c.Request().Method, "path", c.Path(), "err", err)
	case run.ErrorCode(err) != run.ECodeInternal:
		status, detail = statusOf[run.ErrorCode(err)], run.ErrorMessage(err)
		var re *run.Error
		if errors.As(err, &re) && re.RetryAfter > 0 {
			c.Response().Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(re.RetryAfter.Seconds()))))
		}
	default:
		slog.Error("request failed", "method", c.Request().Method, "path", c.Path(), "err", err)
	}
	if err := c.JSON(status, map[string]string{"detail": detail}); err != nil {
		slog.Debug("error answer not sent", "err", err)
	}
}
