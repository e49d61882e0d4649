package run

import (
	"errors"
	"fmt"
	"time"
)

// Code classifies an Error; the API maps each code to one HTTP status in
// one place.
type Code string

const (
	ECodeInvalid      Code = "invalid"      // 400
	ECodeUnauthorized Code = "unauthorized" // 401
	ECodeForbidden    Code = "forbidden"    // 403
	ECodeNotFound     Code = "not_found"    // 404
	ECodeConflict     Code = "conflict"     // 409
	ECodeTooLarge     Code = "too_large"    // 413
	ECodeTooMany      Code = "too_many"     // 429
	ECodeUnavailable  Code = "unavailable"  // 503
	ECodeInternal     Code = "internal"     // 500
)

// Error is an error a client can act on: a code and a message meant for
// the client (it becomes the response's "detail").
type Error struct {
	Code    Code
	Message string
	// RetryAfter, when set, tells the client when to try again (the
	// API's Retry-After header, whole seconds rounded up).
	RetryAfter time.Duration
}

// TooMany is a 429 that says when to retry.
func TooMany(after time.Duration, format string, args ...any) *Error {
	return &Error{Code: ECodeTooMany, Message: fmt.Sprintf(format, args...), RetryAfter: after}
}

func (e *Error) Error() string { return e.Message }

// Errorf returns an *Error with the given code and formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of the first *Error in err's chain, or
// ECodeInternal when there is none.
func ErrorCode(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ECodeInternal
}

// ErrorMessage returns the client-facing message of err: the *Error's
// message, or a generic text that leaks nothing for internal errors.
func ErrorMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "internal error"
}
