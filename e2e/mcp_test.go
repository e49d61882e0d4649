package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	pngfmt "image/png"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/ztrade/pyrunner/pkg/auth"
)

// withBearer adds a bearer token to every request.
type withBearer struct{ token string }

func (b withBearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	if b.token != "" {
		r.Header.Set("Authorization", "Bearer "+b.token)
	}
	return http.DefaultTransport.RoundTrip(r)
}

// mcpSession connects the SDK's own client to the stack's /mcp over
// streamable HTTP with token.
func mcpSession(t *testing.T, s *stack, token string) (*mcp.ClientSession, error) {
	t.Helper()
	c := mcp.NewClient(&mcp.Implementation{Name: "pyrunner-e2e", Version: "1"}, nil)
	tr := &mcp.StreamableClientTransport{Endpoint: s.base + "/mcp", HTTPClient: &http.Client{Transport: withBearer{token}},
		MaxRetries: -1, DisableStandaloneSSE: true}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cs, err := c.Connect(ctx, tr, nil)
	if err == nil {
		t.Cleanup(func() { _ = cs.Close() }) // the stack may be gone first
	}
	return cs, err
}

// callTool calls a tool and returns its result and its first text.
func callTool(t *testing.T, cs *mcp.ClientSession, name string, args map[string]any) (*mcp.CallToolResult, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	text := ""
	if len(res.Content) > 0 {
		if tc, ok := res.Content[0].(*mcp.TextContent); ok {
			text = tc.Text
		}
	}
	return res, text
}

// ztradeArgs are run_python_research's arguments exactly as ztrade-mcp's
// tool takes them, on the seed's day.
func ztradeArgs(binSize, code string) map[string]any {
	return map[string]any{"exchange": "binance", "symbol": "BTCUSDT", "binSize": binSize,
		"start": "2025-01-01 00:00:00", "end": "2025-01-02 00:00:00", "code": code}
}

func TestMCP(t *testing.T) {
	root := writeScripts(t)
	s := startStack(t, stackOpts{scripts: root, env: map[string]string{
		"SCRIPT_JWT_AUTH": "true", "SCRIPT_JWT_SECRET": jwtSecret, "SCRIPT_JWT_ISS": jwtIss, "SCRIPT_JWT_AUD": jwtAud,
		"PYRUNNER_TOKEN": staticToken}})
	minter := &auth.Minter{Secret: []byte(jwtSecret), Issuer: jwtIss, Audience: jwtAud}
	mint := func(scopes ...string) string {
		tok, err := minter.Mint("agent", scopes, time.Hour, nil)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	all := mint("*")
	researchTools := []string{"cancel_research_run", "get_research_run", "list_markets", "run_python_research", "submit_research"}

	t.Run("ToolsByScope", func(t *testing.T) {
		s.t = t
		toolNames := func(token string) []string {
			cs, err := mcpSession(t, s, token)
			if err != nil {
				t.Fatal(err)
			}
			res, err := cs.ListTools(context.Background(), nil)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, tool := range res.Tools {
				names = append(names, tool.Name)
			}
			slices.Sort(names)
			return names
		}
		if got := toolNames(mint(auth.ScopeResearchRun)); !slices.Equal(got, researchTools) {
			t.Errorf("research:run lists %v", got)
		}
		if got := toolNames(staticToken); !slices.Equal(got, researchTools) {
			t.Errorf("PYRUNNER_TOKEN lists %v", got)
		}
		want := append(slices.Clone(researchTools), "get_logs", "get_run", "list_runs", "list_scripts", "start_script", "stop_run")
		slices.Sort(want)
		if got := toolNames(all); !slices.Equal(got, want) {
			t.Errorf("* lists %v, want %v", got, want)
		}
		if _, err := mcpSession(t, s, ""); err == nil {
			t.Error("a session without a token connected")
		}
		req, _ := http.NewRequest(http.MethodPost, s.base+"/mcp", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}`))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body struct{ Detail string }
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 || !strings.Contains(body.Detail, "Missing bearer token") {
			t.Errorf("no token: %d %q", resp.StatusCode, body.Detail)
		}
	})

	cs, err := mcpSession(t, s, all)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("RunPythonResearch", func(t *testing.T) {
		s.t = t
		res, text := callTool(t, cs, "run_python_research", ztradeArgs("1m", "result = {'rows': len(df)}"))
		var got struct {
			OK     bool `json:"ok"`
			Result struct {
				Rows int `json:"rows"`
			} `json:"result"`
		}
		if res.IsError || json.Unmarshal([]byte(text), &got) != nil || !got.OK || got.Result.Rows != 1441 {
			t.Errorf("rows: isError %v, %s", res.IsError, text)
		}
		// Epoch seconds work too.
		args := ztradeArgs("1h", "import matplotlib.pyplot as plt\nplt.plot(df.close)\nresult = len(df)")
		args["start"], args["end"] = seedStart, fmt.Sprint(seedEnd)
		res, text = callTool(t, cs, "run_python_research", args)
		var img *mcp.ImageContent
		for _, c := range res.Content {
			if ic, ok := c.(*mcp.ImageContent); ok {
				img = ic
			}
		}
		if res.IsError || img == nil || img.MIMEType != "image/png" {
			t.Fatalf("chart: isError %v, %d contents, %s", res.IsError, len(res.Content), text)
		}
		if cfg, err := pngfmt.DecodeConfig(bytes.NewReader(img.Data)); err != nil || cfg.Width < 100 {
			t.Errorf("the image does not decode as a PNG: %v %+v", err, cfg)
		}
		res, text = callTool(t, cs, "run_python_research", ztradeArgs("1m", "x = 1\ny = x / 0\n"))
		if !res.IsError || !strings.Contains(text, "ZeroDivisionError") || !strings.Contains(text, "line 2") {
			t.Errorf("failing snippet: isError %v, %s", res.IsError, text)
		}
		res, text = callTool(t, cs, "run_python_research", map[string]any{"exchange": "binance", "symbol": "BTCUSDT",
			"start": "yesterday", "end": "2025-01-02 00:00:00", "code": "result = 1"})
		if !res.IsError || !strings.Contains(text, "start") {
			t.Errorf("bad start: isError %v, %s", res.IsError, text)
		}
	})

	t.Run("Scripts", func(t *testing.T) {
		s.t = t
		res, text := callTool(t, cs, "start_script", map[string]any{"script": "ticker.py"})
		var run struct {
			RunID  string `json:"run_id"`
			Status string `json:"status"`
		}
		if res.IsError || json.Unmarshal([]byte(text), &run) != nil || run.RunID == "" {
			t.Fatalf("start_script: %s", text)
		}
		waitUntil(t, time.Minute, "get_logs to show tick 1", func() bool {
			_, text := callTool(t, cs, "get_logs", map[string]any{"id": run.RunID})
			return strings.Contains(text, "tick 1 ✓")
		})
		if res, text := callTool(t, cs, "start_script", map[string]any{"script": "ticker.py"}); !res.IsError || !strings.Contains(text, "409") {
			t.Errorf("a second start: isError %v, %s", res.IsError, text)
		}
		res, text = callTool(t, cs, "stop_run", map[string]any{"id": run.RunID})
		if res.IsError || !strings.Contains(text, `"status": "stopped"`) {
			t.Errorf("stop_run: %s", text)
		}
		_, text = callTool(t, cs, "list_runs", map[string]any{"status": "stopped", "script": "ticker.py"})
		if !strings.Contains(text, run.RunID) {
			t.Errorf("list_runs does not show %s stopped: %s", run.RunID, text)
		}
		if res, text := callTool(t, cs, "get_run", map[string]any{"id": "no-such-run"}); !res.IsError || !strings.Contains(text, "404") {
			t.Errorf("unknown run: isError %v, %s", res.IsError, text)
		}
	})

	t.Run("SubmitWaitCancel", func(t *testing.T) {
		s.t = t
		_, text := callTool(t, cs, "submit_research", ztradeArgs("1m", "result = int(df.close.count())"))
		var sub struct{ ID string }
		if json.Unmarshal([]byte(text), &sub) != nil || sub.ID == "" {
			t.Fatalf("submit_research: %s", text)
		}
		res, text := callTool(t, cs, "get_research_run", map[string]any{"id": sub.ID, "waitSec": 60})
		if res.IsError || !strings.Contains(text, `"result": 1441`) {
			t.Errorf("get_research_run: %s", text)
		}
		_, text = callTool(t, cs, "submit_research", ztradeArgs("1m", "print('started', flush=True)\nimport time\ntime.sleep(300)"))
		if json.Unmarshal([]byte(text), &sub) != nil || sub.ID == "" {
			t.Fatalf("submit_research: %s", text)
		}
		callTool(t, cs, "cancel_research_run", map[string]any{"id": sub.ID})
		res, text = callTool(t, cs, "get_research_run", map[string]any{"id": sub.ID, "waitSec": 60})
		if !res.IsError || !strings.Contains(text, `"status": "stopped"`) {
			t.Errorf("cancelled run: isError %v, %s", res.IsError, text)
		}
	})

	t.Run("Resource", func(t *testing.T) {
		s.t = t
		res, err := cs.ReadResource(context.Background(), &mcp.ReadResourceParams{URI: "pyrunner://research/environment"})
		if err != nil || len(res.Contents) != 1 || !strings.Contains(res.Contents[0].Text, "load_kline(exchange, symbol, binSize, start, end, limit=0)") {
			t.Errorf("environment resource: %v %+v", err, res)
		}
	})

	t.Run("TenSessions", func(t *testing.T) {
		s.t = t
		var wg sync.WaitGroup
		for i := range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cs, err := mcpSession(t, s, mint(auth.ScopeResearchRun))
				if err != nil {
					t.Error(err)
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "run_python_research",
					Arguments: ztradeArgs("1h", fmt.Sprintf("result = {'mine': %d, 'rows': len(df)}", i))})
				if err != nil {
					t.Error(err)
					return
				}
				want := fmt.Sprintf(`"mine": %d,`, i)
				if text := res.Content[0].(*mcp.TextContent).Text; res.IsError || !strings.Contains(text, want) {
					t.Errorf("session %d got %s", i, text)
				}
			}()
		}
		wg.Wait()
	})
}
