// Package e2e drives the real binaries: a private redis-server, a SQLite
// file or a MariaDB database of K-lines, bin/pyrunner-api and two
// bin/pyrunner-worker processes, all spoken to over HTTP as a client would.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ztrade/pyrunner/pkg/demodata"
	"github.com/ztrade/pyrunner/pkg/frame"
	"github.com/ztrade/pyrunner/pkg/wire"
)

var binDir string

// TestMain builds the binaries once for every test in the package.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pyrunner-e2e-bin-")
	if err != nil {
		panic(err)
	}
	binDir = dir
	for bin, pkg := range map[string]string{"pyrunner-api": "./api", "pyrunner-worker": "./worker", "pyrunner-keeper": "./cmd/pyrunner-keeper", "pyrunner": "./cmd/pyrunner"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, bin), pkg)
		cmd.Dir = ".."
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: build failed:", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// Seed's example range: 2025-01-01T00:00:00Z to 2025-01-02T00:00:00Z.
const (
	seedStart = 1735689600
	seedEnd   = 1735776000
	dataFrom  = seedStart - 86400 // demo data: three days around the seed range
	dataDays  = 3
)

// seedBody is the seed's request example, exactly.
const seedBody = `{"exchange":"binance","symbol":"BTCUSDT","binSize":"1m","start":1735689600,"end":1735776000,"limit":10000,"timeoutSec":30,"code":"result = {\"rows\": len(df)}"}`

// proc is one started process with its log file.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed once the process has exited
}

func (p *proc) signal(sig syscall.Signal) { p.cmd.Process.Signal(sig) }

// group sends sig to the process's whole process group (a worker with
// its zygote and research children; not the keepers of its scripts,
// which have groups of their own).
func (p *proc) group(sig syscall.Signal) { syscall.Kill(-p.cmd.Process.Pid, sig) }

// stack is a running pyrunner: redis, API and workers.
type stack struct {
	t         *testing.T
	base      string
	redisPort int
	redisURL  string
	redis     *proc // the stack's redis-server (durable: docker/redis.conf)
	// recovered is set once the stack's first script start has waited
	// out the recovery window of its fresh Redis (waitRecovered).
	recovered bool
	// redisStarts counts the stack's redis-server starts (crashRedis).
	redisStarts int
	api         *proc
	workers     []*proc
	env         []string
	dir         string
	mode        string // executor mode
	authz       string // Authorization header do() sends, if any
	cwd         string // working directory of started processes
	// wantWorkers is how many workers /health should list.
	wantWorkers int
	// containers, for a stack in compose (compose_test.go), lists the
	// worker containers; nil for a stack of local processes.
	containers func() []container
}

// runDir is a run's directory: its path as runs name it, and the host
// name of its worker's container (compose; "" for local workers).
type runDir struct{ path, worker string }

// runDirs lists the directories of run id ("" for every run) on all
// workers.
func (s *stack) runDirs(id string) []runDir {
	pattern := "run-*"
	if id != "" {
		pattern = "run-" + id + "-*"
	}
	if s.containers == nil {
		m, _ := filepath.Glob(filepath.Join(s.dir, "work", pattern))
		var out []runDir
		for _, p := range m {
			out = append(out, runDir{path: p})
		}
		return out
	}
	var out []runDir
	for _, c := range s.containers() {
		root := fmt.Sprintf("/proc/%d/root", c.pid)
		m, _ := filepath.Glob(filepath.Join(root, c.workDir, pattern))
		for _, p := range m {
			out = append(out, runDir{path: strings.TrimPrefix(p, root), worker: c.hostname})
		}
	}
	return out
}

// workersAlive says which workers died (for compose: exited or restarted).
func (s *stack) workersAlive() error {
	if s.containers != nil {
		for _, c := range s.containers() {
			if !c.running || c.restarts > 0 {
				return fmt.Errorf("worker container %s: running %v, restarted %d times", c.name, c.running, c.restarts)
			}
		}
		return nil
	}
	for _, w := range s.workers {
		if w.cmd.ProcessState != nil {
			return fmt.Errorf("%s exited: %v", w.name, w.cmd.ProcessState)
		}
	}
	return nil
}

type stackOpts struct {
	workers int               // 0: two; -1: none
	dir     string            // working directory of the API and workers (default: this package's)
	scripts string            // scripts root (default: an empty folder)
	env     map[string]string // extra environment for API and workers
	dbEnv   map[string]string // read-only DB settings (default: a demo SQLite)
	// redisURL is a Redis the test runs itself (default: the stack starts
	// its own redis-server).
	redisURL string
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// demoSQLite writes the demo markets for the days around the seed range and
// returns the file and the frame written for binance_BTCUSDT_1m.
func demoSQLite(t *testing.T, dir string) (string, *frame.Frame) {
	t.Helper()
	path := filepath.Join(dir, "exchange.db")
	w, err := demodata.OpenWriter("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.WriteDemo(context.Background(), dataFrom, dataDays); err != nil {
		t.Fatal(err)
	}
	return path, demodata.Generate(demodata.DemoMarkets[0], dataFrom, dataDays*1440, 1)
}

func startStack(t *testing.T, o stackOpts) *stack {
	t.Helper()
	if o.workers == 0 {
		o.workers = 2
	} else if o.workers < 0 {
		o.workers = 0
	}
	dir := reachableTempDir(t)
	if o.scripts == "" {
		o.scripts = filepath.Join(dir, "scripts")
		if err := os.MkdirAll(o.scripts, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s := &stack{t: t, dir: dir, cwd: o.dir, wantWorkers: o.workers, redisURL: o.redisURL}
	if s.redisURL == "" {
		s.redisPort = freePort(t)
		s.redisURL = fmt.Sprintf("redis://127.0.0.1:%d/0", s.redisPort)
		s.startRedis()
	}
	port := freePort(t)
	s.base = fmt.Sprintf("http://127.0.0.1:%d", port)
	env := map[string]string{
		"PYRUNNER_REDIS_URL":     s.redisURL,
		"PYRUNNER_LISTEN":        fmt.Sprintf("127.0.0.1:%d", port),
		"PYRUNNER_WORK_DIR":      filepath.Join(dir, "work"),
		"PYRUNNER_ZTRADE_CONFIG": filepath.Join(dir, "no-ztrade.yaml"),
		"SCRIPT_STATE_DIR":       filepath.Join(dir, "state"),
		"SCRIPT_SCRIPTS_PATH":    o.scripts,
		"PYRUNNER_LOG_LEVEL":     "debug",
	}
	if o.dbEnv == nil {
		path, _ := demoSQLite(t, dir)
		o.dbEnv = map[string]string{"PYRUNNER_READONLY_TYPE": "sqlite", "PYRUNNER_READONLY_URI": path}
	}
	for k, v := range o.dbEnv {
		env[k] = v
	}
	for k, v := range o.env {
		env[k] = v
	}
	s.mode = env["PYRUNNER_EXECUTOR"]
	if s.mode == "" {
		s.mode = "warm"
	}
	s.env = os.Environ()
	for k, v := range env {
		s.env = append(s.env, k+"="+v)
	}
	s.api = s.start("api", filepath.Join(binDir, "pyrunner-api"))
	for i := 0; i < o.workers; i++ {
		s.workers = append(s.workers, s.start(fmt.Sprintf("worker-%d", i+1), filepath.Join(binDir, "pyrunner-worker")))
	}
	waitUntil(t, 30*time.Second, "the API and workers to be up", func() bool {
		var h struct {
			Workers []any `json:"workers"`
		}
		return s.getJSON("/health", &h) == 200 && len(h.Workers) == o.workers
	})
	return s
}

// startRedis starts the stack's redis-server as pyrunner runs it
// (docker/redis.conf: append-only file, no eviction), its files in the
// stack's folder, and waits until it answers.
func (s *stack) startRedis() {
	s.t.Helper()
	conf, err := filepath.Abs("../docker/redis.conf")
	if err != nil {
		s.t.Fatal(err)
	}
	dir := filepath.Join(s.dir, "redis")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		s.t.Fatal(err)
	}
	s.redisStarts++
	name := "redis"
	if s.redisStarts > 1 {
		name = fmt.Sprintf("redis-%d", s.redisStarts)
	}
	s.redis = s.start(name, "redis-server", conf, "--port", strconv.Itoa(s.redisPort), "--bind", "127.0.0.1", "--dir", dir)
	waitUntil(s.t, 10*time.Second, "redis to answer", func() bool {
		out, err := exec.Command("redis-cli", "-p", strconv.Itoa(s.redisPort), "ping").Output()
		return err == nil && strings.TrimSpace(string(out)) == "PONG"
	})
}

// crashRedis SIGKILLs the stack's redis-server (as a crash or the OOM
// killer would) and starts it again with the same settings: with its
// files, or, with lose set, after removing them (Redis came back empty).
func (s *stack) crashRedis(lose bool) {
	s.t.Helper()
	s.redis.signal(syscall.SIGKILL)
	<-s.redis.done
	if lose {
		os.RemoveAll(filepath.Join(s.dir, "redis"))
	}
	s.startRedis()
}

// start runs a process whose output goes to a log file; it is killed at
// cleanup, and its log is printed if the test failed.
func (s *stack) start(name, bin string, args ...string) *proc {
	s.t.Helper()
	logPath := filepath.Join(s.dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		s.t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env, cmd.Dir = s.env, s.cwd
	cmd.Stdout, cmd.Stderr = f, f
	// A group of its own (with the zygote and what else it starts), which
	// a test may freeze whole: proc.group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	p := &proc{name: name, cmd: cmd, log: logPath, done: done}
	go func() { cmd.Wait(); f.Close(); close(done) }()
	s.t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if s.t.Failed() {
			b, _ := os.ReadFile(logPath)
			if len(b) > 8000 {
				b = b[len(b)-8000:]
			}
			s.t.Logf("---- %s log (tail) ----\n%s", name, b)
		}
	})
	return p
}

// waitWorkers waits until /health lists n workers.
func (s *stack) waitWorkers(n int) {
	s.t.Helper()
	s.waitWorkersWithin(n, 60*time.Second)
}

// waitWorkersWithin is waitWorkers with its own deadline, for workers
// started at a low priority on a machine that may be busy.
func (s *stack) waitWorkersWithin(n int, d time.Duration) {
	s.t.Helper()
	waitUntil(s.t, d, fmt.Sprintf("%d workers in /health", n), func() bool {
		var h struct{ Workers []any }
		return s.getJSON("/health", &h) == 200 && len(h.Workers) == n
	})
}

// startWorkerVia starts a worker that reaches Redis through addr (a
// proxy a test can cut) instead of directly.
func (s *stack) startWorkerVia(name, addr string) *proc {
	s.t.Helper()
	env := s.env
	s.env = append(append([]string{}, env...), fmt.Sprintf("PYRUNNER_REDIS_URL=redis://%s/0", addr))
	defer func() { s.env = env }()
	return s.start(name, filepath.Join(binDir, "pyrunner-worker"))
}

func waitUntil(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var client = &http.Client{Timeout: 5 * time.Minute}

// do sends a request and decodes a JSON answer into out (if not nil).
func (s *stack) do(method, path, body string, out any) int {
	s.t.Helper()
	return s.doAuth(method, path, body, s.authz, out)
}

// doAuth is do with an Authorization header (none when empty).
func (s *stack) doAuth(method, path, body, authz string, out any) int {
	s.t.Helper()
	req, _ := http.NewRequest(method, s.base+path, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	resp, err := client.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	checkAgainstSpec(s.t, req, resp, b)
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			s.t.Fatalf("%s %s: status %d, body not JSON: %v\n%s", method, path, resp.StatusCode, err, b)
		}
	}
	return resp.StatusCode
}

func (s *stack) getJSON(path string, out any) int {
	req, _ := http.NewRequest("GET", s.base+path, nil)
	resp, err := client.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil && resp.StatusCode < 300 {
		return 0 // cut off mid-answer (a stack under faults): as if unanswered
	}
	return resp.StatusCode
}

// result is the research response body (pkg/wire's), with meta kept as
// the raw object: tests look at its keys as a client sees them.
type result struct {
	wire.ResearchResponse
	Meta map[string]any `json:"meta"`
	// Detail is the error body's.
	Detail string `json:"detail"`
}

func (r *result) ok() bool { return r.Succeeded() }

func (r *result) errText() string {
	if r.ResearchResult == nil || r.Error == nil {
		return ""
	}
	return *r.Error
}

// research posts a research request for the seed's market and range with
// the given code and extra fields, and returns the status and body.
func (s *stack) research(code string, extra map[string]any) (int, *result) {
	s.t.Helper()
	body := map[string]any{"exchange": "binance", "symbol": "BTCUSDT", "binSize": "1m",
		"start": seedStart, "end": seedEnd, "timeoutSec": 30, "code": code}
	for k, v := range extra {
		body[k] = v
	}
	b, _ := json.Marshal(body)
	var r result
	st := s.do("POST", "/v1/research/run", string(b), &r)
	return st, &r
}

// mustOK runs code and fails the test unless it succeeded; it decodes
// the result into out.
func (s *stack) mustOK(code string, out any) *result {
	s.t.Helper()
	st, r := s.research(code, nil)
	if st != 200 || !r.ok() {
		s.t.Fatalf("status %d ok=%v error=%q stderr=%s", st, r.ok(), r.errText(), r.Stderr)
	}
	if out != nil {
		if err := json.Unmarshal(r.Result, out); err != nil {
			s.t.Fatalf("result %s: %v", r.Result, err)
		}
	}
	return r
}

// runKeys counts run records in Redis.
func (s *stack) runKeys() int {
	out, _ := exec.Command("redis-cli", "-p", strconv.Itoa(s.redisPort), "--scan", "--pattern", "pyrunner:run:*").Output()
	return len(bytes.Fields(out))
}

// reachableTempDir is a t.TempDir whose parents the run user (nobody, when
// tests run as root) may traverse, as a real PYRUNNER_WORK_DIR must be.
func reachableTempDir(t *testing.T) string {
	dir := t.TempDir()
	for p := dir; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
