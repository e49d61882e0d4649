package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("scrape %s: %d %s", url, resp.StatusCode, b)
	}
	return string(b)
}

// TestMetrics: after research and script runs, the API's and a worker's
// /metrics show the counters and histograms with the right labels and
// values.
func TestMetrics(t *testing.T) {
	root := writeScripts(t)
	mport := freePort(t)
	s := startStack(t, stackOpts{workers: 1, scripts: root, env: map[string]string{"PYRUNNER_METRICS_LISTEN": fmt.Sprintf("127.0.0.1:%d", mport)}})
	s.mustOK("result = len(df)", nil)
	s.research("1/0", nil)
	_, r := s.startScript(`{"script":"hello.py"}`)
	s.waitStatus(r.RunID, 20*time.Second, ended)
	api := scrape(t, s.base+"/metrics")
	worker := scrape(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", mport))
	for _, line := range []string{
		`pyrunner_runs_submitted_total{kind="research"} 2`,
		`pyrunner_runs_submitted_total{kind="script"} 1`,
		`pyrunner_queue_depth{queue="research"} 0`,
		`pyrunner_queue_max{queue="scripts"} 10000`,
		`asynq_tasks_enqueued_total{queue="research",state="pending"} 0`,
	} {
		if !strings.Contains(api, line+"\n") {
			t.Errorf("the API's metrics lack %q", line)
		}
	}
	for _, line := range []string{
		`pyrunner_runs_started_total{kind="research"} 2`,
		`pyrunner_runs_started_total{kind="script"} 1`,
		`pyrunner_runs_finished_total{kind="research",status="succeeded"} 1`,
		`pyrunner_runs_finished_total{kind="research",status="failed"} 1`,
		`pyrunner_runs_finished_total{kind="script",status="succeeded"} 1`,
		`pyrunner_queue_wait_seconds_count{kind="research"} 2`,
		`pyrunner_kline_load_seconds_count 2`,
		`pyrunner_exec_seconds_count{kind="research"} 2`,
		`pyrunner_exec_seconds_count{kind="script"} 1`,
		`pyrunner_worker_busy_slots{queue="scripts"} 0`,
		`pyrunner_worker_slots{queue="scripts"} 16`,
		`pyrunner_zygote_restarts_total 0`,
		`pyrunner_sandbox_info{executor="warm",sandbox="bwrap"} 1`,
	} {
		if !strings.Contains(worker, line+"\n") {
			t.Errorf("the worker's metrics lack %q", line)
		}
	}
	// /healthz beside the metrics (the worker container's healthcheck):
	// 200 while heartbeats reach Redis, 503 once they stop.
	healthz := func() (int, string) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", mport))
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if st, body := healthz(); st != 200 || body != "ok\n" {
		t.Errorf("worker /healthz: %d %q", st, body)
	}
	if err := exec.Command("redis-cli", "-p", strconv.Itoa(s.redisPort), "client", "pause", "9000").Run(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := exec.Command("redis-cli", "-p", strconv.Itoa(s.redisPort), "client", "unpause").Run(); err != nil {
			t.Error(err)
		}
	}()
	waitUntil(t, 15*time.Second, "/healthz to say the heartbeats stopped", func() bool {
		st, body := healthz()
		return st == 503 && strings.Contains(body, "no heartbeat has reached redis")
	})
}

// TestMonitor: asynqmon is served at /monitor/, its API lists pyrunner's
// queues, and with auth on it needs a token with scope *.
func TestMonitor(t *testing.T) {
	secret := "monitor-secret"
	s := startStack(t, stackOpts{workers: 1, env: map[string]string{"SCRIPT_JWT_AUTH": "true", "SCRIPT_JWT_SECRET": secret}})
	mint := func(scopes string) string {
		tok, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "op", "scopes": scopes, "exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte(secret))
		return "Bearer " + tok
	}
	s.authz = mint("*")
	s.mustOK("result = 1", nil)
	get := func(path, authz string) (int, string) {
		req, _ := http.NewRequest("GET", s.base+path, nil)
		if authz != "" {
			req.Header.Set("Authorization", authz)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if st, _ := get("/monitor/api/queues", ""); st != 401 {
		t.Errorf("no token: %d", st)
	}
	if st, _ := get("/monitor/api/queues", mint("scripts:read research:run")); st != 403 {
		t.Errorf("a token without *: %d", st)
	}
	st, body := get("/monitor/api/queues", mint("*"))
	if st != 200 || !strings.Contains(body, `"queue":"research"`) {
		t.Errorf("asynqmon's queues: %d %.300s", st, body)
	}
	if st, body := get("/monitor/", mint("*")); st != 200 || !strings.Contains(body, "<html") {
		t.Errorf("asynqmon's page: %d %.200s", st, body)
	}
}

// cli runs bin/pyrunner against the stack and returns its stdout, stderr
// and exit code.
func (s *stack) cli(t *testing.T, stdin string, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "pyrunner"), args...)
	cmd.Env = append(append(os.Environ(), "PYRUNNER_URL="+s.base), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("pyrunner %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// TestCLI drives bin/pyrunner as a user would.
func TestCLI(t *testing.T) {
	root := writeScripts(t)
	if err := os.WriteFile(filepath.Join(root, "three.py"), []byte("import time\nfor i in range(3):\n    print('line', i, flush=True)\n    time.sleep(0.5)\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	secret := "cli-secret"
	s := startStack(t, stackOpts{scripts: root, env: map[string]string{"SCRIPT_JWT_AUTH": "true", "SCRIPT_JWT_SECRET": secret}})
	tok, _, code := s.cli(t, "", []string{"SCRIPT_JWT_SECRET=" + secret}, "token", "--sub", "cli", "--scopes", "*")
	if code != 0 || strings.Count(strings.TrimSpace(tok), ".") != 2 {
		t.Fatalf("pyrunner token: %d %q", code, tok)
	}
	auth := []string{"PYRUNNER_TOKEN=" + strings.TrimSpace(tok)}
	market := []string{"--exchange", "binance", "--symbol", "BTCUSDT", "--start", "2025-01-01 00:00:00", "--end", "2025-01-02 00:00:00"}

	t.Run("Research", func(t *testing.T) {
		out, _, code := s.cli(t, "print('hi')\nresult = {'rows': len(df)}", auth, append([]string{"research"}, append(market, "-")...)...)
		if code != 0 || !strings.HasPrefix(out, "hi\n") || !strings.Contains(out, `"rows": 1441`) {
			t.Errorf("research: %d %q", code, out)
		}
		out, _, code = s.cli(t, "result = 1", auth, append([]string{"research", "--json"}, append(market, "-")...)...)
		var full map[string]any
		if code != 0 || json.Unmarshal([]byte(out), &full) != nil || full["meta"] == nil || full["status"] != "succeeded" {
			t.Errorf("--json: %d %q", code, out)
		}
		dir := t.TempDir()
		_, _, code = s.cli(t, "import matplotlib.pyplot as plt\nplt.plot(df.close)\nresult = 1", auth,
			append([]string{"research", "--images", dir}, append(market, "-")...)...)
		pngs, _ := filepath.Glob(filepath.Join(dir, "*.png"))
		if code != 0 || len(pngs) != 1 {
			t.Fatalf("--images: %d %v", code, pngs)
		}
		b, _ := os.ReadFile(pngs[0])
		if !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) {
			t.Errorf("%s is not a PNG", pngs[0])
		}
		_, errOut, code := s.cli(t, "1/0", auth, append([]string{"research"}, append(market, "-")...)...)
		if code != 1 || !strings.Contains(errOut, "ZeroDivisionError") {
			t.Errorf("a failing snippet: exit %d, stderr %q", code, errOut)
		}
	})
	t.Run("RunFollow", func(t *testing.T) {
		out, _, code := s.cli(t, "", auth, "run", "hello.py", "--follow", "--", "--foo", "bar")
		if code != 0 || out != "hello ['--foo', 'bar']\n" {
			t.Errorf("run --follow: %d %q", code, out)
		}
		if _, _, code := s.cli(t, "", auth, "run", "fail.py", "--follow"); code != 3 {
			t.Errorf("run --follow of a script exiting 3: exit %d", code)
		}
	})
	t.Run("LogsFollowStopLs", func(t *testing.T) {
		out, _, code := s.cli(t, "", auth, "run", "three.py")
		id := strings.Fields(out)[0]
		if code != 0 || id == "" {
			t.Fatalf("run: %d %q", code, out)
		}
		out, _, code = s.cli(t, "", auth, "logs", "-f", id)
		if code != 0 || out != "line 0\nline 1\nline 2\n" {
			t.Errorf("logs -f: %d %q", code, out)
		}
		out, _, _ = s.cli(t, "", auth, "run", "ticker.py")
		id = strings.Fields(out)[0]
		out, _, code = s.cli(t, "", auth, "ls", "--status", "running")
		if code != 0 || !strings.Contains(out, id) || !strings.Contains(out, "ticker.py") {
			t.Errorf("ls: %d %q", code, out)
		}
		out, _, code = s.cli(t, "", auth, "stop", id)
		if code != 0 || strings.TrimSpace(out) != id+" stopped" {
			t.Errorf("stop: %d %q", code, out)
		}
		out, _, _ = s.cli(t, "", auth, "scripts")
		if !strings.Contains(out, "hello.py") {
			t.Errorf("scripts: %q", out)
		}
	})
	t.Run("RestartAndSchedules", func(t *testing.T) {
		out, _, code := s.cli(t, "", auth, "run", "fail.py", "--restart", "on-failure", "--max-restarts", "1", "--backoff", "0.2", "--follow")
		if code != 3 || strings.Count(out, "failing") != 2 || !strings.Contains(out, "[pyrunner] attempt 2 starts on worker ") {
			t.Errorf("run --restart on-failure --follow: exit %d %q", code, out)
		}
		out, _, code = s.cli(t, "", auth, "ls", "--script", "fail.py", "--limit", "1")
		if code != 0 || !strings.Contains(out, "ATTEMPT") || !strings.Contains(out, " failed ") {
			t.Errorf("ls of the restarted run: %d %q", code, out)
		}
		out, _, code = s.cli(t, "", auth, "schedules", "add", "--name", "hello", "--cron", "@every 1h", "--script", "hello.py", "--paused")
		id := strings.Fields(out + " ")[0]
		if code != 0 || len(id) != 36 {
			t.Fatalf("schedules add: %d %q", code, out)
		}
		if out, _, code = s.cli(t, "", auth, "schedules"); code != 0 || !strings.Contains(out, id) || !strings.Contains(out, "@every 1h") {
			t.Errorf("schedules: %d %q", code, out)
		}
		out, _, code = s.cli(t, "", auth, "schedules", "trigger", id)
		if f := strings.Fields(out + " "); code != 0 || len(f) < 2 || f[0] != "fired" {
			t.Errorf("schedules trigger: %d %q", code, out)
		} else {
			var r runRec
			waitUntil(t, 20*time.Second, "the triggered run to end", func() bool {
				s.doAuth("GET", "/v1/runs/"+f[1], "", bearer(strings.TrimSpace(tok)), &r)
				return ended(r)
			})
			if r.Status != "succeeded" || deref(r.ScheduleID) != id {
				t.Errorf("the triggered run: %+v", r)
			}
		}
		if out, _, code = s.cli(t, "", auth, "schedules", "resume", id); code != 0 || !strings.Contains(out, "paused=false next 20") {
			t.Errorf("schedules resume: %d %q", code, out)
		}
		if out, _, code = s.cli(t, "", auth, "schedules", "pause", id); code != 0 || !strings.Contains(out, "paused=true next -") {
			t.Errorf("schedules pause: %d %q", code, out)
		}
		if _, errOut, code := s.cli(t, "", auth, "schedules", "add", "--name", "bad", "--cron", "61 * * * *", "--script", "hello.py"); code == 0 || !strings.Contains(errOut, `cron "61 * * * *"`) {
			t.Errorf("a bad cron: %d %q", code, errOut)
		}
		if out, _, code = s.cli(t, "", auth, "schedules", "rm", id); code != 0 || strings.TrimSpace(out) != id+" deleted" {
			t.Errorf("schedules rm: %d %q", code, out)
		}
	})
	t.Run("AuthAndHelp", func(t *testing.T) {
		_, errOut, code := s.cli(t, "", nil, "ls")
		if code == 0 || !strings.Contains(errOut, "401") {
			t.Errorf("without a token: %d %q", code, errOut)
		}
		for _, c := range []string{"research", "run", "logs", "stop", "ls", "scripts", "schedules", "token"} {
			out, _, code := s.cli(t, "", nil, c, "--help")
			if code != 0 || !strings.Contains(out, "Examples:") {
				t.Errorf("%s --help: %d %q", c, code, out)
			}
		}
	})
}

// TestJSONLogs: with PYRUNNER_LOG_FORMAT=json every line the API and a
// worker write is one JSON object, and lines about a run carry its run_id.
func TestJSONLogs(t *testing.T) {
	root := writeScripts(t)
	s := startStack(t, stackOpts{workers: 1, scripts: root, env: map[string]string{"PYRUNNER_LOG_FORMAT": "json"}})
	r := s.mustOK("result = 1", nil)
	_, sr := s.startScript(`{"script":"hello.py"}`)
	s.waitStatus(sr.RunID, 20*time.Second, ended)
	s.research("import base64\nimages = [{'data': base64.b64encode(b'x').decode(), 'mimeType': 'text/plain'}]", nil)
	ids := map[string]bool{}
	for _, p := range []*proc{s.api, s.workers[0]} {
		f, err := os.Open(p.log)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		n := 0
		for sc.Scan() {
			n++
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				t.Errorf("%s line %d is not JSON: %q", p.name, n, sc.Text())
				continue
			}
			if id, ok := m["run_id"].(string); ok {
				ids[id] = true
			}
		}
		f.Close()
		if n == 0 {
			t.Errorf("%s wrote nothing", p.name)
		}
	}
	if !ids[r.ID] || !ids[sr.RunID] {
		t.Errorf("the finished runs are not named by run_id in the logs: %v", ids)
	}
}
