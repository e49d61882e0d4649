// Package backoff retries an operation with exponential back-off: the
// first retry after Policy.First, each next one after twice as long, never
// more than Policy.Max apart, until the operation succeeds, returns an
// error marked Permanent, runs out of tries, or the context ends.
//
// The worker waits this way for Redis and its K-line database at start
// (Tries 0: as long as it takes, so a container never crash-loops while
// its dependencies come up), and retries Redis writes of a run's outcome
// (a few tries: Redis restarting, a failover).
package backoff

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// Policy says how often and how long to retry.
type Policy struct {
	First time.Duration // delay before the first retry
	Max   time.Duration // longest delay between two tries
	Tries int           // attempts in all; 0 means until ctx ends
	What  string        // what is retried, for the log ("redis write")
}

// Startup is how a process waits for a dependency (Redis, its database)
// at start: as long as it takes, tries 0.5 s apart at first, then 15 s.
func Startup(what string) Policy {
	return Policy{First: 500 * time.Millisecond, Max: 15 * time.Second, What: what}
}

type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }

// Permanent marks err as not worth retrying: Retry returns it (unwrapped)
// at once.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanent{err}
}

// Retry calls f until it returns nil or a Permanent error, the policy's
// tries are used up, or ctx ends; it returns f's last error (ctx's error
// if ctx ended before f ever ran). Every retry is logged at warn level
// with the error and the delay.
func Retry(ctx context.Context, p Policy, f func() error) error {
	delay := p.First
	for i := 1; ; i++ {
		if err := ctx.Err(); err != nil && i == 1 {
			return err
		}
		err := f()
		var perm permanent
		switch {
		case err == nil:
			return nil
		case errors.As(err, &perm):
			return perm.err
		case p.Tries > 0 && i >= p.Tries, ctx.Err() != nil:
			return err
		}
		slog.Warn(p.What+" failed; retrying", "err", err, "attempt", i, "retry_in", delay)
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return err
		}
		delay = min(2*delay, p.Max)
	}
}
