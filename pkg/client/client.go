// Package client is a typed Go client of both of pyrunner's HTTP APIs: the
// research API (python-runner's, camelCase) and the script control plane
// (quant-script-api's, snake_case). It is what ztrade-mcp, a CLI or any Go
// program imports to run research code and drive trading scripts.
//
// Every call takes a context. Answers of 429 (a full queue, a client
// backed off) and 503 (Redis away) are retried with back-off, honouring
// Retry-After, up to the client's retry budget; any other error status is
// an *Error carrying the API's {"detail"}.
//
//	c := client.New("http://127.0.0.1:9000", client.WithToken(os.Getenv("PYRUNNER_TOKEN")))
//	res, err := c.Research(ctx, client.ResearchRequest{Market: client.Market{Exchange: "binance",
//		Symbol: "BTCUSDT", BinSize: "1h", Start: 1735689600, End: 1735776000}, Code: "result = len(df)"})
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/ztrade/pyrunner/pkg/run"
	"github.com/ztrade/pyrunner/pkg/wire"
)

// Client talks to one pyrunner API. Its zero value is not usable: make
// one with New.
type Client struct {
	base    string
	token   string
	http    *http.Client
	retries int
	backoff time.Duration
}

// Option configures a Client.
type Option func(*Client)

// WithToken sends "Authorization: Bearer token" (a JWT, or PYRUNNER_TOKEN)
// with every request; "" sends none.
func WithToken(token string) Option { return func(c *Client) { c.token = token } }

// WithHTTPClient uses h for every request (its Timeout bounds each one;
// long-polls and follows need a generous one or none).
func WithHTTPClient(h *http.Client) Option { return func(c *Client) { c.http = h } }

// WithRetries sets how many times a 429 or 503 answer is retried (5 by
// default), first after base (500 ms) unless Retry-After says otherwise,
// doubling each time.
func WithRetries(n int, base time.Duration) Option {
	return func(c *Client) { c.retries, c.backoff = n, base }
}

// New makes a client of the API at baseURL (e.g. http://127.0.0.1:9000).
func New(baseURL string, opts ...Option) *Client {
	c := &Client{base: strings.TrimRight(baseURL, "/"), http: &http.Client{}, retries: 5, backoff: 500 * time.Millisecond}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Error is an answer with an error status: its HTTP status and the API's
// detail.
type Error struct {
	Status int
	Detail string
	// RetryAfter is the server's Retry-After, when it sent one.
	RetryAfter time.Duration
}

func (e *Error) Error() string { return fmt.Sprintf("pyrunner: %d %s", e.Status, e.Detail) }

// StatusOf is the HTTP status of err when it is an *Error, else 0.
func StatusOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

// do sends a request, retrying 429/503, and decodes a JSON answer into
// out. ok lists the statuses that are not errors (200 when empty).
func (c *Client) do(ctx context.Context, method, path string, body any, out any, ok ...int) (int, error) {
	var payload []byte
	if body != nil {
		var err error
		if payload, err = json.Marshal(body); err != nil {
			return 0, fmt.Errorf("pyrunner: encode request: %w", err)
		}
	}
	if len(ok) == 0 {
		ok = []int{http.StatusOK}
	}
	delay := c.backoff
	for attempt := 0; ; attempt++ {
		resp, err := c.send(ctx, method, path, payload)
		if err != nil {
			return 0, err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return resp.StatusCode, fmt.Errorf("pyrunner: read answer: %w", err)
		}
		for _, s := range ok {
			if resp.StatusCode == s {
				if out != nil && len(b) > 0 {
					if err := json.Unmarshal(b, out); err != nil {
						return resp.StatusCode, fmt.Errorf("pyrunner: decode answer: %w", err)
					}
				}
				return resp.StatusCode, nil
			}
		}
		apiErr := errorOf(resp, b)
		retryable := resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable
		if !retryable || attempt >= c.retries {
			return resp.StatusCode, apiErr
		}
		wait := delay
		if apiErr.RetryAfter > 0 {
			wait = apiErr.RetryAfter
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return resp.StatusCode, ctx.Err()
		}
		delay *= 2
	}
}

func (c *Client) send(ctx context.Context, method, path string, payload []byte) (*http.Response, error) {
	var body io.Reader
	if payload != nil {
		body = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, fmt.Errorf("pyrunner: %w", err)
	}
	if payload != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("pyrunner: %s %s: %w", method, path, err)
	}
	return resp, nil
}

func errorOf(resp *http.Response, b []byte) *Error {
	e := &Error{Status: resp.StatusCode}
	var d struct {
		Detail string `json:"detail"`
	}
	if json.Unmarshal(b, &d) == nil && d.Detail != "" {
		e.Detail = d.Detail
	} else {
		e.Detail = strings.TrimSpace(string(b))
	}
	if s, err := strconv.ParseFloat(resp.Header.Get("Retry-After"), 64); err == nil && s > 0 {
		e.RetryAfter = time.Duration(math.Ceil(s)) * time.Second
	}
	return e
}

// The API's bodies, as pkg/wire defines them for the server and the
// client alike.
type (
	// Market is a K-line series and range: the market part of a
	// ResearchRequest.
	Market = wire.Market
	// ResearchRequest is the body of POST /v1/research/run.
	ResearchRequest = wire.ResearchRequest
	// ResearchResult is a research run as the API answers it: its
	// result (nil until it has finished: see Finished), then its id,
	// status and times.
	ResearchResult = wire.ResearchResponse
	// Image is a chart a run produced, base64 in Data.
	Image = wire.Image
	// ScriptRequest is the body of POST /v1/runs.
	ScriptRequest = wire.ScriptRequest
	// Run is a run record of the script API (either kind).
	Run = wire.Run
	// Script is one script of the scripts folder.
	Script = wire.Script
	// RestartPolicy is a script run's restart field.
	RestartPolicy = run.RestartPolicy
	// Restart is one ended attempt of a restarted run (Run.Restarts).
	Restart = run.Restart
	// ScheduleRequest is the body of POST and PATCH /v1/schedules.
	ScheduleRequest = wire.ScheduleRequest
	// Schedule is a schedule with its next and last firings.
	Schedule = wire.Schedule
)

// Schedules lists every schedule.
func (c *Client) Schedules(ctx context.Context) ([]Schedule, error) {
	var out struct {
		Schedules []Schedule `json:"schedules"`
	}
	_, err := c.do(ctx, http.MethodGet, "/v1/schedules", nil, &out)
	return out.Schedules, err
}

// Schedule reads one schedule.
func (c *Client) Schedule(ctx context.Context, id string) (*Schedule, error) {
	var sc Schedule
	_, err := c.do(ctx, http.MethodGet, "/v1/schedules/"+url.PathEscape(id), nil, &sc)
	return &sc, err
}

// CreateSchedule makes a schedule: Name, Cron, Kind and Request are
// required.
func (c *Client) CreateSchedule(ctx context.Context, req ScheduleRequest) (*Schedule, error) {
	var sc Schedule
	_, err := c.do(ctx, http.MethodPost, "/v1/schedules", req, &sc, http.StatusCreated)
	return &sc, err
}

// UpdateSchedule changes the fields req sets (Paused pauses or resumes).
func (c *Client) UpdateSchedule(ctx context.Context, id string, req ScheduleRequest) (*Schedule, error) {
	var sc Schedule
	_, err := c.do(ctx, http.MethodPatch, "/v1/schedules/"+url.PathEscape(id), req, &sc)
	return &sc, err
}

// DeleteSchedule deletes a schedule (its runs stay).
func (c *Client) DeleteSchedule(ctx context.Context, id string) error {
	_, err := c.do(ctx, http.MethodDelete, "/v1/schedules/"+url.PathEscape(id), nil, nil)
	return err
}

// Firing is what a triggered firing did: result fired, skipped or failed,
// and the run it submitted (or the live one it skipped for).
type Firing struct {
	ScheduleID string  `json:"schedule_id"`
	Result     string  `json:"result"`
	RunID      *string `json:"run_id"`
	Detail     *string `json:"detail"`
}

// TriggerSchedule fires a schedule now, by its rules.
func (c *Client) TriggerSchedule(ctx context.Context, id string) (*Firing, error) {
	var f Firing
	_, err := c.do(ctx, http.MethodPost, "/v1/schedules/"+url.PathEscape(id)+"/trigger", nil, &f, http.StatusAccepted)
	return &f, err
}

// Research runs code and waits for the result (the API's wait=true). A
// run that outlasts the API's wait cap comes back unfinished: wait on it
// with ResearchRun.
func (c *Client) Research(ctx context.Context, req ResearchRequest) (*ResearchResult, error) {
	var r ResearchResult
	_, err := c.do(ctx, http.MethodPost, "/v1/research/run", req, &r, http.StatusOK, http.StatusAccepted)
	return &r, err
}

// Submit queues a research run and returns its id at once (wait=false).
func (c *Client) Submit(ctx context.Context, req ResearchRequest) (string, error) {
	var r struct {
		ID string `json:"id"`
	}
	_, err := c.do(ctx, http.MethodPost, "/v1/research/run?wait=false", req, &r, http.StatusAccepted)
	return r.ID, err
}

// ResearchRun reads a research run, long-polling up to wait for it to end
// (0: answer at once).
func (c *Client) ResearchRun(ctx context.Context, id string, wait time.Duration) (*ResearchResult, error) {
	var r ResearchResult
	path := "/v1/research/runs/" + url.PathEscape(id)
	if wait > 0 {
		path += "?wait=" + strconv.FormatFloat(wait.Seconds(), 'f', -1, 64)
	}
	_, err := c.do(ctx, http.MethodGet, path, nil, &r, http.StatusOK, http.StatusAccepted)
	return &r, err
}

// Cancel stops a research run (drops it if still queued).
func (c *Client) Cancel(ctx context.Context, id string) (*ResearchResult, error) {
	var r ResearchResult
	_, err := c.do(ctx, http.MethodPost, "/v1/research/runs/"+url.PathEscape(id)+"/cancel", nil, &r, http.StatusOK, http.StatusAccepted)
	return &r, err
}

// Start starts a script and returns its record once a worker started it.
func (c *Client) Start(ctx context.Context, req ScriptRequest) (*Run, error) {
	var r Run
	_, err := c.do(ctx, http.MethodPost, "/v1/runs", req, &r)
	return &r, err
}

// Get reads one run record (either kind).
func (c *Client) Get(ctx context.Context, id string) (*Run, error) {
	var r Run
	_, err := c.do(ctx, http.MethodGet, "/v1/runs/"+url.PathEscape(id), nil, &r)
	return &r, err
}

// Stop stops a script: SIGTERM, the grace, then SIGKILL. It returns the
// record once stopped (or still "stopping" if the grace outlasts the call).
func (c *Client) Stop(ctx context.Context, id string) (*Run, error) {
	var r Run
	_, err := c.do(ctx, http.MethodPost, "/v1/runs/"+url.PathEscape(id)+"/stop", nil, &r)
	return &r, err
}

// Filter narrows List; zero fields do not filter.
type Filter struct {
	Status, Script, Kind string
	Limit                int
	Cursor               string
}

// List returns runs, newest first, and the cursor of the next page ("" at
// the end).
func (c *Client) List(ctx context.Context, f Filter) ([]Run, string, error) {
	q := url.Values{}
	for k, v := range map[string]string{"status": f.Status, "script": f.Script, "kind": f.Kind, "cursor": f.Cursor} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var out struct {
		Runs       []Run   `json:"runs"`
		NextCursor *string `json:"next_cursor"`
	}
	path := "/v1/runs"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	_, err := c.do(ctx, http.MethodGet, path, nil, &out)
	next := ""
	if out.NextCursor != nil {
		next = *out.NextCursor
	}
	return out.Runs, next, err
}

// Scripts lists the scanned scripts folder.
func (c *Client) Scripts(ctx context.Context) ([]Script, error) {
	var out struct {
		Scripts []Script `json:"scripts"`
	}
	_, err := c.do(ctx, http.MethodGet, "/v1/scripts", nil, &out)
	return out.Scripts, err
}

// Logs is a run's kept output.
type Logs struct {
	Stdout *string `json:"stdout"`
	Stderr *string `json:"stderr"`
}

// Logs reads the last tailBytes of a run's streams ("stdout", "stderr" or
// "both"); tailBytes 0 is the whole kept log.
func (c *Client) Logs(ctx context.Context, id, stream string, tailBytes int) (*Logs, error) {
	var l Logs
	_, err := c.do(ctx, http.MethodGet, fmt.Sprintf("/v1/runs/%s/logs?stream=%s&tail_bytes=%d", url.PathEscape(id), url.QueryEscape(stream), tailBytes), nil, &l)
	return &l, err
}

// Follow streams a run's output (Server-Sent Events) as it is written,
// calling out with each chunk of text of a stream ("stdout" or "stderr";
// stream "both" asks for both), until the run ends or ctx does. It
// returns the final record.
func (c *Client) Follow(ctx context.Context, id, stream string, out func(stream, text string)) (*Run, error) {
	resp, err := c.send(ctx, http.MethodGet, fmt.Sprintf("/v1/runs/%s/logs?stream=%s&follow=true", url.PathEscape(id), url.QueryEscape(stream)), nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, errorOf(resp, b)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	event, data := "", []string(nil)
	for sc.Scan() {
		t := sc.Text()
		switch {
		case strings.HasPrefix(t, "event: "):
			event = strings.TrimPrefix(t, "event: ")
		case strings.HasPrefix(t, "data: "):
			data = append(data, strings.TrimPrefix(t, "data: "))
		case t == "" && event != "":
			text := strings.Join(data, "\n") // SSE: data lines join with newlines
			if event == "end" {
				var r Run
				if err := json.Unmarshal([]byte(text), &r); err != nil {
					return nil, fmt.Errorf("pyrunner: follow %s: bad end event: %w", id, err)
				}
				return &r, nil
			}
			out(event, text)
			event, data = "", nil
		}
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("pyrunner: follow %s: %w", id, err)
	}
	return c.Get(ctx, id) // the stream closed without its end event
}

// Health is GET /health.
func (c *Client) Health(ctx context.Context) (map[string]any, error) {
	var h map[string]any
	_, err := c.do(ctx, http.MethodGet, "/health", nil, &h)
	return h, err
}
