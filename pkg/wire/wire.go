// Package wire is the JSON pyrunner speaks over HTTP, in one place: the
// research API's bodies (python-runner's, camelCase) and the script
// control plane's (quant-script-api's, snake_case). The API answers with
// these types, pkg/client decodes into them, and the end-to-end tests read
// them, so a field changed here changes for all three.
//
// It depends on the standard library and pkg/run only (the domain types,
// themselves dependency-free), so a client imports it without pulling in
// the server. The converters from the domain types (RunOf) live here too.
package wire

import (
	"encoding/json"

	"github.com/ztrade/pyrunner/pkg/run"
)

// Market names a K-line series and a range of it: the market part of a
// research request, and of user code's load_kline. BinSize "" is "1m";
// Limit 0 is the server's maximum.
type Market struct {
	Exchange string `json:"exchange"`
	Symbol   string `json:"symbol"`
	BinSize  string `json:"binSize,omitempty"`
	Start    int64  `json:"start"`
	End      int64  `json:"end"`
	Limit    int64  `json:"limit,omitempty"`
}

// ResearchRequest is the body of POST /v1/research/run, as python-runner
// takes it, plus Wait. TimeoutSec 0 is the server's default.
type ResearchRequest struct {
	Market
	TimeoutSec int    `json:"timeoutSec,omitempty"`
	Code       string `json:"code"`
	// Wait false asks the API to answer at once with the run's id (as
	// ?wait=false does); by default it answers with the finished result.
	Wait *bool `json:"wait,omitempty"`
}

// Image is a chart a run produced, base64 in Data.
type Image struct {
	Name     string `json:"name"`
	MimeType string `json:"mimeType"`
	Data     string `json:"data"`
}

// Meta describes the data a research run saw and how long each part took.
type Meta struct {
	Exchange   string `json:"exchange"`
	Symbol     string `json:"symbol"`
	BinSize    string `json:"binSize"`
	Start      int64  `json:"start"`
	End        int64  `json:"end"`
	Rows       int    `json:"rows"`
	DBType     string `json:"dbType"`
	DBReadonly bool   `json:"dbReadonly"`
	RunID      string `json:"runId"`
	Worker     string `json:"worker"`
	Source     string `json:"source"`
	QueueMs    int64  `json:"queueMs"`
	LoadMs     int64  `json:"loadMs"`
	ExecMs     int64  `json:"execMs"`
	TotalMs    int64  `json:"totalMs"`
	// KlineCache says whether df's closed history came from the worker's
	// K-line cache: "hit", "miss" or "off".
	KlineCache string   `json:"klineCache,omitempty"`
	Warnings   []string `json:"warnings"`
}

// ResearchResult is what a finished research run produced: the
// python-runner response body.
type ResearchResult struct {
	OK              bool            `json:"ok"`
	Error           *string         `json:"error"`
	Stdout          string          `json:"stdout"`
	StdoutTruncated bool            `json:"stdoutTruncated"`
	Stderr          string          `json:"stderr"`
	StderrTruncated bool            `json:"stderrTruncated"`
	Result          json.RawMessage `json:"result"`
	Meta            *Meta           `json:"meta"`
	Images          []Image         `json:"images"`
}

// ResearchResponse is what the research API answers: the result's fields
// (absent, and ResearchResult nil, while the run has not finished), then
// the run's id, status and times.
type ResearchResponse struct {
	*ResearchResult
	ID         string  `json:"id"`
	Status     string  `json:"status"`
	CreatedAt  *string `json:"createdAt"`
	StartedAt  *string `json:"startedAt"`
	FinishedAt *string `json:"finishedAt"`
	// Poll is where to wait for a run that is not finished.
	Poll string `json:"poll,omitempty"`
	// Request is what the run was asked to do (GET of a run only).
	Request *ResearchRequest `json:"request,omitempty"`
}

// Finished reports whether the run has ended (its result is in).
func (r *ResearchResponse) Finished() bool { return r.ResearchResult != nil }

// Succeeded reports whether the run ended with ok: true.
func (r *ResearchResponse) Succeeded() bool { return r.ResearchResult != nil && r.OK }

// ScriptRequest is the body of POST /v1/runs: quant-script-api's fields,
// plus timeout_sec (0: no time limit). The run record keeps it, env
// included, for the worker.
type ScriptRequest struct {
	Script     string            `json:"script"`
	Args       []string          `json:"args,omitempty"`
	Env        map[string]string `json:"env,omitempty"`
	Cwd        string            `json:"cwd,omitempty"`
	Duplicate  bool              `json:"duplicate,omitempty"`
	TimeoutSec int               `json:"timeout_sec,omitempty"`
	// Restart is the run's restart policy (nil: "no").
	Restart *run.RestartPolicy `json:"restart,omitempty"`
}

// Script is one runnable script of the scripts folder, as GET
// /v1/scripts lists it.
type Script struct {
	Path      string  `json:"path"` // relative to the root, with forward slashes
	SizeBytes int64   `json:"size_bytes"`
	MTime     float64 `json:"mtime"` // unix seconds, as Python's os.stat
}

// Run is a run record as the script API shows it (either kind):
// quant-script-api's fields, snake_case, plus kind, worker and owner.
type Run struct {
	RunID      string   `json:"run_id"`
	Kind       string   `json:"kind"`
	Script     *string  `json:"script"`
	Argv       []string `json:"argv"`
	Status     string   `json:"status"`
	PID        *int     `json:"pid"`
	ReturnCode *int     `json:"return_code"`
	CreatedAt  *string  `json:"created_at"`
	StartedAt  *string  `json:"started_at"`
	FinishedAt *string  `json:"finished_at"`
	StdoutPath *string  `json:"stdout_path"`
	StderrPath *string  `json:"stderr_path"`
	Error      *string  `json:"error"`
	Worker     *string  `json:"worker"`
	Owner      *string  `json:"owner"`
	// Attempt is the run's current (or last) start, 1 unless a restart
	// policy started it again; Restarts lists the attempts that ended,
	// and RestartAt is when the next one is due while it is restarting.
	Attempt   int           `json:"attempt"`
	Restarts  []run.Restart `json:"restarts"`
	RestartAt *string       `json:"restart_at"`
	// ScheduleID is the schedule whose firing submitted the run.
	ScheduleID *string `json:"schedule_id"`
	// Market is a research run's exchange/symbol/binSize (the runs list
	// shows it), null for scripts.
	Market *string `json:"market"`
}

// Ended reports whether the run has a final status (run.TerminalStatuses).
func (r *Run) Ended() bool { return run.Status(r.Status).Terminal() }

// RunOf is r as the script API shows it.
func RunOf(r *run.Run) Run {
	rec := Run{RunID: r.ID, Kind: string(r.Kind), Script: orNil(r.Script), Argv: r.Argv, Status: string(r.Status),
		ReturnCode: r.ReturnCode, CreatedAt: run.TimePtr(r.CreatedAt), StartedAt: run.TimePtr(r.StartedAt),
		FinishedAt: run.TimePtr(r.FinishedAt), StdoutPath: orNil(r.StdoutPath), StderrPath: orNil(r.StderrPath),
		Error: orNil(r.Error), Worker: orNil(r.Worker), Owner: orNil(r.Owner),
		Attempt: r.AttemptNo(), Restarts: r.Restarts, RestartAt: run.TimePtr(r.RestartAt), ScheduleID: orNil(r.ScheduleID)}
	if rec.Restarts == nil {
		rec.Restarts = []run.Restart{}
	}
	if r.Kind == run.KindResearch {
		var req struct{ Request Market }
		if json.Unmarshal([]byte(r.Request), &req) == nil && req.Request.Exchange != "" {
			m := req.Request.Exchange + " " + req.Request.Symbol + " " + req.Request.BinSize
			rec.Market = &m
		}
	}
	if r.PID != 0 {
		rec.PID = &r.PID
	}
	if rec.Argv == nil {
		rec.Argv = []string{}
	}
	return rec
}

// RunsOf is RunOf of each of rs (an empty list, never null).
func RunsOf(rs []*run.Run) []Run {
	out := make([]Run, 0, len(rs))
	for _, r := range rs {
		out = append(out, RunOf(r))
	}
	return out
}

// orNil is s, or nil (JSON null) when it is empty.
func orNil(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// ScheduleRequest is the body of POST /v1/schedules, and, with every
// field optional, of PATCH /v1/schedules/{id}.
type ScheduleRequest struct {
	Name     *string `json:"name,omitempty"`
	Cron     *string `json:"cron,omitempty"`
	Timezone *string `json:"timezone,omitempty"`
	// Kind is "research" or "script"; Request is the body of
	// /v1/research/run or /v1/runs that each firing submits.
	Kind    *string         `json:"kind,omitempty"`
	Request json.RawMessage `json:"request,omitempty"`
	Overlap *string         `json:"overlap,omitempty"`
	Paused  *bool           `json:"paused,omitempty"`
}

// Schedule is a schedule as the API shows it: its definition, when it
// fires next (null while paused), and its last firing.
type Schedule struct {
	ID         string          `json:"id"`
	Name       string          `json:"name"`
	Cron       string          `json:"cron"`
	Timezone   string          `json:"timezone"`
	Kind       string          `json:"kind"`
	Request    json.RawMessage `json:"request"`
	Overlap    string          `json:"overlap"`
	Paused     bool            `json:"paused"`
	Owner      *string         `json:"owner"`
	CreatedAt  string          `json:"created_at"`
	UpdatedAt  string          `json:"updated_at"`
	NextFireAt *string         `json:"next_fire_at"`
	// LastFireAt, LastRunID and LastResult (fired, skipped, failed) tell
	// the last firing, and LastDetail why it was skipped or failed.
	LastFireAt *string `json:"last_fire_at"`
	LastRunID  *string `json:"last_run_id"`
	LastResult *string `json:"last_result"`
	LastDetail *string `json:"last_detail"`
}
