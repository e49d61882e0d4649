package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// compose drives one project with `docker compose` (Compose v2, the CLI
// plugin tools/compose-test.sh builds): the repository's real
// compose.yaml, plus tools/compose/override.yaml (the local stand-ins for
// base images no registry can give here), with an env file of the test's.
type compose struct {
	t       *testing.T
	project string
	docker  string
	envFile string
	env     map[string]string
	port    int
	// files are the compose files after compose.yaml and the override
	// (compose.redis-tls.yaml), or, when base is set, instead of them.
	files []string
	base  bool
}

// TestCompose is make test-compose (tools/compose-test.sh starts the
// engine and makes the stand-in base images): the images are built from
// docker/*.Dockerfile, the stack runs with four workers, and everything is
// asked over HTTP as a user would. Skipped in make test.
func TestCompose(t *testing.T) {
	if os.Getenv("PYRUNNER_COMPOSE_TEST") == "" {
		t.Skip("make test-compose runs this: it needs a Docker engine")
	}
	c := &compose{t: t, project: os.Getenv("PYRUNNER_COMPOSE_PROJECT"), docker: os.Getenv("PYRUNNER_DOCKER"), port: freePort(t)}
	if c.project == "" {
		c.project = "pyrunner-compose-test"
	}
	if c.docker == "" {
		c.docker = "docker"
	}
	c.envFile = filepath.Join(t.TempDir(), "compose.env")
	c.env = map[string]string{"PYRUNNER_PORT": strconv.Itoa(c.port), "SCRIPT_TERMINATE_TIMEOUT_SECONDS": "3"}
	c.writeEnv()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("---- compose logs (tail) ----\n%s", c.output("--profile", "ha", "logs", "--no-color", "--tail", "40"))
			// What ends runs, wherever it is in the logs.
			var ends []string
			for _, line := range strings.Split(c.output("--profile", "ha", "logs", "--no-color", "api", "worker"), "\n") {
				if endsRun.MatchString(line) {
					ends = append(ends, line)
				}
			}
			t.Logf("---- what ended runs (api, workers) ----\n%s", strings.Join(ends, "\n"))
		}
		c.output("--profile", "mysql", "--profile", "ha", "down", "-v", "--remove-orphans")
	})
	c.output("--profile", "mysql", "--profile", "ha", "down", "-v", "--remove-orphans") // what an aborted run left

	only := os.Getenv("PYRUNNER_COMPOSE_ONLY") // e.g. "Seed|RedisCrash" while working on one part
	run := func(name string, f func(t *testing.T)) {
		if only == "" || regexp.MustCompile("^("+only+")$").MatchString(name) {
			t.Run(name, f)
		}
	}
	run("Config", func(t *testing.T) { testComposeConfig(t, c) })
	t0 := time.Now()
	c.run("--profile", "mysql", "build")
	t.Logf("images built from docker/*.Dockerfile in %s", time.Since(t0).Round(time.Second))
	t0 = time.Now()
	c.run("up", "-d", "--wait", "--scale", "worker=4")
	healthy := 0
	for _, k := range c.containers("worker") {
		if k.running && k.health == "healthy" {
			healthy++
		}
	}
	if healthy != 4 {
		t.Errorf("up -d --wait --scale worker=4 returned with %d healthy workers, want 4", healthy)
	}
	s := c.stack(t, "sqlite")
	t.Logf("up -d --wait --scale worker=4: returned after %s with %d healthy workers", time.Since(t0).Round(time.Second), healthy)

	run("Seed", func(t *testing.T) { testComposeSeed(t, s) })
	run("Spread", func(t *testing.T) { testComposeSpread(t, s) })
	run("Isolation", func(t *testing.T) {
		runIsolation(t, s, check{"NoNetwork", func(t *testing.T) { testComposeNoNetwork(t, c, s) }})
	})
	run("Scripts", func(t *testing.T) { testComposeScripts(t, c, s) })
	run("WorkerKilled", func(t *testing.T) { testComposeWorkerKilled(t, c, s) })
	run("RedisRestart", func(t *testing.T) { testComposeRedisRestart(t, c, s) })
	run("RedisCrash", func(t *testing.T) { testComposeRedisCrash(t, c, s) })
	run("MySQL", func(t *testing.T) { testComposeMySQL(t, c) })
	run("Remote", func(t *testing.T) { testComposeRemote(t, c) })
	run("HA", func(t *testing.T) { testComposeHA(t, c) })
}

// args are `docker compose`'s arguments for this project.
// endsRun matches the log lines of what ends runs or puts them at risk.
var endsRun = regexp.MustCompile(`killing|killed|keeper|fence|terminated|heartbeat failed|was lost|restarting|could not`)

func (c *compose) args(more ...string) []string {
	files := []string{"compose.yaml", "tools/compose/override.yaml"}
	if c.base {
		files = nil
	}
	args := []string{"compose", "-p", c.project}
	for _, f := range append(files, c.files...) {
		args = append(args, "-f", f)
	}
	return append(append(args, "--env-file", c.envFile), more...)
}

// output runs docker compose and returns what it printed, whatever its exit.
func (c *compose) output(args ...string) string {
	cmd := exec.Command(c.docker, c.args(args...)...)
	cmd.Dir = ".."
	out, _ := cmd.CombinedOutput()
	return string(out)
}

// run runs docker compose and fails the test if it fails.
func (c *compose) run(args ...string) {
	c.t.Helper()
	cmd := exec.Command(c.docker, c.args(args...)...)
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		c.t.Fatalf("docker compose %s: %v\n%s", strings.Join(args, " "), err, tail(out, 6000))
	}
}

// testComposeConfig: `docker compose config -q` of the shipped files, as
// a user runs them (no override, no env file), says nothing: no warning,
// no error, with no profile and with each profile; Redis published over
// TLS; and the worker-only project of another machine.
func testComposeConfig(t *testing.T, c *compose) {
	for _, args := range [][]string{
		{"-f", "compose.yaml"}, {"-f", "compose.yaml", "--profile", "mysql"}, {"-f", "compose.yaml", "--profile", "ha"},
		{"-f", "compose.yaml", "-f", "compose.redis-tls.yaml"},
		{"-f", "compose.worker.yaml"}, {"-f", "compose.worker.yaml", "--profile", "demo"},
	} {
		cmd := exec.Command(c.docker, append(append([]string{"compose"}, args...), "config", "-q")...)
		cmd.Dir = ".."
		cmd.Env = append(os.Environ(), "COMPOSE_PROJECT_NAME=pyrunner-config-check")
		out, err := cmd.CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) != 0 {
			t.Errorf("docker compose %s config -q: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func (c *compose) writeEnv() {
	var b strings.Builder
	for k, v := range c.env {
		fmt.Fprintf(&b, "%s=%s\n", k, v)
	}
	if err := os.WriteFile(c.envFile, []byte(b.String()), 0o600); err != nil {
		c.t.Fatal(err)
	}
}

// docker runs the docker CLI and returns its trimmed output.
func (c *compose) dockerCmd(args ...string) (string, error) {
	out, err := exec.Command(c.docker, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// container is one container of the project, as docker inspect sees it.
type container struct {
	name, hostname, workDir string
	pid                     int
	running                 bool
	restarts                int
	health                  string
}

// containers lists the project's containers of service.
func (c *compose) containers(service string) []container {
	names, err := c.dockerCmd("ps", "-a", "-q", "--filter", "label=com.docker.compose.project="+c.project,
		"--filter", "label=com.docker.compose.service="+service)
	if err != nil || names == "" {
		return nil
	}
	out, err := c.dockerCmd(append([]string{"inspect", "-f",
		`{{.Name}} {{.Config.Hostname}} {{.State.Pid}} {{.State.Running}} {{.RestartCount}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}`},
		strings.Fields(names)...)...)
	if err != nil {
		c.t.Logf("docker inspect: %v %s", err, out)
		return nil
	}
	var cs []container
	for _, line := range strings.Split(out, "\n") {
		var k container
		if _, err := fmt.Sscanf(line, "%s %s %d %t %d %s", &k.name, &k.hostname, &k.pid, &k.running, &k.restarts, &k.health); err == nil {
			k.name, k.workDir = strings.TrimPrefix(k.name, "/"), "/tmp/pyrunner"
			cs = append(cs, k)
		}
	}
	return cs
}

// health is the part of /health these tests read.
type health struct {
	Workers []struct {
		ID      string `json:"id"`
		Sandbox string `json:"sandbox"`
		DBType  string `json:"db_type"`
	} `json:"workers"`
}

// stack waits until /health lists four workers on dbType and returns a
// stack that the e2e helpers (research, do, the isolation tests) drive.
func (c *compose) stack(t *testing.T, dbType string) *stack {
	t.Helper()
	s := &stack{t: t, base: fmt.Sprintf("http://127.0.0.1:%d", c.port), wantWorkers: 4, mode: "warm",
		containers: func() []container { return c.containers("worker") }}
	var h health
	waitUntil(t, 5*time.Minute, "/health to list 4 workers on "+dbType, func() bool {
		h = health{}
		if s.getJSON("/health", &h) != 200 || len(h.Workers) != 4 {
			return false
		}
		for _, w := range h.Workers {
			if w.DBType != dbType {
				return false
			}
		}
		return true
	})
	for _, w := range h.Workers {
		if w.Sandbox != "bwrap" {
			t.Errorf("worker %s runs with sandbox %q, want bwrap", w.ID, w.Sandbox)
		}
	}
	return s
}

func testComposeSeed(t *testing.T, s *stack) {
	var r result
	if st := s.do("POST", "/v1/research/run", seedBody, &r); st != 200 || !r.ok() || string(r.Result) != `{"rows":1441}` {
		t.Fatalf("the seed's example: %d %s %q", st, r.Result, r.errText())
	}
	var a result
	body := strings.Replace(seedBody, `"code"`, `"wait":false,"code"`, 1)
	if st := s.do("POST", "/v1/research/run", body, &a); st != 202 || a.Poll == "" {
		t.Fatalf("async submit: %d %+v", st, a)
	}
	var done result
	if st := s.do("GET", a.Poll+"?wait=60", "", &done); st != 200 || done.Status != "succeeded" || string(done.Result) != `{"rows":1441}` {
		t.Errorf("poll: %d %s %s", st, done.Status, done.Result)
	}
}

// post is a research request from any goroutine (the stack helpers fail
// the test, which only its own goroutine may do).
func post(base, body string) (int, *result, error) {
	resp, err := client.Post(base+"/v1/research/run", "application/json", strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var r result
	err = json.NewDecoder(resp.Body).Decode(&r)
	return resp.StatusCode, &r, err
}

func testComposeSpread(t *testing.T, s *stack) {
	workers := spread(t, s)
	t.Logf("40 concurrent runs per worker: %v", workers)
	if len(workers) < 3 {
		t.Errorf("40 concurrent runs went to %d workers, want at least 3: %v", len(workers), workers)
	}
}

// spread sends 40 concurrent research runs of half a second each and
// counts them by the worker that ran them.
func spread(t *testing.T, s *stack) map[string]int {
	body := strings.Replace(seedBody, `result = {\"rows\": len(df)}`, `import time\ntime.sleep(0.5)\nresult = len(df)`, 1)
	var mu sync.Mutex
	workers := map[string]int{}
	var wg sync.WaitGroup
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, r, err := post(s.base, body)
			mu.Lock()
			defer mu.Unlock()
			if err != nil || st != 200 || !r.ok() || string(r.Result) != "1441" {
				t.Errorf("one of 40 concurrent runs: %d %v", st, err)
				return
			}
			w, _ := r.Meta["worker"].(string)
			workers[w]++
		}()
	}
	wg.Wait()
	return workers
}

// testComposeNoNetwork: user code reaches neither redis (by name or by
// address) nor the secrets the worker reads its password from.
func testComposeNoNetwork(t *testing.T, c *compose, s *stack) {
	redis := c.containers("redis")
	if len(redis) != 1 {
		t.Fatalf("redis containers: %v", redis)
	}
	ip, err := c.dockerCmd("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", redis[0].name)
	if err != nil || ip == "" {
		t.Fatalf("redis address: %v %q", err, ip)
	}
	ip = strings.Fields(ip)[0]
	var got map[string]string
	s.mustOK(`import socket
def connect(host):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, 6379))
        return "connected"
    except Exception as e:
        return type(e).__name__ + ": " + str(e)
def read(p):
    try:
        return "read: " + open(p).read()[:3]
    except Exception as e:
        return type(e).__name__
result = {"by_name": connect("redis"), "by_address": connect(`+strconv.Quote(ip)+`),
          "secret": read("/run/pyrunner-secrets/redis.url")}`, &got)
	for k, v := range got {
		if strings.HasPrefix(v, "connected") || strings.HasPrefix(v, "read") {
			t.Errorf("user code: %s → %s", k, v)
		}
	}
	t.Logf("from user code: %v", got)
	// The worker container itself reaches that address: it is the
	// sandbox, not the network, that keeps user code out.
	if out, err := c.dockerCmd("exec", c.containers("worker")[0].name, "bash", "-c", "exec 3<>/dev/tcp/"+ip+"/6379 && echo open"); err != nil || out != "open" {
		t.Errorf("the worker container cannot reach redis at %s:6379 either: %v %q", ip, err, out)
	}
}

// startTicker starts examples/scripts/ticker.py and waits for its first
// lines in the logs.
func startTicker(t *testing.T, s *stack) runRec {
	t.Helper()
	st, r := s.startScript(`{"script":"ticker.py","duplicate":true}`)
	if st != 200 && st != 201 || r.RunID == "" {
		t.Fatalf("start ticker.py: %d %+v", st, r)
	}
	s.waitStatus(r.RunID, 60*time.Second, func(r runRec) bool { return r.Status == "running" })
	waitUntil(t, 30*time.Second, "ticker.py's first lines", func() bool {
		var logs struct {
			Stdout string `json:"stdout"`
		}
		s.do("GET", "/v1/runs/"+r.RunID+"/logs", "", &logs)
		return strings.Contains(logs.Stdout, "tick 1")
	})
	return r
}

func testComposeScripts(t *testing.T, c *compose, s *stack) {
	r := startTicker(t, s)
	// Follow: lines arrive live over SSE.
	resp, err := http.Get(s.base + "/v1/runs/" + r.RunID + "/logs?follow=true")
	if err != nil || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("follow: %v", err)
	}
	sc := bufio.NewScanner(resp.Body)
	ticks := 0
	for sc.Scan() && ticks < 3 {
		if strings.HasPrefix(sc.Text(), "data: tick ") {
			ticks++
		}
	}
	resp.Body.Close()
	if ticks < 3 {
		t.Errorf("follow gave %d tick lines", ticks)
	}
	var end runRec
	if st := s.do("POST", "/v1/runs/"+r.RunID+"/stop", "", &end); st != 200 || end.Status != "stopped" {
		t.Errorf("stop: %d %+v", st, end)
	}

	// docker compose stop worker: running scripts end terminated, with why.
	a, b := startTicker(t, s), startTicker(t, s)
	t0 := time.Now()
	c.run("stop", "worker")
	t.Logf("docker compose stop worker took %s", time.Since(t0).Round(100*time.Millisecond))
	for _, id := range []string{a.RunID, b.RunID} {
		got := s.waitStatus(id, 30*time.Second, ended)
		if got.Status != "terminated" || got.Error == nil || *got.Error == "" {
			t.Errorf("script %s after compose stop worker: %s error %v", id, got.Status, got.Error)
		} else {
			t.Logf("script %s: terminated: %s", id, *got.Error)
		}
	}
	c.run("up", "-d", "--scale", "worker=4")
	c.stack(t, "sqlite")
}

// testComposeWorkerKilled: a worker that dies mid-run takes its run with
// it (terminated within 30 s) and nothing else. `docker kill` disables the
// restart policy by design ("until the next time the container is
// started", docker-kill(1)), so the restart policy is shown with the
// other way a worker dies: its container's process killed (a crash, the
// OOM killer), after which Docker restarts it.
func testComposeWorkerKilled(t *testing.T, c *compose, s *stack) {
	for _, how := range []string{"docker kill", "SIGKILL from the host"} {
		before := map[string]int{}
		for _, k := range c.containers("worker") {
			before[k.name] = k.restarts
		}
		id := s.submit("import time\nprint('up', flush=True)\ntime.sleep(300)", 600)
		s.waitRunning(id)
		var victim container
		waitUntil(t, 10*time.Second, "the run's worker", func() bool {
			m := s.runDirs(id)
			if len(m) == 1 {
				for _, k := range c.containers("worker") {
					if k.hostname == m[0].worker {
						victim = k
					}
				}
			}
			return victim.name != ""
		})
		t0 := time.Now()
		if how == "docker kill" {
			if out, err := c.dockerCmd("kill", victim.name); err != nil {
				t.Fatalf("docker kill: %v %s", err, out)
			}
		} else if out, err := exec.Command("kill", "-9", strconv.Itoa(victim.pid)).CombinedOutput(); err != nil {
			t.Fatalf("kill -9 %d: %v %s", victim.pid, err, out)
		}
		r := s.finished(id)
		took := time.Since(t0)
		if r.Status != "terminated" || took > 30*time.Second {
			t.Errorf("%s: the run ended %s after %s (want terminated within 30 s): %q", how, r.Status, took.Round(100*time.Millisecond), r.errText())
		}
		t.Logf("%s: run %s after %s: %q", how, r.Status, took.Round(100*time.Millisecond), r.errText())
		if how == "docker kill" {
			c.run("up", "-d", "--scale", "worker=4") // docker kill stopped it for good
		} else {
			waitUntil(t, 60*time.Second, "Docker to restart the killed worker", func() bool {
				for _, k := range c.containers("worker") {
					if k.name == victim.name {
						return k.running && k.restarts == before[k.name]+1
					}
				}
				return false
			})
			t.Logf("the restart policy brought %s back after %s", victim.name, time.Since(t0).Round(100*time.Millisecond))
		}
		c.stack(t, "sqlite")
		s.mustOK("result = len(df)", nil)
	}
}

// testComposeRedisRestart: after docker compose restart redis the next
// runs work, and no container has restarted or is unhealthy.
func testComposeRedisRestart(t *testing.T, c *compose, s *stack) {
	before := map[string]int{}
	for _, svc := range []string{"api", "worker"} {
		for _, k := range c.containers(svc) {
			before[k.name] = k.restarts
		}
	}
	c.run("restart", "redis")
	c.stack(t, "sqlite") // workers re-register once redis is back
	var r *result
	waitUntil(t, 60*time.Second, "a research run to work after the redis restart", func() bool {
		st, rr, err := post(s.base, seedBody)
		r = rr
		return err == nil && st == 200 && r.ok()
	})
	if string(r.Result) != `{"rows":1441}` {
		t.Errorf("after the redis restart: %s", r.Result)
	}
	st, sr := s.startScript(`{"script":"hello.py","args":["after","restart"]}`)
	if st != 200 && st != 201 {
		t.Errorf("a script after the redis restart: %d %+v", st, sr)
	} else if got := s.waitStatus(sr.RunID, 30*time.Second, ended); got.Status != "succeeded" {
		t.Errorf("hello.py after the redis restart: %+v", got)
	}
	for _, svc := range []string{"api", "worker", "redis"} {
		for _, k := range c.containers(svc) {
			if !k.running || k.restarts != before[k.name] || k.health == "unhealthy" {
				t.Errorf("%s: running %v, restarts %d (before %d), health %s", k.name, k.running, k.restarts, before[k.name], k.health)
			}
		}
	}
}

// testComposeMySQL: --profile mysql, the workers pointed at it by .env:
// the seed's example answers from MariaDB, and the worker's user cannot
// write.
func testComposeMySQL(t *testing.T, c *compose) {
	c.env["MYSQL_ROOT_PASSWORD"] = "root-" + strconv.Itoa(c.port)
	c.env["MYSQL_READONLY_PASSWORD"] = "ro-" + strconv.Itoa(c.port)
	c.env["PYRUNNER_READONLY_URI"] = "exchange_readonly:" + c.env["MYSQL_READONLY_PASSWORD"] + "@tcp(mysql:3306)/exchange?charset=utf8mb4&parseTime=True&loc=Local"
	c.writeEnv()
	t0 := time.Now()
	c.run("--profile", "mysql", "up", "-d", "--scale", "worker=4")
	s := c.stack(t, "mysql")
	t.Logf("--profile mysql: 4 workers on MySQL after %s", time.Since(t0).Round(time.Second))
	var r result
	if st := s.do("POST", "/v1/research/run", seedBody, &r); st != 200 || !r.ok() || string(r.Result) != `{"rows":1441}` || r.Meta["dbType"] != "mysql" {
		t.Fatalf("the seed's example on MySQL: %d %s %q %v", st, r.Result, r.errText(), r.Meta["dbType"])
	}
	// The worker's credentials, from inside the compose network.
	mysql := c.containers("mysql")
	if len(mysql) != 1 {
		t.Fatalf("mysql containers: %v", mysql)
	}
	for _, q := range []string{"DELETE FROM binance_BTCUSDT_1m LIMIT 1", "CREATE TABLE planted (x INT)", "UPDATE binance_BTCUSDT_1m SET close = 0 LIMIT 1"} {
		out, err := c.dockerCmd("exec", mysql[0].name, "mariadb", "-h", "mysql", "-uexchange_readonly", "-p"+c.env["MYSQL_READONLY_PASSWORD"], "exchange", "-e", q)
		if err == nil || !strings.Contains(out, "denied") {
			t.Errorf("%s as the worker's user: err %v, %s", q, err, out)
		}
	}
	out, err := c.dockerCmd("exec", mysql[0].name, "mariadb", "-h", "mysql", "-uexchange_readonly", "-p"+c.env["MYSQL_READONLY_PASSWORD"], "exchange", "-N", "-e", "SHOW GRANTS")
	if err != nil || !strings.Contains(out, "GRANT SELECT ON `exchange`.*") || strings.Contains(out, "ALL PRIVILEGES") {
		t.Errorf("the read-only user's grants: %v %s", err, out)
	}
	t.Logf("exchange_readonly: %s", bytes.TrimSpace([]byte(out)))
}

// testComposeRedisCrash: redis-server SIGKILLed (a crash, the OOM killer)
// and started again by its restart policy: run history and results are still there,
// running scripts still run under their run ids and pids (a second start
// is 409), and no worker container restarted or turned unhealthy.
func testComposeRedisCrash(t *testing.T, c *compose, s *stack) {
	s.do("POST", "/v1/runs/stop_all", "", nil)
	before := map[string]int{}
	for _, k := range c.containers("worker") {
		before[k.name] = k.restarts
	}
	done := s.mustOK("result = len(df)", nil)
	st, bot := s.startScript(`{"script":"ticker.py"}`)
	if st != 200 || bot.PID == nil {
		t.Fatalf("start ticker.py: %d %+v", st, bot)
	}
	bot = s.waitStatus(bot.RunID, 60*time.Second, func(r runRec) bool { return r.Status == "running" && r.PID != nil })
	// appendfsync everysec: what is more than a second old is on disk.
	time.Sleep(1500 * time.Millisecond)
	// Redis crashes (its process SIGKILLed, as the OOM killer would) and
	// its restart policy brings it back.
	rc := c.containers("redis")
	if len(rc) != 1 {
		t.Fatalf("redis containers: %+v", rc)
	}
	t0 := time.Now()
	if out, err := exec.Command("kill", "-9", strconv.Itoa(rc[0].pid)).CombinedOutput(); err != nil {
		t.Fatalf("kill -9 redis-server: %v %s", err, out)
	}
	waitUntil(t, 60*time.Second, "the restart policy to bring redis back", func() bool {
		k := c.containers("redis")
		return len(k) == 1 && k[0].running && k[0].restarts == rc[0].restarts+1
	})
	t.Logf("redis-server SIGKILLed; restarted by its restart policy after %s", time.Since(t0).Round(100*time.Millisecond))
	var r result
	waitUntil(t, 60*time.Second, "the finished run to be readable again", func() bool {
		code, rr, err := getResult(s.base, done.ID)
		r = rr
		return err == nil && code == 200
	})
	if r.Status != "succeeded" || string(r.Result) != "1441" {
		t.Errorf("the finished run after the crash: %s %s", r.Status, r.Result)
	}
	var cur runRec
	if st := s.do("GET", "/v1/runs/"+bot.RunID, "", &cur); st != 200 || cur.Status != "running" || cur.PID == nil || *cur.PID != *bot.PID {
		t.Errorf("ticker.py after the crash: %d %+v (pid was %d)", st, cur, *bot.PID)
	}
	var list struct{ Runs []runRec }
	s.do("GET", "/v1/runs?limit=500", "", &list)
	if len(list.Runs) < 2 {
		t.Errorf("run history after the crash: %d runs", len(list.Runs))
	}
	if st, r := s.startScript(`{"script":"ticker.py"}`); st != 409 {
		t.Errorf("a second start of ticker.py after the crash: %d %+v", st, r)
	}
	var stopped runRec
	if st := s.do("POST", "/v1/runs/"+bot.RunID+"/stop", "", &stopped); st != 200 || stopped.Status != "stopped" {
		why := ""
		if stopped.Error != nil {
			why = *stopped.Error
		}
		t.Errorf("stop ticker.py after the crash: %d %s (%s)", st, stopped.Status, why)
		for _, line := range strings.Split(c.output("logs", "--no-color", "worker", "api"), "\n") {
			if strings.Contains(line, bot.RunID) || strings.Contains(line, "redis restarted") || strings.Contains(line, "heartbeat failed") {
				t.Log(line)
			}
		}
	}
	waitUntil(t, 60*time.Second, "every worker container healthy", func() bool {
		for _, k := range c.containers("worker") {
			if k.health != "healthy" {
				return false
			}
		}
		return true
	})
	for _, k := range c.containers("worker") {
		if !k.running || k.restarts != before[k.name] {
			t.Errorf("%s: running %v, restarts %d (before %d)", k.name, k.running, k.restarts, before[k.name])
		}
	}
}

// getResult reads a research run from any goroutine.
func getResult(base, id string) (int, result, error) {
	var r result
	resp, err := client.Get(base + "/v1/research/runs/" + id)
	if err != nil {
		return 0, r, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&r)
	return resp.StatusCode, r, err
}
