// Package run holds pyrunner's run model: the one record every research
// call and every script start becomes, its statuses, and the error type the
// rest of the code uses to say what went wrong. It depends on nothing but the
// standard library, so every other package can share it (the pattern of
// benbjohnson/wtf: domain types free of dependencies).
package run

import (
	"encoding/json"
	"strconv"
	"time"
)

// Kind tells the two families of runs apart.
type Kind string

const (
	// KindResearch is a code snippet run against a K-line DataFrame.
	KindResearch Kind = "research"
	// KindScript is a script from the scripts folder.
	KindScript Kind = "script"
)

// Status is where a run is in its life:
//
//	queued → starting → running → (stopping) → succeeded | failed | stopped | timeout | terminated
//
// A script run with a restart policy goes running → restarting → starting
// → running … between attempts (see RestartPolicy).
type Status string

const (
	StatusQueued   Status = "queued"
	StatusStarting Status = "starting"
	StatusRunning  Status = "running"
	StatusStopping Status = "stopping"
	// StatusRestarting: an attempt ended and the next waits for its
	// back-off (RestartPolicy); it holds the script's lock meanwhile.
	StatusRestarting Status = "restarting"
	StatusSucceeded  Status = "succeeded"
	StatusFailed     Status = "failed"
	StatusStopped    Status = "stopped"
	StatusTimeout    Status = "timeout"
	StatusTerminated Status = "terminated"
)

// TerminalStatuses lists the statuses a run never leaves.
var TerminalStatuses = []Status{StatusSucceeded, StatusFailed, StatusStopped, StatusTimeout, StatusTerminated}

// Terminal reports whether s is an end state.
func (s Status) Terminal() bool {
	for _, t := range TerminalStatuses {
		if s == t {
			return true
		}
	}
	return false
}

// Statuses lists every status, in the order of a run's life: the one
// list the store's Lua scripts, the API, the clients and the dashboard
// take theirs from.
var Statuses = append([]Status{StatusQueued, StatusStarting, StatusRunning, StatusRestarting, StatusStopping}, TerminalStatuses...)

// Valid reports whether s is one of the known statuses.
func (s Status) Valid() bool {
	for _, v := range Statuses {
		if s == v {
			return true
		}
	}
	return false
}

// Run is the record of one run. The store keeps it as a flat hash of
// strings (see Fields and FromFields), so that status transitions can be
// made atomically by a Lua script.
type Run struct {
	ID         string
	Kind       Kind
	Status     Status
	CreatedAt  time.Time
	StartedAt  time.Time
	FinishedAt time.Time
	// Worker is the host:pid of the worker that took the run.
	Worker string
	// ReturnCode is the process exit code; negative for a signal. Nil until known.
	ReturnCode *int
	// Error is a human-readable reason for any non-success end.
	Error string
	// Owner is the token subject that created the run, when auth is on.
	Owner string
	// StopRequested is set once a client asked to stop the run.
	StopRequested bool
	// Request is the kind-specific request, as JSON.
	Request string

	// Script runs only.
	Script     string   // path relative to the scripts root
	Argv       []string // the command line
	PID        int      // process id on the worker's host, once started
	StdoutPath string   // full log files on the worker's host
	StderrPath string
	// Attempt counts the starts of a run with a restart policy (1, 2, …;
	// 0 reads as 1), Restarts its ended attempts, and RestartAt when the
	// next attempt is due while the run is restarting.
	Attempt   int
	Restarts  []Restart
	RestartAt time.Time
	// ScheduleID is the schedule whose firing submitted the run.
	ScheduleID string
}

// AttemptNo is r's attempt, 1 for a run that never restarted.
func (r *Run) AttemptNo() int { return max(r.Attempt, 1) }

// Active reports whether s is a status of a run not yet ended.
func (s Status) Active() bool { return s.Valid() && !s.Terminal() }

// TimeLayout is the seed's timestamp form: RFC 3339 with microseconds and a
// numeric UTC offset, e.g. 2026-01-02T03:04:05.123456+00:00.
const TimeLayout = "2006-01-02T15:04:05.000000-07:00"

// FormatTime renders t in TimeLayout (UTC); the zero time renders as "".
func FormatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(TimeLayout)
}

// ParseTime is the inverse of FormatTime; "" and bad input give the zero time.
func ParseTime(s string) time.Time {
	t, err := time.Parse(TimeLayout, s)
	if err != nil {
		return time.Time{}
	}
	return t
}

// TimePtr returns nil for the zero time and the formatted time otherwise, the
// shape JSON responses use (null until known).
func TimePtr(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := FormatTime(t)
	return &s
}

// Fields flattens r into the hash fields the store writes. Empty values
// are left out so that a partial update does not erase what is there.
func (r *Run) Fields() map[string]string {
	f := map[string]string{}
	put := func(k, v string) {
		if v != "" {
			f[k] = v
		}
	}
	put("run_id", r.ID)
	put("kind", string(r.Kind))
	put("status", string(r.Status))
	put("created_at", FormatTime(r.CreatedAt))
	put("started_at", FormatTime(r.StartedAt))
	put("finished_at", FormatTime(r.FinishedAt))
	put("worker", r.Worker)
	if r.ReturnCode != nil {
		f["return_code"] = strconv.Itoa(*r.ReturnCode)
	}
	put("error", r.Error)
	put("owner", r.Owner)
	if r.StopRequested {
		f["stop_requested"] = "1"
	}
	put("request", r.Request)
	put("script", r.Script)
	if r.Argv != nil {
		b, _ := json.Marshal(r.Argv)
		f["argv"] = string(b)
	}
	if r.PID != 0 {
		f["pid"] = strconv.Itoa(r.PID)
	}
	put("stdout_path", r.StdoutPath)
	put("stderr_path", r.StderrPath)
	if r.Attempt != 0 {
		f["attempt"] = strconv.Itoa(r.Attempt)
	}
	if r.Restarts != nil {
		b, _ := json.Marshal(r.Restarts)
		f["restarts"] = string(b)
	}
	put("restart_at", FormatTime(r.RestartAt))
	put("schedule_id", r.ScheduleID)
	return f
}

// Merge applies change to r as the store applies an update: every field
// change sets (the ones Fields writes) replaces r's.
func (r *Run) Merge(change *Run) {
	merged := r.Fields()
	for k, v := range change.Fields() {
		merged[k] = v
	}
	*r = *FromFields(merged)
}

// FromFields rebuilds a Run from its hash fields.
func FromFields(f map[string]string) *Run {
	r := &Run{
		ID:            f["run_id"],
		Kind:          Kind(f["kind"]),
		Status:        Status(f["status"]),
		CreatedAt:     ParseTime(f["created_at"]),
		StartedAt:     ParseTime(f["started_at"]),
		FinishedAt:    ParseTime(f["finished_at"]),
		Worker:        f["worker"],
		Error:         f["error"],
		Owner:         f["owner"],
		StopRequested: f["stop_requested"] == "1",
		Request:       f["request"],
	}
	r.Script, r.StdoutPath, r.StderrPath = f["script"], f["stdout_path"], f["stderr_path"]
	r.PID, _ = strconv.Atoi(f["pid"])
	r.Attempt, _ = strconv.Atoi(f["attempt"])
	r.Restarts = ParseRestarts(f["restarts"])
	r.RestartAt = ParseTime(f["restart_at"])
	r.ScheduleID = f["schedule_id"]
	if v := f["argv"]; v != "" {
		if err := json.Unmarshal([]byte(v), &r.Argv); err != nil {
			r.Argv = []string{v} // written by this package as JSON; kept whole if not
		}
	}
	if v, ok := f["return_code"]; ok {
		if n, err := strconv.Atoi(v); err == nil {
			r.ReturnCode = &n
		}
	}
	return r
}
