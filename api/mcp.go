package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/ztrade/pyrunner/pkg/auth"
	"github.com/ztrade/pyrunner/pkg/config"
	"github.com/ztrade/pyrunner/pkg/research"
	"github.com/ztrade/pyrunner/pkg/run"
	"github.com/ztrade/pyrunner/pkg/wire"
)

// The MCP endpoint: /mcp speaks the Model Context Protocol over
// streamable HTTP (the official Go SDK), so an agent reaches research and
// scripts with nothing in between. Each tool wraps one HTTP endpoint and
// calls it in-process, through the same router, with the caller's
// Authorization header: its validation, auth, waits and error details are
// the endpoint's own. A session lists only the tools its token may use.

// mcpGrantsKey carries the scopes /mcp's auth granted into the request's
// context, for the SDK's getServer.
type mcpGrantsKey struct{}

// mcpEndpoint serves /mcp: its auth, then the SDK's handler.
type mcpEndpoint struct {
	s       *server
	handler http.Handler

	mu      sync.Mutex
	servers map[string]*mcp.Server // by the scopes granted, joined
}

func newMCPEndpoint(s *server) *mcpEndpoint {
	m := &mcpEndpoint{s: s, servers: map[string]*mcp.Server{}}
	m.handler = mcp.NewStreamableHTTPHandler(func(r *http.Request) *mcp.Server {
		grants, _ := r.Context().Value(mcpGrantsKey{}).([]string)
		return m.serverFor(grants)
	}, nil)
	return m
}

// serve is the /mcp route: every request's credentials are checked (as
// every route's are) before the SDK sees it.
func (m *mcpEndpoint) serve(c echo.Context) error {
	grants, _, err := m.s.grants(c)
	if err != nil {
		return err
	}
	r := c.Request()
	m.handler.ServeHTTP(c.Response(), r.WithContext(context.WithValue(r.Context(), mcpGrantsKey{}, grants)))
	return nil
}

// serverFor is the MCP server with the tools grants allow (built once per
// set of grants).
func (m *mcpEndpoint) serverFor(grants []string) *mcp.Server {
	key := strings.Join(grants, ",")
	m.mu.Lock()
	defer m.mu.Unlock()
	if srv := m.servers[key]; srv != nil {
		return srv
	}
	srv := mcp.NewServer(&mcp.Implementation{Name: "pyrunner", Version: config.Version()}, &mcp.ServerOptions{
		Instructions: "pyrunner runs Python research code against K-line (OHLCV) data next to the market database, " +
			"and long-running trading scripts. Read " + envResourceURI + " before writing research code.",
	})
	t := mcpTools{s: m.s}
	if slices.Contains(grants, auth.ScopeResearchRun) {
		t.addResearch(srv)
	}
	if slices.Contains(grants, auth.ScopeScriptsRead) {
		t.addScriptsRead(srv)
	}
	if slices.Contains(grants, auth.ScopeScriptsRun) {
		t.addScriptsRun(srv)
	}
	if slices.Contains(grants, auth.ScopeLogsRead) {
		t.addLogs(srv)
	}
	srv.AddResource(&mcp.Resource{URI: envResourceURI, Name: "research-environment", MIMEType: "text/markdown",
		Description: "What research code sees: df's columns and dtypes, pd, np, load_kline, result and images."},
		func(context.Context, *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
			return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{
				{URI: envResourceURI, MIMEType: "text/markdown", Text: research.Environment}}}, nil
		})
	m.servers[key] = srv
	return srv
}

// envResourceURI names the research environment resource.
const envResourceURI = "pyrunner://research/environment"

// mcpTools are the tools; each calls its endpoint through the router.
type mcpTools struct{ s *server }

// apiError is an endpoint's error answer: the tool's error text.
type apiError struct {
	status int
	detail string
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.status, http.StatusText(e.status), e.detail)
}

// call sends method path (body as JSON) through the API's router with the
// tool call's Authorization header, and decodes a 2xx answer into out.
func (t mcpTools) call(ctx context.Context, req *mcp.CallToolRequest, method, path string, body, out any) error {
	var payload []byte
	if body != nil {
		var err error
		if payload, err = json.Marshal(body); err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
	}
	r, err := http.NewRequestWithContext(ctx, method, path, bytes.NewReader(payload))
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	r.Header.Set("Content-Type", "application/json")
	if req.Extra != nil && req.Extra.Header != nil {
		if a := req.Extra.Header.Get("Authorization"); a != "" {
			r.Header.Set("Authorization", a)
		}
	}
	r.RemoteAddr = "127.0.0.1:0" // /mcp's own auth has checked the caller already
	rec := httptest.NewRecorder()
	t.s.echo.ServeHTTP(rec, r)
	if rec.Code >= 300 {
		var d struct {
			Detail string `json:"detail"`
		}
		if json.Unmarshal(rec.Body.Bytes(), &d) != nil || d.Detail == "" {
			d.Detail = strings.TrimSpace(rec.Body.String())
		}
		return &apiError{rec.Code, d.Detail}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(rec.Body.Bytes(), out); err != nil {
		return fmt.Errorf("decode answer of %s %s: %w", method, path, err)
	}
	return nil
}

// relay is a tool answer that is the GET endpoint's JSON, as it came.
func (t mcpTools) relay(ctx context.Context, req *mcp.CallToolRequest, path string) (*mcp.CallToolResult, any, error) {
	var out json.RawMessage
	if err := t.call(ctx, req, http.MethodGet, path, nil, &out); err != nil {
		return nil, nil, err
	}
	return jsonResult(out), nil, nil
}

// jsonResult is v as the tool's text content (indented JSON).
func jsonResult(v any) *mcp.CallToolResult {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		b = []byte(err.Error())
	}
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: string(b)}}}
}

// researchResult is a finished research run as a tool answers it: a JSON
// summary (as ztrade-mcp's tool gives it) and each chart as an image;
// isError when the code failed.
func researchResult(r *wire.ResearchResponse) *mcp.CallToolResult {
	if !r.Finished() {
		return jsonResult(map[string]any{"id": r.ID, "status": r.Status, "finished": false,
			"hint": "not finished yet: call get_research_run with this id and a wait"})
	}
	summary := map[string]any{"id": r.ID, "status": r.Status, "ok": r.OK, "error": r.Error, "meta": r.Meta,
		"stdout": r.Stdout, "stdoutTruncated": r.StdoutTruncated, "stderr": r.Stderr, "stderrTruncated": r.StderrTruncated,
		"result": r.Result}
	var images []mcp.Content
	var names []map[string]string
	for _, img := range r.Images {
		data, err := base64.StdEncoding.DecodeString(img.Data)
		if err != nil || !strings.HasPrefix(img.MimeType, "image/") {
			continue
		}
		images = append(images, &mcp.ImageContent{Data: data, MIMEType: img.MimeType})
		names = append(names, map[string]string{"name": img.Name, "mimeType": img.MimeType})
	}
	if len(names) > 0 {
		summary["images"] = names
	}
	res := jsonResult(summary)
	res.Content = append(res.Content, images...)
	res.IsError = !r.OK
	return res
}

// researchArgs are run_python_research's arguments: ztrade-mcp's, so a
// prompt written for its tool works unchanged.
type researchArgs struct {
	Exchange   string `json:"exchange" jsonschema:"exchange name, e.g. binance or okx"`
	Symbol     string `json:"symbol" jsonschema:"trading pair, e.g. BTCUSDT"`
	BinSize    string `json:"binSize,omitempty" jsonschema:"K-line period: a number and s, m, h, d or w (1m, 5m, 15m, 1h, 4h, 1d). Default 1m"`
	Start      any    `json:"start" jsonschema:"first candle: '2006-01-02 15:04:05' (UTC) or unix seconds"`
	End        any    `json:"end" jsonschema:"last candle, inclusive: '2006-01-02 15:04:05' (UTC) or unix seconds"`
	Limit      int64  `json:"limit,omitempty" jsonschema:"most rows to load into df (0: the server's maximum)"`
	TimeoutSec int    `json:"timeoutSec,omitempty" jsonschema:"time limit in seconds (0: the server's default)"`
	Code       string `json:"code" jsonschema:"the Python to run: df is the K-line DataFrame; set result to return a value; matplotlib figures come back as images"`
}

// request is a as the research API's body.
func (a researchArgs) request() (wire.ResearchRequest, error) {
	start, err := toUnix("start", a.Start)
	if err != nil {
		return wire.ResearchRequest{}, err
	}
	end, err := toUnix("end", a.End)
	if err != nil {
		return wire.ResearchRequest{}, err
	}
	return wire.ResearchRequest{Market: wire.Market{Exchange: a.Exchange, Symbol: a.Symbol, BinSize: a.BinSize,
		Start: start, End: end, Limit: a.Limit}, TimeoutSec: a.TimeoutSec, Code: a.Code}, nil
}

// toUnix reads a time given as '2006-01-02 15:04:05' (UTC), RFC 3339 or
// unix seconds (a number or a numeric string).
func toUnix(name string, v any) (int64, error) {
	switch x := v.(type) {
	case float64:
		return int64(x), nil
	case string:
		x = strings.TrimSpace(x)
		if n, err := strconv.ParseInt(x, 10, 64); err == nil {
			return n, nil
		}
		for _, layout := range []string{time.DateTime, time.RFC3339, time.DateOnly} {
			if t, err := time.ParseInLocation(layout, x, time.UTC); err == nil {
				return t.Unix(), nil
			}
		}
		return 0, fmt.Errorf("%s %q: give '2006-01-02 15:04:05' (UTC) or unix seconds", name, x)
	case nil:
		return 0, fmt.Errorf("%s is required: '2006-01-02 15:04:05' (UTC) or unix seconds", name)
	}
	return 0, fmt.Errorf("%s must be '2006-01-02 15:04:05' (UTC) or unix seconds, not %v", name, v)
}

type runIDArg struct {
	ID string `json:"id" jsonschema:"the run's id"`
}

type waitArgs struct {
	ID      string  `json:"id" jsonschema:"the research run's id (from submit_research)"`
	WaitSec float64 `json:"waitSec,omitempty" jsonschema:"wait up to this many seconds for it to finish (0: answer at once; the server caps long waits)"`
}

// addResearch adds the tools research:run allows.
func (t mcpTools) addResearch(srv *mcp.Server) {
	mcp.AddTool(srv, &mcp.Tool{Name: "run_python_research", Description: "Run Python research code against K-lines " +
		"(OHLCV candles) read from the market database, and wait for the answer: the result, stdout/stderr and each " +
		"matplotlib chart as an image. df holds the candles of exchange/symbol/binSize from start to end. Read the " +
		envResourceURI + " resource for what the code can use. For long work use submit_research."},
		func(ctx context.Context, req *mcp.CallToolRequest, a researchArgs) (*mcp.CallToolResult, any, error) {
			body, err := a.request()
			if err != nil {
				return nil, nil, err
			}
			var r wire.ResearchResponse
			if err := t.call(ctx, req, http.MethodPost, "/v1/research/run", body, &r); err != nil {
				return nil, nil, err
			}
			return researchResult(&r), nil, nil
		})
	mcp.AddTool(srv, &mcp.Tool{Name: "submit_research", Description: "Queue Python research code (the arguments of " +
		"run_python_research) and answer at once with the run's id; get_research_run waits for its result."},
		func(ctx context.Context, req *mcp.CallToolRequest, a researchArgs) (*mcp.CallToolResult, any, error) {
			body, err := a.request()
			if err != nil {
				return nil, nil, err
			}
			var r wire.ResearchResponse
			if err := t.call(ctx, req, http.MethodPost, "/v1/research/run?wait=false", body, &r); err != nil {
				return nil, nil, err
			}
			return jsonResult(map[string]any{"id": r.ID, "status": r.Status}), nil, nil
		})
	mcp.AddTool(srv, &mcp.Tool{Name: "get_research_run", Description: "Read a research run, waiting up to waitSec " +
		"for it to finish: its result, output and charts once it has."},
		func(ctx context.Context, req *mcp.CallToolRequest, a waitArgs) (*mcp.CallToolResult, any, error) {
			path := "/v1/research/runs/" + url.PathEscape(a.ID)
			if a.WaitSec > 0 {
				path += "?wait=" + strconv.FormatFloat(a.WaitSec, 'f', -1, 64)
			}
			var r wire.ResearchResponse
			if err := t.call(ctx, req, http.MethodGet, path, nil, &r); err != nil {
				return nil, nil, err
			}
			return researchResult(&r), nil, nil
		})
	mcp.AddTool(srv, &mcp.Tool{Name: "cancel_research_run", Description: "Stop a research run: dropped if still " +
		"queued, killed if running."},
		func(ctx context.Context, req *mcp.CallToolRequest, a runIDArg) (*mcp.CallToolResult, any, error) {
			var r wire.ResearchResponse
			if err := t.call(ctx, req, http.MethodPost, "/v1/research/runs/"+url.PathEscape(a.ID)+"/cancel", nil, &r); err != nil {
				return nil, nil, err
			}
			return jsonResult(map[string]any{"id": r.ID, "status": r.Status}), nil, nil
		})
	mcp.AddTool(srv, &mcp.Tool{Name: "list_markets", Description: "List the markets the K-line database has: " +
		"exchange, symbol and the candle sizes stored (others are resampled from a finer one)."},
		func(ctx context.Context, req *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, any, error) {
			return t.relay(ctx, req, "/v1/research/markets")
		})
}

type listRunsArgs struct {
	Status string `json:"status,omitempty" jsonschema:"only runs with this status (queued, starting, running, restarting, stopping, succeeded, failed, stopped, timeout, terminated)"`
	Script string `json:"script,omitempty" jsonschema:"only runs of this script"`
	Kind   string `json:"kind,omitempty" jsonschema:"script or research"`
	Limit  int    `json:"limit,omitempty" jsonschema:"most runs to list (newest first)"`
	Cursor string `json:"cursor,omitempty" jsonschema:"the next_cursor of the previous page"`
}

// addScriptsRead adds the tools scripts:read allows.
func (t mcpTools) addScriptsRead(srv *mcp.Server) {
	p := t.s.cfg.APIPrefix
	mcp.AddTool(srv, &mcp.Tool{Name: "list_scripts", Description: "List the scripts that can be started " +
		"(Python files of the scripts folder, by path)."},
		func(ctx context.Context, req *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, any, error) {
			return t.relay(ctx, req, p+"/scripts")
		})
	mcp.AddTool(srv, &mcp.Tool{Name: "get_run", Description: "Read one run record (a script or a research run): " +
		"status, pid, exit code, times, error."},
		func(ctx context.Context, req *mcp.CallToolRequest, a runIDArg) (*mcp.CallToolResult, any, error) {
			var r wire.Run
			if err := t.call(ctx, req, http.MethodGet, p+"/runs/"+url.PathEscape(a.ID), nil, &r); err != nil {
				return nil, nil, err
			}
			return jsonResult(r), nil, nil
		})
	mcp.AddTool(srv, &mcp.Tool{Name: "list_runs", Description: "List runs, newest first, optionally by status, " +
		"script or kind; next_cursor pages on."},
		func(ctx context.Context, req *mcp.CallToolRequest, a listRunsArgs) (*mcp.CallToolResult, any, error) {
			q := url.Values{}
			for k, v := range map[string]string{"status": a.Status, "script": a.Script, "kind": a.Kind, "cursor": a.Cursor} {
				if v != "" {
					q.Set(k, v)
				}
			}
			if a.Limit > 0 {
				q.Set("limit", strconv.Itoa(a.Limit))
			}
			return t.relay(ctx, req, p+"/runs?"+q.Encode())
		})
}

type startArgs struct {
	Script     string            `json:"script" jsonschema:"the script's path in the scripts folder (see list_scripts)"`
	Args       []string          `json:"args,omitempty" jsonschema:"command-line arguments"`
	Env        map[string]string `json:"env,omitempty" jsonschema:"extra environment variables"`
	Duplicate  bool              `json:"duplicate,omitempty" jsonschema:"start even if a run of this script is active (otherwise that is an error naming it)"`
	TimeoutSec int               `json:"timeout_sec,omitempty" jsonschema:"stop the script after this many seconds (0: never)"`
	Restart    string            `json:"restart,omitempty" jsonschema:"restart policy: on-failure (after a crash or a lost worker) or always; restarted with back-off, at most 5 times in 10 minutes (default: never)"`
}

// addScriptsRun adds the tools scripts:run allows.
func (t mcpTools) addScriptsRun(srv *mcp.Server) {
	p := t.s.cfg.APIPrefix
	mcp.AddTool(srv, &mcp.Tool{Name: "start_script", Description: "Start a script (a long-running trading bot or " +
		"job) on a free worker; answers with its run record once it runs. One copy per script unless duplicate."},
		func(ctx context.Context, req *mcp.CallToolRequest, a startArgs) (*mcp.CallToolResult, any, error) {
			body := wire.ScriptRequest{Script: a.Script, Args: a.Args, Env: a.Env, Duplicate: a.Duplicate, TimeoutSec: a.TimeoutSec}
			if a.Restart != "" {
				body.Restart = &run.RestartPolicy{Policy: a.Restart}
			}
			var r wire.Run
			if err := t.call(ctx, req, http.MethodPost, p+"/runs", body, &r); err != nil {
				return nil, nil, err
			}
			return jsonResult(r), nil, nil
		})
	mcp.AddTool(srv, &mcp.Tool{Name: "stop_run", Description: "Stop a script: SIGTERM, a grace period, then " +
		"SIGKILL. Answers with its record once stopped."},
		func(ctx context.Context, req *mcp.CallToolRequest, a runIDArg) (*mcp.CallToolResult, any, error) {
			var r wire.Run
			if err := t.call(ctx, req, http.MethodPost, p+"/runs/"+url.PathEscape(a.ID)+"/stop", nil, &r); err != nil {
				return nil, nil, err
			}
			return jsonResult(r), nil, nil
		})
}

type logsArgs struct {
	ID        string `json:"id" jsonschema:"the run's id"`
	Stream    string `json:"stream,omitempty" jsonschema:"stdout, stderr or both (default both)"`
	TailBytes int    `json:"tail_bytes,omitempty" jsonschema:"the last this many bytes of each stream (default 65536)"`
}

// addLogs adds the tools logs:read allows.
func (t mcpTools) addLogs(srv *mcp.Server) {
	p := t.s.cfg.APIPrefix
	mcp.AddTool(srv, &mcp.Tool{Name: "get_logs", Description: "Read the end of a run's output (stdout and stderr)."},
		func(ctx context.Context, req *mcp.CallToolRequest, a logsArgs) (*mcp.CallToolResult, any, error) {
			stream, tail := a.Stream, a.TailBytes
			if stream == "" {
				stream = "both"
			}
			if tail == 0 {
				tail = 65536
			}
			path := fmt.Sprintf("%s/runs/%s/logs?stream=%s&tail_bytes=%d", p, url.PathEscape(a.ID), url.QueryEscape(stream), tail)
			return t.relay(ctx, req, path)
		})
}
