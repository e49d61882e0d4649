package run_test

import (
	"strings"
	"testing"
	"time"

	"github.com/ztrade/pyrunner/pkg/run"
)

// TestRestartPolicyNormalize: defaults fill what is left out, and a bad
// field is refused by name.
func TestRestartPolicyNormalize(t *testing.T) {
	p := run.RestartPolicy{Policy: "on-failure"}
	if err := p.Normalize(); err != nil || p.MaxRestarts != 5 || p.WindowSec != 600 || p.BackoffSec != 1 || p.MaxBackoffSec != 60 {
		t.Fatalf("defaults: %+v %v", p, err)
	}
	for field, bad := range map[string]run.RestartPolicy{
		"restart.policy":          {Policy: "sometimes"},
		"restart.max_restarts":    {Policy: "always", MaxRestarts: -1},
		"restart.window_sec":      {Policy: "always", WindowSec: -5},
		"restart.backoff_sec":     {Policy: "always", BackoffSec: 0.01},
		"restart.max_backoff_sec": {Policy: "always", BackoffSec: 10, MaxBackoffSec: 5},
	} {
		if err := bad.Normalize(); err == nil || run.ErrorCode(err) != run.ECodeInvalid || !strings.Contains(err.Error(), field) {
			t.Errorf("%+v: %v, want an invalid error naming %s", bad, err, field)
		}
	}
}

// TestNextAttempt: which endings restart under each policy, the back-off
// doubling within the window, and the give-up past max_restarts.
func TestNextAttempt(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	code := func(n int) *int { return &n }
	exit3 := run.Ending{Status: run.StatusFailed, ReturnCode: code(3), Reason: "exited with code 3", Started: true}
	exit0 := run.Ending{Status: run.StatusSucceeded, ReturnCode: code(0), Started: true}
	lost := run.Ending{Status: run.StatusTerminated, Reason: "worker w lost", Started: true}
	stopped := run.Ending{Status: run.StatusStopped, Started: true}
	timedOut := run.Ending{Status: run.StatusTimeout, Started: true}
	neverStarted := run.Ending{Status: run.StatusFailed, Reason: "cannot start", Started: false}
	policy := func(name string) *run.RestartPolicy {
		p := &run.RestartPolicy{Policy: name, MaxRestarts: 3, WindowSec: 60}
		if err := p.Normalize(); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, c := range []struct {
		policy *run.RestartPolicy
		e      run.Ending
		want   bool
	}{
		{nil, exit3, false}, {policy("no"), exit3, false},
		{policy("on-failure"), exit3, true}, {policy("on-failure"), lost, true}, {policy("on-failure"), exit0, false},
		{policy("always"), exit0, true}, {policy("always"), stopped, false}, {policy("always"), timedOut, false},
		{policy("always"), neverStarted, false},
	} {
		next, gaveUp := c.policy.NextAttempt(1, nil, c.e, now)
		if (next != nil) != c.want || gaveUp != "" {
			t.Errorf("%+v after %+v: restart %v (%q), want %v", c.policy, c.e, next, gaveUp, c.want)
		}
	}
	// Back-off 1, 2, 4 s within the window; then the give-up.
	p := policy("on-failure")
	var history []run.Restart
	for i, want := range []float64{1, 2, 4} {
		next, _ := p.NextAttempt(i+1, history, exit3, now)
		if next == nil || next.DelaySec != want || next.Attempt != i+1 || *next.ReturnCode != 3 {
			t.Fatalf("restart %d: %+v, want a delay of %gs", i+1, next, want)
		}
		history = append(history, *next)
	}
	next, gaveUp := p.NextAttempt(4, history, exit3, now)
	if next != nil || gaveUp != "gave up after 3 restarts in 60 s; the last attempt: exited with code 3" {
		t.Errorf("past max_restarts: %+v %q", next, gaveUp)
	}
	// Restarts older than the window do not count.
	if next, _ := p.NextAttempt(4, history, exit3, now.Add(61*time.Second)); next == nil || next.DelaySec != 1 {
		t.Errorf("after the window: %+v, want a restart with the first back-off", next)
	}
}
