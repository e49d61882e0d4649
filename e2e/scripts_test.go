package e2e

import (
	"bufio"
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
	"syscall"
	"testing"
	"time"

	"github.com/ztrade/pyrunner/pkg/liveness"
	"github.com/ztrade/pyrunner/pkg/wire"
)

// scriptFiles are the scripts the tests write into a scripts root.
var scriptFiles = map[string]string{
	"hello.py":  "import sys\nprint('hello', sys.argv[1:])\nprint('to stderr', file=sys.stderr)\n",
	"fail.py":   "import sys\nprint('failing')\nsys.exit(3)\n",
	"killed.py": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
	"ticker.py": "import time\nfor i in range(600):\n    print(f'tick {i} ✓', flush=True)\n    time.sleep(1)\n",
	"polite.py": "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: (print('bye', flush=True), sys.exit(0)))\nprint('ready', flush=True)\ntime.sleep(600)\n",
	"stubborn.py": "import signal, subprocess, time, sys\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" +
		"child = subprocess.Popen([sys.executable, '-c', 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n" +
		"open('child.pid', 'w').write(str(child.pid))\nprint('ready', flush=True)\ntime.sleep(600)\n",
	"env.py":      "import os, json\nprint(json.dumps(dict(os.environ)))\n",
	"sub/deep.py": "import os\nprint(os.getcwd())\n",
	"_private.py": "print('no')\n",
	"notes.txt":   "not a script\n",
}

func writeScripts(t *testing.T) string {
	root := filepath.Join(reachableTempDir(t), "scripts")
	for p, body := range scriptFiles {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "evil.py"), []byte("print('evil')\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "evil.py"), filepath.Join(root, "link.py")); err != nil {
		t.Fatal(err)
	}
	return root
}

// runRec is a run record (pkg/wire's), or an error's detail.
type runRec struct {
	wire.Run
	Detail string `json:"detail"`
}

func (s *stack) startScript(body string) (int, runRec) {
	s.waitRecovered()
	var r runRec
	st := s.do("POST", "/v1/runs", body, &r)
	return st, r
}

// waitRecovered waits, once per stack, until its fresh Redis has been up
// for liveness.RecoveryWindow: before that, scripts wait to start (a
// worker might hold runs a restart lost), which tests of other things
// should not have to allow for. Tests of restarts see it as users do.
func (s *stack) waitRecovered() {
	if s.redisPort == 0 || s.recovered {
		return
	}
	s.recovered = true
	waitUntil(s.t, 2*liveness.RecoveryWindow, "redis to be up for the recovery window", func() bool {
		out, _ := exec.Command("redis-cli", "-p", strconv.Itoa(s.redisPort), "info", "server").Output()
		m := regexp.MustCompile(`uptime_in_seconds:(\d+)`).FindSubmatch(out)
		n := 0
		if m != nil {
			n, _ = strconv.Atoi(string(m[1]))
		}
		return time.Duration(n)*time.Second >= liveness.RecoveryWindow
	})
}

// waitStatus polls a run (tests may poll; the API never does) until pred.
func (s *stack) waitStatus(id string, d time.Duration, pred func(runRec) bool) runRec {
	s.t.Helper()
	var r runRec
	waitUntil(s.t, d, "run "+id+" to reach the expected state", func() bool {
		s.do("GET", "/v1/runs/"+id, "", &r)
		return pred(r)
	})
	return r
}

func ended(r runRec) bool { return r.Ended() }

func TestScripts(t *testing.T) {
	root := writeScripts(t)
	s := startStack(t, stackOpts{scripts: root, env: map[string]string{
		"SCRIPT_TERMINATE_TIMEOUT_SECONDS": "2", "PYRUNNER_ENV_PASSTHROUGH": "PASSED_THROUGH", "PASSED_THROUGH": "yes",
		"SCRIPT_JWT_SECRET": "jwt-s3cret", "PYRUNNER_READONLY_PASSWORD": "db-s3cret"}})
	sub := func(name string, f func(t *testing.T)) { t.Run(name, func(t *testing.T) { s.t = t; f(t) }) }

	sub("ListAndRescan", func(t *testing.T) {
		var l struct {
			Root    string `json:"root"`
			Count   int    `json:"count"`
			Scripts []struct {
				Path      string  `json:"path"`
				SizeBytes int64   `json:"size_bytes"`
				MTime     float64 `json:"mtime"`
			} `json:"scripts"`
		}
		s.do("GET", "/v1/scripts", "", &l)
		var paths []string
		for _, sc := range l.Scripts {
			paths = append(paths, sc.Path)
		}
		if l.Root != root || l.Count != 8 || strings.Join(paths, ",") != "env.py,fail.py,hello.py,killed.py,polite.py,stubborn.py,sub/deep.py,ticker.py" || l.Scripts[0].SizeBytes == 0 {
			t.Errorf("scripts = %+v", l)
		}
		if err := os.WriteFile(filepath.Join(root, "new.py"), []byte("print(1)\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		var c struct {
			Count int `json:"count"`
		}
		if st := s.do("POST", "/v1/scripts/rescan", "", &c); st != 200 || c.Count != 9 {
			t.Errorf("rescan: %d %+v", st, c)
		}
		if err := os.Remove(filepath.Join(root, "new.py")); err != nil {
			t.Fatal(err)
		}
		s.do("POST", "/v1/scripts/rescan", "", nil)
	})

	sub("SeedExampleAndStatuses", func(t *testing.T) {
		st, r := s.startScript(`{"script":"hello.py","args":["--foo","bar"]}`)
		// Answered once started, as quant-script-api: running (or, for a
		// script this short, already ended), with its pid and log paths.
		if st != 200 || (r.Status != "running" && r.Status != "succeeded") || deref(r.Script) != "hello.py" || r.RunID == "" || r.CreatedAt == nil ||
			r.PID == nil || r.StartedAt == nil || r.StdoutPath == nil || r.StderrPath == nil {
			t.Fatalf("start: %d %+v", st, r)
		}
		end := s.waitStatus(r.RunID, 20*time.Second, ended)
		if end.Status != "succeeded" || *end.ReturnCode != 0 || end.PID == nil || end.StartedAt == nil || end.FinishedAt == nil ||
			end.StdoutPath == nil || !strings.HasSuffix(*end.StdoutPath, r.RunID+".stdout.log") ||
			strings.Join(end.Argv[1:], " ") != "-u "+filepath.Join(root, "hello.py")+" --foo bar" {
			t.Errorf("end: %+v", end)
		}
		var logs map[string]any
		s.do("GET", "/v1/runs/"+r.RunID+"/logs?stream=both&tail_bytes=65536", "", &logs)
		if logs["run_id"] != r.RunID || logs["stream"] != "both" || logs["tail_bytes"] != 65536.0 ||
			logs["stdout"] != "hello ['--foo', 'bar']\n" || logs["stderr"] != "to stderr\n" {
			t.Errorf("logs: %v", logs)
		}
		logs = map[string]any{}
		s.do("GET", "/v1/runs/"+r.RunID+"/logs", "", &logs)
		if _, has := logs["stderr"]; has || logs["stdout"] == nil || logs["stream"] != "stdout" {
			t.Errorf("default stream is stdout only: %v", logs)
		}
		full, _ := os.ReadFile(*end.StdoutPath)
		if string(full) != "hello ['--foo', 'bar']\n" {
			t.Errorf("full log file: %q", full)
		}
		_, r = s.startScript(`{"script":"fail.py"}`)
		end = s.waitStatus(r.RunID, 20*time.Second, ended)
		if end.Status != "failed" || *end.ReturnCode != 3 || end.Error == nil || !strings.Contains(*end.Error, "code 3") {
			t.Errorf("failing script: %+v", end)
		}
		_, r = s.startScript(`{"script":"killed.py"}`)
		end = s.waitStatus(r.RunID, 20*time.Second, ended)
		if end.Status != "failed" || *end.ReturnCode != -9 {
			t.Errorf("killed script: %+v", end)
		}
		_, r = s.startScript(`{"script":"sub/deep.py","cwd":"sub"}`)
		s.waitStatus(r.RunID, 20*time.Second, ended)
		s.do("GET", "/v1/runs/"+r.RunID+"/logs", "", &logs)
		if logs["stdout"] != filepath.Join(root, "sub")+"\n" {
			t.Errorf("cwd: %v", logs["stdout"])
		}
	})

	sub("FollowAndTail", func(t *testing.T) {
		_, r := s.startScript(`{"script":"ticker.py"}`)
		req, _ := http.NewRequest("GET", s.base+"/v1/runs/"+r.RunID+"/logs?follow=true", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("follow: %v %v", err, resp.Header)
		}
		sc := bufio.NewScanner(resp.Body)
		arrivals := map[int]time.Time{} // tick number → when its line arrived
		for sc.Scan() && len(arrivals) < 5 {
			var n int
			if _, err := fmt.Sscanf(sc.Text(), "data: tick %d", &n); err == nil {
				arrivals[n] = time.Now()
			}
		}
		resp.Body.Close()
		// Ticks are printed a second apart; followed live, they arrive so.
		if len(arrivals) < 5 || arrivals[4].Sub(arrivals[2]) < 1500*time.Millisecond {
			t.Errorf("lines did not arrive as they were printed: %v", arrivals)
		}
		// tail_bytes: exactly the last bytes, never a broken character ("✓" is 3 bytes).
		var logs struct {
			Stdout string `json:"stdout"`
		}
		s.do("GET", "/v1/runs/"+r.RunID+"/logs?tail_bytes=7", "", &logs)
		var all struct {
			Stdout string `json:"stdout"`
		}
		s.do("GET", "/v1/runs/"+r.RunID+"/logs?tail_bytes=65536", "", &all)
		full := all.Stdout
		if !strings.HasSuffix(full, logs.Stdout) || len(logs.Stdout) > 7 || len(logs.Stdout) < 4 || !isValidUTF8(logs.Stdout) {
			t.Errorf("tail_bytes=7 gave %q of %q", logs.Stdout, full)
		}
		s.do("GET", "/v1/runs/"+r.RunID+"/logs?tail_bytes=5", "", &logs)
		if logs.Stdout != " ✓\n" && !strings.HasSuffix(full, logs.Stdout) {
			t.Errorf("tail_bytes=5 gave %q", logs.Stdout)
		}
		// An ended run's follow delivers the tail and then the end.
		var stopped runRec
		s.do("POST", "/v1/runs/"+r.RunID+"/stop", "", &stopped)
		resp, _ = http.Get(s.base + "/v1/runs/" + r.RunID + "/logs?follow=true")
		b := new(strings.Builder)
		if _, err := bufio.NewReader(resp.Body).WriteTo(b); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if !strings.Contains(b.String(), "event: end") || !strings.Contains(b.String(), "data: tick 0 ✓") {
			t.Errorf("follow of an ended run: %q", b.String())
		}
	})

	sub("Stop", func(t *testing.T) {
		_, r := s.startScript(`{"script":"polite.py"}`)
		s.waitStatus(r.RunID, 20*time.Second, func(r runRec) bool { return r.Status == "running" })
		waitLog(s, r.RunID, "ready")
		t0 := time.Now()
		var end runRec
		if st := s.do("POST", "/v1/runs/"+r.RunID+"/stop", "", &end); st != 200 || end.Status != "stopped" || *end.ReturnCode != 0 || time.Since(t0) > 2*time.Second {
			t.Errorf("polite stop: %d %+v after %s", st, end, time.Since(t0))
		}
		_, r = s.startScript(`{"script":"stubborn.py"}`)
		s.waitStatus(r.RunID, 20*time.Second, func(r runRec) bool { return r.Status == "running" })
		waitLog(s, r.RunID, "ready")
		childPID, _ := os.ReadFile(filepath.Join(root, "child.pid"))
		t0 = time.Now()
		if st := s.do("POST", "/v1/runs/"+r.RunID+"/stop", "", &end); st != 200 || end.Status != "stopped" || *end.ReturnCode != -9 ||
			time.Since(t0) < 2*time.Second || !strings.Contains(*end.Error, "killed after") {
			t.Errorf("stubborn stop: %d %+v after %s", st, end, time.Since(t0))
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(childPID)))
		if pid == 0 || syscall.Kill(pid, 0) == nil {
			if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); !strings.Contains(string(b), ") Z ") {
				t.Errorf("the script's child %d outlived the stop", pid)
			}
		}
		if st := s.do("POST", "/v1/runs/00000000-0000-4000-8000-000000000000/stop", "", nil); st != 404 {
			t.Errorf("stop unknown: %d", st)
		}
	})

	sub("Duplicate", func(t *testing.T) {
		_, first := s.startScript(`{"script":"ticker.py"}`)
		if st, r := s.startScript(`{"script":"ticker.py","duplicate":false}`); st != 409 || !strings.Contains(r.Detail, "already running") {
			t.Errorf("duplicate:false: %d %+v", st, r)
		}
		st, second := s.startScript(`{"script":"ticker.py","duplicate":true}`)
		if st != 200 || second.RunID == first.RunID {
			t.Errorf("duplicate:true: %d", st)
		}
		var stopped struct {
			Count   int `json:"count"`
			Results []struct {
				RunID  string `json:"run_id"`
				Status string `json:"status"`
			} `json:"results"`
		}
		s.do("POST", "/v1/runs/stop_all", "", &stopped)
		if stopped.Count != 2 || stopped.Results[0].Status != "stopped" || stopped.Results[1].Status != "stopped" {
			t.Errorf("stop_all: %+v", stopped)
		}
		// Two racing starts of the same script: exactly one wins.
		var wg sync.WaitGroup
		codes := make([]int, 8)
		for i := range codes {
			wg.Add(1)
			go func() { defer wg.Done(); codes[i], _ = s.startScript(`{"script":"polite.py"}`) }()
		}
		wg.Wait()
		won := 0
		for _, c := range codes {
			if c == 200 {
				won++
			} else if c != 409 {
				t.Errorf("racing start got %d", c)
			}
		}
		if won != 1 {
			t.Errorf("%d of 8 racing starts won, want 1 (%v)", won, codes)
		}
		s.do("POST", "/v1/runs/stop_all", "", nil)
	})

	sub("BadPaths", func(t *testing.T) {
		for body, want := range map[string]struct {
			status int
			detail string
		}{
			`{"script":"../../etc/passwd"}`:       {400, "outside the scripts root"},
			`{"script":"/etc/passwd"}`:            {400, "outside the scripts root"},
			`{"script":"link.py"}`:                {400, "outside the scripts root"},
			`{"script":"notes.txt"}`:              {400, "must point to a .py file"},
			`{"script":"missing.py"}`:             {404, "not found"},
			`{"script":"hello.py","cwd":"../.."}`: {400, "outside the scripts root"},
			`{"script":"hello.py","cwd":"/tmp"}`:  {400, "outside the scripts root"},
			`{"script":""}`:                       {400, "script is required"},
			`{"script":`:                          {400, "invalid JSON"},
		} {
			var e struct {
				Detail string `json:"detail"`
			}
			if st := s.do("POST", "/v1/runs", body, &e); st != want.status || !strings.Contains(e.Detail, want.detail) {
				t.Errorf("%s → %d %q, want %d %q", body, st, e.Detail, want.status, want.detail)
			}
		}
	})

	sub("AllAndListing", func(t *testing.T) {
		_, tick := s.startScript(`{"script":"ticker.py"}`)
		var all struct {
			Count   int              `json:"count"`
			Results []map[string]any `json:"results"`
		}
		s.do("POST", "/v1/runs/all", "", &all)
		byScript := map[string]map[string]any{}
		for _, r := range all.Results {
			byScript[r["script"].(string)] = r
		}
		if all.Count != 8 || byScript["ticker.py"]["status"] != "skipped" || byScript["ticker.py"]["reason"] != "Already running" ||
			byScript["hello.py"]["status"] != "started" || byScript["hello.py"]["run_id"] == nil {
			t.Errorf("runs/all: %+v", all)
		}
		var active struct {
			Count int      `json:"count"`
			Runs  []runRec `json:"runs"`
		}
		s.do("GET", "/v1/runs/active", "", &active)
		found := false
		for _, r := range active.Runs {
			found = found || r.RunID == tick.RunID
			if ended(r) {
				t.Errorf("active lists an ended run: %+v", r)
			}
		}
		if !found {
			t.Errorf("active runs lack the ticker: %+v", active)
		}
		s.do("POST", "/v1/runs/stop_all", "", nil)
		// Pages: newest first, filters, cursor.
		var page struct {
			Count      int      `json:"count"`
			Runs       []runRec `json:"runs"`
			NextCursor *string  `json:"next_cursor"`
		}
		s.do("GET", "/v1/runs?script=ticker.py&limit=2", "", &page)
		if page.Count != 2 || page.NextCursor == nil || deref(page.Runs[0].Script) != "ticker.py" || *page.Runs[0].CreatedAt < *page.Runs[1].CreatedAt {
			t.Fatalf("page 1: %+v", page)
		}
		seen := map[string]bool{page.Runs[0].RunID: true, page.Runs[1].RunID: true}
		s.do("GET", "/v1/runs?script=ticker.py&limit=2&cursor="+*page.NextCursor, "", &page)
		for _, r := range page.Runs {
			if seen[r.RunID] || deref(r.Script) != "ticker.py" {
				t.Errorf("page 2 repeats or mismatches: %+v", r)
			}
		}
		s.do("GET", "/v1/runs?status=failed&kind=script", "", &page)
		for _, r := range page.Runs {
			if r.Status != "failed" {
				t.Errorf("status filter: %+v", r)
			}
		}
		if st := s.do("GET", "/v1/runs?status=bogus", "", nil); st != 400 {
			t.Errorf("bad status filter: %d", st)
		}
	})

	sub("Environment", func(t *testing.T) {
		_, r := s.startScript(`{"script":"env.py","env":{"MY_KEY":"v1"}}`)
		s.waitStatus(r.RunID, 20*time.Second, ended)
		var logs struct {
			Stdout string `json:"stdout"`
		}
		s.do("GET", "/v1/runs/"+r.RunID+"/logs", "", &logs)
		var env map[string]string
		if err := json.Unmarshal([]byte(logs.Stdout), &env); err != nil {
			t.Fatalf("%v: %q", err, logs.Stdout)
		}
		if env["MY_KEY"] != "v1" || env["PASSED_THROUGH"] != "yes" || env["PYTHONUNBUFFERED"] != "1" {
			t.Errorf("env lacks request/passthrough names: %v", env)
		}
		all := fmt.Sprint(env)
		for _, secret := range []string{"jwt-s3cret", "db-s3cret", strconv.Itoa(s.redisPort)} {
			if strings.Contains(all, secret) {
				t.Errorf("script sees %q: %v", secret, env)
			}
		}
	})

	sub("LongScriptsDoNotDelayResearch", func(t *testing.T) {
		for i := 0; i < 10; i++ {
			s.startScript(`{"script":"ticker.py","duplicate":true}`)
		}
		waitUntil(t, 20*time.Second, "ten scripts running", func() bool {
			var active struct {
				Runs []runRec `json:"runs"`
			}
			s.do("GET", "/v1/runs/active", "", &active)
			n := 0
			for _, r := range active.Runs {
				if r.Status == "running" {
					n++
				}
			}
			return n == 10
		})
		for i := 0; i < 5; i++ {
			start := time.Now()
			s.mustOK("result = len(df)", nil)
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("research took %s with ten scripts running", d)
			}
		}
		s.do("POST", "/v1/runs/stop_all", "", nil)
	})
}

func isValidUTF8(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }

func waitLog(s *stack, id, want string) {
	waitUntil(s.t, 20*time.Second, "output "+want, func() bool {
		var logs struct {
			Stdout string `json:"stdout"`
		}
		s.do("GET", "/v1/runs/"+id+"/logs", "", &logs)
		return strings.Contains(logs.Stdout, want)
	})
}

// TestScriptWorkerLoss: kill -9 the worker running a script → terminated
// within 30 s and never started again; SIGTERM a worker → its scripts end
// terminated with the reason and the worker exits.
func TestScriptWorkerLoss(t *testing.T) {
	root := writeScripts(t)
	s := startStack(t, stackOpts{scripts: root, env: map[string]string{"SCRIPT_TERMINATE_TIMEOUT_SECONDS": "2"}})
	pidOf := func(r runRec) *proc {
		for _, w := range s.workers {
			if strings.HasSuffix(*r.Worker, ":"+strconv.Itoa(w.cmd.Process.Pid)) {
				return w
			}
		}
		t.Fatalf("run on unknown worker %v", *r.Worker)
		return nil
	}
	_, r := s.startScript(`{"script":"ticker.py"}`)
	running := s.waitStatus(r.RunID, 20*time.Second, func(r runRec) bool { return r.Status == "running" })
	victim := pidOf(running)
	victim.signal(syscall.SIGKILL)
	killed := time.Now()
	end := s.waitStatus(r.RunID, 30*time.Second, ended)
	if end.Status != "terminated" || !strings.Contains(*end.Error, "lost") {
		t.Errorf("after kill -9: %+v", end)
	}
	t.Logf("terminated %s after SIGKILL", time.Since(killed).Round(time.Millisecond))
	time.Sleep(3 * time.Second) // a re-run would show up as a new start
	again := s.waitStatus(r.RunID, time.Second, ended)
	if again.Status != "terminated" || *again.StartedAt != *end.StartedAt {
		t.Errorf("the script was started again: %+v", again)
	}

	_, r = s.startScript(`{"script":"polite.py"}`)
	running = s.waitStatus(r.RunID, 20*time.Second, func(r runRec) bool { return r.Status == "running" })
	victim = pidOf(running)
	victim.signal(syscall.SIGTERM)
	exited := make(chan struct{})
	go func() { victim.cmd.Process.Wait(); close(exited) }()
	end = s.waitStatus(r.RunID, 20*time.Second, ended)
	if end.Status != "terminated" || !strings.Contains(*end.Error, "shut down") {
		t.Errorf("after SIGTERM: %+v", end)
	}
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		t.Errorf("worker did not exit after SIGTERM")
	}
}
