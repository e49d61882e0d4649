package run

import (
	"encoding/json"
	"fmt"
	"math"
	"time"
)

// Restart policies: a script run may be started again when its process
// ends, as pm2 or systemd's Restart= would, but across machines. Each
// start is an attempt of the same run (same id, one log); between two
// attempts the run is "restarting". The next attempt starts only once
// the previous process is known dead: its worker saw it exit, or the
// worker is past liveness.Stale, by when its keeper has killed it.

// Restart policy names.
const (
	RestartNo        = "no"
	RestartOnFailure = "on-failure"
	RestartAlways    = "always"
)

// RestartPolicy is the restart field of a script request. Zero numbers
// take the defaults (DefaultRestart).
type RestartPolicy struct {
	// Policy is "no" (the default), "on-failure" (a non-zero exit, a
	// signal, or the worker lost) or "always" (also after exit 0).
	Policy string `json:"policy"`
	// MaxRestarts within WindowSec; one more ends the run failed.
	MaxRestarts int `json:"max_restarts,omitempty"`
	WindowSec   int `json:"window_sec,omitempty"`
	// BackoffSec is the wait before the first restart in the window; it
	// doubles with each further one, up to MaxBackoffSec.
	BackoffSec    float64 `json:"backoff_sec,omitempty"`
	MaxBackoffSec float64 `json:"max_backoff_sec,omitempty"`
}

// DefaultRestart holds the numbers a policy leaves out.
var DefaultRestart = RestartPolicy{Policy: RestartNo, MaxRestarts: 5, WindowSec: 600, BackoffSec: 1, MaxBackoffSec: 60}

// Normalize fills in defaults and checks the policy, naming the field at
// fault. A nil policy is "no".
func (p *RestartPolicy) Normalize() error {
	if p.Policy == "" {
		p.Policy = RestartNo
	}
	switch p.Policy {
	case RestartNo, RestartOnFailure, RestartAlways:
	default:
		return Errorf(ECodeInvalid, "restart.policy must be no, on-failure or always, not %q", p.Policy)
	}
	d := DefaultRestart
	if p.MaxRestarts == 0 {
		p.MaxRestarts = d.MaxRestarts
	}
	if p.WindowSec == 0 {
		p.WindowSec = d.WindowSec
	}
	if p.BackoffSec == 0 {
		p.BackoffSec = d.BackoffSec
	}
	if p.MaxBackoffSec == 0 {
		p.MaxBackoffSec = max(d.MaxBackoffSec, p.BackoffSec)
	}
	switch {
	case p.MaxRestarts < 1 || p.MaxRestarts > 10000:
		return Errorf(ECodeInvalid, "restart.max_restarts must be between 1 and 10000, not %d", p.MaxRestarts)
	case p.WindowSec < 1 || p.WindowSec > 7*86400:
		return Errorf(ECodeInvalid, "restart.window_sec must be between 1 and 604800, not %d", p.WindowSec)
	case p.BackoffSec < 0.1 || p.BackoffSec > 86400 || math.IsNaN(p.BackoffSec):
		return Errorf(ECodeInvalid, "restart.backoff_sec must be between 0.1 and 86400, not %g", p.BackoffSec)
	case p.MaxBackoffSec < p.BackoffSec || p.MaxBackoffSec > 86400 || math.IsNaN(p.MaxBackoffSec):
		return Errorf(ECodeInvalid, "restart.max_backoff_sec must be between backoff_sec (%g) and 86400, not %g", p.BackoffSec, p.MaxBackoffSec)
	}
	return nil
}

// Restart is one ended attempt of a run that was started again.
type Restart struct {
	// Attempt is the attempt that ended (1 for the first start).
	Attempt int `json:"attempt"`
	// At is when it ended (TimeLayout).
	At string `json:"at"`
	// Reason says why it ended, as the run's error would.
	Reason string `json:"reason"`
	// ReturnCode is its exit code (negative: a signal), when known.
	ReturnCode *int `json:"return_code"`
	// DelaySec is the back-off before the next attempt.
	DelaySec float64 `json:"delay_sec"`
}

// Ending is how an attempt ended, as the restart decision needs it.
type Ending struct {
	Status     Status // the status the run would end with
	ReturnCode *int
	Reason     string
	// Started: the script's process ran (a run that could not start is
	// not started again: the next attempt would fail the same way).
	Started bool
}

// NextAttempt decides what follows an ending attempt of a run with
// policy p, given the restarts so far. It returns the restart to record
// (and wait DelaySec before the next attempt), or nil and, when the
// policy gave up, the error the run ends failed with.
func (p *RestartPolicy) NextAttempt(attempt int, history []Restart, e Ending, now time.Time) (*Restart, string) {
	if p == nil || p.Policy == RestartNo || p.Policy == "" || !e.Started {
		return nil, ""
	}
	switch e.Status {
	case StatusSucceeded:
		if p.Policy != RestartAlways {
			return nil, ""
		}
	case StatusFailed, StatusTerminated:
	default: // stopped by request, timed out: the user's own limits
		return nil, ""
	}
	window := time.Duration(p.WindowSec) * time.Second
	recent := 0
	for _, r := range history {
		if at := ParseTime(r.At); !at.IsZero() && now.Sub(at) < window {
			recent++
		}
	}
	if recent >= p.MaxRestarts {
		return nil, fmt.Sprintf("gave up after %d restarts in %d s; the last attempt: %s", recent, p.WindowSec, e.Reason)
	}
	delay := min(p.BackoffSec*math.Pow(2, float64(recent)), p.MaxBackoffSec)
	return &Restart{Attempt: max(attempt, 1), At: FormatTime(now), Reason: e.Reason, ReturnCode: e.ReturnCode, DelaySec: delay}, ""
}

// Delay is r's back-off as a duration.
func (r *Restart) Delay() time.Duration { return time.Duration(r.DelaySec * float64(time.Second)) }

// ParseRestarts reads a record's restarts field ("" is none).
func ParseRestarts(s string) []Restart {
	var out []Restart
	if s != "" {
		_ = json.Unmarshal([]byte(s), &out) // written by this package; a bad field reads as none
	}
	return out
}
