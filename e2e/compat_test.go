package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The clients of the two services pyrunner replaces, played exactly: what
// each one sends, and what it decodes from the answer.

// pyResearchRequest and pyResearchResponse are ztrade-mcp's
// (tools/python_research.go): its body, and the way it decodes the answer.
type pyResearchRequest struct {
	Exchange   string `json:"exchange"`
	Symbol     string `json:"symbol"`
	BinSize    string `json:"binSize"`
	Start      int64  `json:"start"`
	End        int64  `json:"end"`
	Limit      int    `json:"limit,omitempty"`
	TimeoutSec int    `json:"timeoutSec,omitempty"`
	Code       string `json:"code"`
}

type pyResearchResponse struct {
	OK              bool           `json:"ok"`
	Error           string         `json:"error,omitempty"`
	Meta            map[string]any `json:"meta,omitempty"`
	Stdout          string         `json:"stdout,omitempty"`
	StdoutTruncated bool           `json:"stdoutTruncated,omitempty"`
	Stderr          string         `json:"stderr,omitempty"`
	StderrTruncated bool           `json:"stderrTruncated,omitempty"`
	Result          any            `json:"result,omitempty"`
	Images          []struct {
		Data     string `json:"data"`
		MIMEType string `json:"mimeType"`
		Name     string `json:"name,omitempty"`
	} `json:"images,omitempty"`
}

// ztradeMCPCall sends a request the way ztrade-mcp's run_python_research
// tool does and decodes the answer as it does.
func ztradeMCPCall(t *testing.T, base string, p pyResearchRequest) (int, pyResearchResponse) {
	body, _ := json.Marshal(p)
	req, _ := http.NewRequest(http.MethodPost, strings.TrimRight(base, "/")+"/v1/research/run", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 90 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("python-runner request failed: %v", err)
	}
	defer resp.Body.Close()
	respBody, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	var out pyResearchResponse
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(respBody, &out); err != nil {
			t.Fatalf("ztrade-mcp could not decode %s: %v", respBody, err)
		}
	}
	return resp.StatusCode, out
}

func TestPythonRunnerClients(t *testing.T) {
	s := startStack(t, stackOpts{})
	t.Run("ZtradeMCPRequest", func(t *testing.T) {
		start, _ := time.Parse("2006-01-02 15:04:05", "2025-01-01 00:00:00")
		end, _ := time.Parse("2006-01-02 15:04:05", "2025-01-02 00:00:00")
		st, r := ztradeMCPCall(t, s.base, pyResearchRequest{Exchange: "binance", Symbol: "BTCUSDT", BinSize: "1h",
			Start: start.Unix(), End: end.Unix(), Code: "import matplotlib.pyplot as plt\nplt.plot(df.close)\nprint('n', len(df))\nresult = {'rows': len(df), 'last': float(df.close.iloc[-1])}"})
		if st != 200 || !r.OK || r.Error != "" || r.Stdout != "n 24\n" || r.Meta["binSize"] != "1h" || len(r.Images) != 1 || r.Images[0].MIMEType != "image/png" {
			t.Fatalf("ztrade-mcp sees: %d %+v", st, r)
		}
		if res, ok := r.Result.(map[string]any); !ok || res["rows"] != 24.0 {
			t.Errorf("result as ztrade-mcp decodes it: %#v", r.Result)
		}
		// A failing snippet: 200, ok false, the error and the traceback.
		st, r = ztradeMCPCall(t, s.base, pyResearchRequest{Exchange: "binance", Symbol: "BTCUSDT", BinSize: "1m",
			Start: start.Unix(), End: end.Unix(), Code: "x = 1\n1/0"})
		if st != 200 || r.OK || r.Error != "ZeroDivisionError: division by zero" || !strings.Contains(r.Stderr, "line 2") {
			t.Errorf("failing snippet: %d %+v", st, r)
		}
	})
	t.Run("BinSizeDefaultsTo1m", func(t *testing.T) {
		var r result
		st := s.do("POST", "/v1/research/run", `{"exchange":"binance","symbol":"BTCUSDT","start":1735689600,"end":1735776000,"code":"result = len(df)"}`, &r)
		if st != 200 || !r.ok() || string(r.Result) != "1441" || r.Meta["binSize"] != "1m" {
			t.Errorf("no binSize: %d %s meta %v", st, r.Result, r.Meta)
		}
	})
	t.Run("NumbersAsStringsAndFloats", func(t *testing.T) {
		var r result
		st := s.do("POST", "/v1/research/run", `{"exchange":"binance","symbol":"BTCUSDT","binSize":"1m","start":"1735689600","end":1735776000.0,"limit":"10","timeoutSec":10.0,"code":"result = len(df)"}`, &r)
		if st != 200 || !r.ok() || string(r.Result) != "10" {
			t.Errorf("lenient numbers: %d %s %q", st, r.Result, r.errText())
		}
		var e struct{ Detail string }
		if st := s.do("POST", "/v1/research/run", `{"exchange":"binance","symbol":"BTCUSDT","start":1.5,"end":2,"code":"x"}`, &e); st != 400 || !strings.Contains(e.Detail, "start must be an integer") {
			t.Errorf("a fractional start: %d %q", st, e.Detail)
		}
	})
	t.Run("StartAndEndRequired", func(t *testing.T) {
		before := s.runKeys()
		for body, want := range map[string]string{
			`{"exchange":"binance","symbol":"BTCUSDT","end":1735776000,"code":"x"}`:   "start is required",
			`{"exchange":"binance","symbol":"BTCUSDT","start":1735689600,"code":"x"}`: "end is required",
		} {
			var e struct{ Detail string }
			if st := s.do("POST", "/v1/research/run", body, &e); st != 400 || !strings.Contains(e.Detail, want) {
				t.Errorf("%s: %d %q", body, st, e.Detail)
			}
		}
		if s.runKeys() != before {
			t.Errorf("a refused request recorded a run")
		}
	})
	t.Run("LastBucketCompleteWithinEnd", func(t *testing.T) {
		// 5m candles over one hour: the 01:00 bucket would need candles
		// after end, so (as KlineMerge) it is not there.
		var got struct {
			Rows int     `json:"rows"`
			Last int64   `json:"last"`
			Vol  float64 `json:"vol"`
		}
		st, rr := s.research("result = {'rows': len(df), 'last': int(df.start.iloc[-1]), 'vol': float(df.volume.iloc[-1])}",
			map[string]any{"binSize": "5m", "start": seedStart, "end": seedStart + 3600})
		if err := json.Unmarshal(rr.Result, &got); err != nil {
			t.Fatal(err)
		}
		if st != 200 || got.Rows != 12 || got.Last != seedStart+3300 {
			t.Errorf("5m over an hour: %d %+v", st, got)
		}
		var one float64
		s.mustOK(fmt.Sprintf("result = float(df[(df.start >= %d) & (df.start < %d)].volume.sum())", seedStart+3300, seedStart+3600), &one)
		if fmt.Sprintf("%.6f", one) != fmt.Sprintf("%.6f", got.Vol) {
			t.Errorf("last bucket's volume %v, the 1m candles' %v", got.Vol, one)
		}
	})
	t.Run("NonImagesDropped", func(t *testing.T) {
		st, r := s.research("import base64\nimages = [{'data': base64.b64encode(b'hello').decode(), 'mimeType': 'text/plain', 'name': 'notes.txt'}]\nresult = 1", nil)
		warns := fmt.Sprint(r.Meta["warnings"])
		if st != 200 || !r.ok() || len(r.Images) != 0 || !strings.Contains(warns, "notes.txt dropped: text/plain is not an image type") {
			t.Errorf("a text/plain image: %d images %v warnings %s", st, r.Images, warns)
		}
	})
}

// TestQuantScriptAPIClients plays an operator's session against the
// script API as quant-script-api answered it: start (answered running),
// logs with tail_bytes=0 (the whole log), list, stop.
func TestQuantScriptAPIClients(t *testing.T) {
	root := writeScripts(t)
	if err := os.MkdirAll(filepath.Join(root, ".hidden"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, ".hidden", "x.py"), []byte("print('hidden ran')\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "long.py"), []byte("import sys\nsys.stdout.write('x' * 100000 + '\\nend\\n')\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	envFile := filepath.Join(t.TempDir(), "keys.env")
	if err := os.WriteFile(envFile, []byte("# exchange keys\nBINANCE_SECRET='from-env-file'\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cwd := t.TempDir()
	if err := os.WriteFile(filepath.Join(cwd, ".env"), []byte("PYRUNNER_ENV_PASSTHROUGH=BINANCE_*,OKX_KEY\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := startStack(t, stackOpts{scripts: root, dir: cwd, env: map[string]string{
		"SCRIPT_TERMINATE_TIMEOUT_SECONDS": "2", "SCRIPT_ENV_FILE": envFile,
		"BINANCE_API_KEY": "bk", "BINANCE_X": "bx", "OKX_KEY": "ok", "OTHER_SECRET": "no"}})

	t.Run("OperatorSession", func(t *testing.T) {
		st, r := s.startScript(`{"script":"ticker.py","args":["--live"]}`)
		if st != 200 || r.Status != "running" || r.PID == nil || r.StartedAt == nil || r.StdoutPath == nil || r.StderrPath == nil {
			t.Fatalf("start: %d %+v", st, r)
		}
		waitLog(s, r.RunID, "tick 2 ")
		var logs struct {
			TailBytes *int    `json:"tail_bytes"`
			Stdout    *string `json:"stdout"`
			Stderr    *string `json:"stderr"`
		}
		s.do("GET", "/v1/runs/"+r.RunID+"/logs?stream=both&tail_bytes=0", "", &logs)
		if logs.TailBytes == nil || *logs.TailBytes != 0 || logs.Stdout == nil || !strings.HasPrefix(*logs.Stdout, "tick 0 ✓\ntick 1 ✓\n") || logs.Stderr == nil {
			t.Errorf("tail_bytes=0: tail_bytes %v stdout %q stderr %v", logs.TailBytes, deref(logs.Stdout), logs.Stderr)
		}
		var list struct {
			Count int      `json:"count"`
			Runs  []runRec `json:"runs"`
		}
		s.do("GET", "/v1/runs", "", &list)
		if list.Count < 1 || list.Runs[0].RunID != r.RunID || list.Runs[0].Status != "running" {
			t.Errorf("list: %+v", list)
		}
		var stopped runRec
		if st := s.do("POST", "/v1/runs/"+r.RunID+"/stop", "", &stopped); st != 200 || stopped.Status != "stopped" || stopped.ReturnCode == nil {
			t.Errorf("stop: %d %+v", st, stopped)
		}
	})
	t.Run("WholeLogWithTailZero", func(t *testing.T) {
		_, r := s.startScript(`{"script":"long.py"}`)
		s.waitStatus(r.RunID, 20*time.Second, ended)
		var logs struct{ Stdout string }
		s.do("GET", "/v1/runs/"+r.RunID+"/logs?tail_bytes=0", "", &logs)
		if len(logs.Stdout) != 100005 || !strings.HasSuffix(logs.Stdout, "\nend\n") {
			t.Errorf("tail_bytes=0 gave %d bytes, want the whole 100005", len(logs.Stdout))
		}
	})
	t.Run("ExplicitPathsRun", func(t *testing.T) {
		for body, want := range map[string]string{
			`{"script":"_private.py"}`:                                    "no",
			`{"script":".hidden/x.py"}`:                                   "hidden ran",
			fmt.Sprintf(`{"script":%q}`, filepath.Join(root, "hello.py")): "hello []",
			fmt.Sprintf(`{"script":"sub/deep.py","cwd":%q}`, root+"/sub"): root + "/sub",
		} {
			st, r := s.startScript(body)
			if st != 200 {
				t.Errorf("%s: %d %s", body, st, r.Detail)
				continue
			}
			end := s.waitStatus(r.RunID, 20*time.Second, ended)
			var logs struct{ Stdout string }
			s.do("GET", "/v1/runs/"+r.RunID+"/logs", "", &logs)
			if end.Status != "succeeded" || strings.TrimSpace(logs.Stdout) != want {
				t.Errorf("%s: %s %q, want %q", body, end.Status, logs.Stdout, want)
			}
		}
	})
	t.Run("EnvMigration", func(t *testing.T) {
		_, r := s.startScript(`{"script":"env.py","env":{"FROM_REQUEST":"r"}}`)
		s.waitStatus(r.RunID, 20*time.Second, ended)
		var logs struct{ Stdout string }
		s.do("GET", "/v1/runs/"+r.RunID+"/logs", "", &logs)
		var env map[string]string
		if err := json.Unmarshal([]byte(logs.Stdout), &env); err != nil {
			t.Fatalf("env.py printed %q", logs.Stdout)
		}
		for k, v := range map[string]string{"BINANCE_API_KEY": "bk", "BINANCE_X": "bx", "OKX_KEY": "ok", "BINANCE_SECRET": "from-env-file", "FROM_REQUEST": "r"} {
			if env[k] != v {
				t.Errorf("script env %s = %q, want %q (passthrough globs from .env, SCRIPT_ENV_FILE, request)", k, env[k], v)
			}
		}
		for _, k := range []string{"OTHER_SECRET", "PYRUNNER_REDIS_URL", "SCRIPT_ENV_FILE"} {
			if _, ok := env[k]; ok {
				t.Errorf("script sees %s", k)
			}
		}
	})
}

// TestScriptStartQueued: with no worker to take it, POST /v1/runs answers
// "queued" after SCRIPT_START_WAIT_SECONDS.
func TestScriptStartQueued(t *testing.T) {
	root := writeScripts(t)
	s := startStack(t, stackOpts{scripts: root, workers: -1, env: map[string]string{"SCRIPT_START_WAIT_SECONDS": "0.5"}})
	began := time.Now()
	st, r := s.startScript(`{"script":"hello.py"}`)
	if st != 200 || r.Status != "queued" || r.PID != nil || time.Since(began) < 500*time.Millisecond {
		t.Errorf("no worker: %d %+v after %s", st, r, time.Since(began))
	}
}

// TestAPIDetails: the API says it is ready only once it listens, serves
// /docs/ as /docs, explains a 404 of the admin exchange, and both
// binaries answer --help (exit 0) with their own flags.
func TestAPIDetails(t *testing.T) {
	s := startStack(t, stackOpts{workers: 1})
	for _, p := range []string{"/docs", "/docs/"} {
		resp, err := http.Get(s.base + p)
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("%s: %v %v", p, err, resp)
		} else {
			resp.Body.Close()
		}
	}
	var e struct{ Detail string }
	if st := s.do("POST", "/v1/auth/admin/token", `{"secret":"x"}`, &e); st != 404 || !strings.Contains(e.Detail, "SCRIPT_JWT_ADMIN_SECRET") {
		t.Errorf("admin exchange off: %d %q", st, e.Detail)
	}
	b, _ := os.ReadFile(s.api.log)
	if !strings.Contains(string(b), "api ready") || !strings.Contains(string(b), strings.TrimPrefix(s.base, "http://")) {
		t.Errorf("api log: %s", b)
	}
	for bin, own := range map[string]string{"pyrunner-api": "--jwt-secret", "pyrunner-worker": "--work-dir"} {
		out, err := exec.Command(filepath.Join(binDir, bin), "--help").CombinedOutput()
		if err != nil || !strings.Contains(string(out), own) || !strings.Contains(string(out), "(default") {
			t.Errorf("%s --help: %v\n%s", bin, err, out)
		}
	}
	// --ztrade-config PATH (the space form) is read: a worker whose only
	// DB settings are in that file joins the stack.
	yml := filepath.Join(t.TempDir(), "ztrade.yaml")
	dbPath := ""
	for _, kv := range s.env {
		if v, ok := strings.CutPrefix(kv, "PYRUNNER_READONLY_URI="); ok {
			dbPath = v
		}
	}
	if err := os.WriteFile(yml, []byte("db:\n  readonly:\n    type: sqlite\n    uri: "+dbPath+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var env []string
	for _, kv := range s.env {
		if !strings.HasPrefix(kv, "PYRUNNER_READONLY_") && !strings.HasPrefix(kv, "PYRUNNER_ZTRADE_CONFIG=") {
			env = append(env, kv)
		}
	}
	saved := s.env
	s.env = env
	s.start("worker-from-yaml", filepath.Join(binDir, "pyrunner-worker"), "--ztrade-config", yml)
	s.env = saved
	waitUntil(t, 30*time.Second, "the worker configured by --ztrade-config PATH to join", func() bool {
		var h struct{ Workers []any }
		return s.getJSON("/health", &h) == 200 && len(h.Workers) == 2
	})
	// A taken port: the API exits with an error and never says ready.
	cmd := exec.Command(filepath.Join(binDir, "pyrunner-api"))
	cmd.Env = append(slices.Clone(s.env), "PYRUNNER_LISTEN="+strings.TrimPrefix(s.base, "http://"))
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "address already in use") || strings.Contains(string(out), "api ready") {
		t.Errorf("api on a taken port: %v\n%s", err, out)
	}
}

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}
