package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ztrade/pyrunner/pkg/liveness"
)

// restartScripts writes the scripts the restart tests run: crash.py
// exits 3 after a second, ok.py exits 0 at once, and bot.py ticks until
// stopped.
func restartScripts(t *testing.T) (root string, bot string) {
	root = filepath.Join(reachableTempDir(t), "scripts")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, code := range map[string]string{
		"crash.py": "import time\nprint('crashing soon', flush=True)\ntime.sleep(1)\nraise SystemExit(3)\n",
		"ok.py":    "print('done')\n",
		"bot.py":   botScript,
	} {
		if err := os.WriteFile(filepath.Join(root, name), []byte(code), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root, filepath.Join(root, "bot.py")
}

// TestRestartPolicies: a script run's restart policy (DESIGN §2), end to
// end with real workers and processes: on-failure restarts a crashing
// script with a doubling back-off and gives up past max_restarts, exit 0
// ends it (always restarts it), a stop in the back-off ends it for good,
// stop_all takes running and restarting runs alike. A scan of the
// machine's processes fails the test if a script ever has two copies.
func TestRestartPolicies(t *testing.T) {
	root, bot := restartScripts(t)
	scanCopies(t, bot, filepath.Join(root, "crash.py"))
	mport := freePort(t)
	s := startStack(t, stackOpts{workers: 1, scripts: root, env: map[string]string{"SCRIPT_TERMINATE_TIMEOUT_SECONDS": "2",
		"PYRUNNER_METRICS_LISTEN": fmt.Sprintf("127.0.0.1:%d", mport)}})
	sub := func(name string, f func(t *testing.T)) { t.Run(name, func(t *testing.T) { s.t = t; f(t) }) }

	sub("OnFailureBacksOffThenGivesUp", func(t *testing.T) {
		st, r := s.startScript(`{"script":"crash.py","restart":{"policy":"on-failure","max_restarts":3}}`)
		if st != 200 || r.Attempt != 1 {
			t.Fatalf("start: %d %+v", st, r)
		}
		seen := map[string]bool{}
		final := s.waitStatus(r.RunID, 60*time.Second, func(cur runRec) bool {
			seen[cur.Status] = true
			return ended(cur)
		})
		if final.Status != "failed" || final.Error == nil || *final.Error != "gave up after 3 restarts in 600 s; the last attempt: exited with code 3" {
			t.Fatalf("after the restarts: %s %v", final.Status, deref(final.Error))
		}
		if final.Attempt != 4 || len(final.Restarts) != 3 || !seen["restarting"] {
			t.Fatalf("attempt %d, restarts %+v, statuses seen %v", final.Attempt, final.Restarts, seen)
		}
		for i, want := range []float64{1, 2, 4} {
			re := final.Restarts[i]
			if re.Attempt != i+1 || re.DelaySec != want || re.ReturnCode == nil || *re.ReturnCode != 3 || re.Reason != "exited with code 3" {
				t.Errorf("restart %d: %+v, want attempt %d, a %gs back-off, code 3", i+1, re, i+1, want)
			}
		}
		// Each attempt started only after its back-off (the last one's
		// start is in the record).
		last := final.Restarts[2]
		if at := parseTime(t, last.At); parseTime(t, *final.StartedAt).Before(at.Add(4 * time.Second)) {
			t.Errorf("attempt 4 started at %s, before the 4 s back-off from %s", *final.StartedAt, last.At)
		}
		var logs map[string]any
		s.do("GET", "/v1/runs/"+r.RunID+"/logs?stream=stdout", "", &logs)
		out, _ := logs["stdout"].(string)
		if strings.Count(out, "crashing soon") != 4 || !strings.Contains(out, "[pyrunner] attempt 4 starts on worker ") ||
			!strings.Contains(out, "attempt 3 ended: exited with code 3") {
			t.Errorf("one log for all attempts, each start said: %q", out)
		}
	})

	sub("ExitZeroEndsUnlessAlways", func(t *testing.T) {
		_, r := s.startScript(`{"script":"ok.py","restart":{"policy":"on-failure"}}`)
		if cur := s.waitStatus(r.RunID, 20*time.Second, ended); cur.Status != "succeeded" || cur.Attempt != 1 || len(cur.Restarts) != 0 {
			t.Errorf("on-failure after exit 0: %+v", cur)
		}
		_, r = s.startScript(`{"script":"ok.py","restart":{"policy":"always","max_restarts":2,"backoff_sec":0.5}}`)
		cur := s.waitStatus(r.RunID, 30*time.Second, ended)
		if cur.Attempt != 3 || len(cur.Restarts) != 2 || cur.Status != "failed" || !strings.HasPrefix(deref(cur.Error), "gave up after 2 restarts") {
			t.Errorf("always after exit 0: %s %q attempt %d restarts %+v", cur.Status, deref(cur.Error), cur.Attempt, cur.Restarts)
		}
	})

	sub("BadPolicyRefused", func(t *testing.T) {
		var e runRec
		if st := s.do("POST", "/v1/runs", `{"script":"bot.py","restart":{"policy":"sometimes"}}`, &e); st != 400 || !strings.Contains(e.Detail, "restart.policy") {
			t.Errorf("a bad policy: %d %q", st, e.Detail)
		}
		if st := s.do("POST", "/v1/runs", `{"script":"bot.py","restart":{"policy":"always","backoff_sec":10,"max_backoff_sec":1}}`, &e); st != 400 || !strings.Contains(e.Detail, "restart.max_backoff_sec") {
			t.Errorf("a bad back-off: %d %q", st, e.Detail)
		}
	})

	sub("StopDuringBackoff", func(t *testing.T) {
		_, r := s.startScript(`{"script":"crash.py","restart":{"policy":"on-failure","backoff_sec":3}}`)
		cur := s.waitStatus(r.RunID, 20*time.Second, func(cur runRec) bool { return cur.Status == "restarting" || ended(cur) })
		if cur.Status != "restarting" || cur.RestartAt == nil || cur.PID != nil {
			t.Fatalf("between attempts: %+v", cur)
		}
		// The script's lock holds between attempts: a second start is 409.
		if st, _ := s.startScript(`{"script":"crash.py"}`); st != 409 {
			t.Errorf("a second start while restarting: %d, want 409", st)
		}
		var stopped runRec
		if st := s.do("POST", "/v1/runs/"+r.RunID+"/stop", "", &stopped); st != 200 || stopped.Status != "stopped" {
			t.Fatalf("stop in the back-off: %d %+v", st, stopped)
		}
		// Past the time the next attempt was due, none started.
		due := parseTime(t, *cur.RestartAt)
		time.Sleep(time.Until(due.Add(2 * time.Second)))
		s.do("GET", "/v1/runs/"+r.RunID, "", &cur)
		if cur.Status != "stopped" || cur.Attempt != 2 || deref(cur.Error) != "stopped between attempts: no further attempt" {
			t.Errorf("after the back-off a stop cut short: %s attempt %d %q", cur.Status, cur.Attempt, deref(cur.Error))
		}
	})

	sub("StopAllTakesRestartingRuns", func(t *testing.T) {
		_, running := s.startScript(`{"script":"bot.py","restart":{"policy":"always"}}`)
		_, crashing := s.startScript(`{"script":"crash.py","restart":{"policy":"on-failure","backoff_sec":30}}`)
		s.waitStatus(crashing.RunID, 20*time.Second, func(cur runRec) bool { return cur.Status == "restarting" })
		var out struct {
			Results []struct {
				RunID  string `json:"run_id"`
				Status string `json:"status"`
			} `json:"results"`
		}
		if st := s.do("POST", "/v1/runs/stop_all", "", &out); st != 200 {
			t.Fatalf("stop_all: %d", st)
		}
		got := map[string]string{}
		for _, r := range out.Results {
			got[r.RunID] = r.Status
		}
		if got[running.RunID] != "stopped" || got[crashing.RunID] != "stopped" {
			t.Errorf("stop_all: %v, want both stopped", got)
		}
		if cur := s.waitStatus(running.RunID, 10*time.Second, ended); cur.Attempt != 1 {
			t.Errorf("a stopped run with policy always was started again: %+v", cur)
		}
	})

	sub("MetricCounted", func(t *testing.T) {
		// 3 restarts, 2 (always), 1 and 1 before the stops.
		m := scrape(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", mport))
		for _, line := range []string{`pyrunner_run_restarts_total{reason="exit_code"} 5`, `pyrunner_run_restarts_total{reason="exit_zero"} 2`} {
			if !strings.Contains(m, line+"\n") {
				t.Errorf("the worker's metrics lack %q", line)
			}
		}
	})

	sub("RunsAllTakesRestart", func(t *testing.T) {
		var e runRec
		if st := s.do("POST", "/v1/runs/all", `{"restart":{"policy":"sometimes"}}`, &e); st != 400 || !strings.Contains(e.Detail, "restart.policy") {
			t.Errorf("runs/all with a bad policy: %d %q", st, e.Detail)
		}
		var out struct {
			Results []struct {
				Script string `json:"script"`
				Status string `json:"status"`
				RunID  string `json:"run_id"`
			} `json:"results"`
		}
		if st := s.do("POST", "/v1/runs/all", `{"restart":{"policy":"on-failure","backoff_sec":30}}`, &out); st != 200 || len(out.Results) != 3 {
			t.Fatalf("runs/all: %d %+v", st, out)
		}
		for _, r := range out.Results {
			if r.Script == "crash.py" {
				if cur := s.waitStatus(r.RunID, 20*time.Second, func(cur runRec) bool { return cur.Status == "restarting" || ended(cur) }); cur.Status != "restarting" {
					t.Errorf("crash.py started by runs/all with on-failure: %s", cur.Status)
				}
			}
		}
		s.do("POST", "/v1/runs/stop_all", "", nil)
	})
}

// TestRestartAcrossWorkers: a bot with an on-failure policy outlives its
// worker. SIGKILLed, the worker's keeper kills the bot at once, and a
// reaper restarts it on the other worker (attempt 2, "worker … lost")
// within Stale + back-off + 5 s. Frozen (SIGSTOP) for 30 s, the worker's
// keeper kills the bot before the reaper restarts it elsewhere, and the
// worker, resumed, changes nothing. Never two copies.
func TestRestartAcrossWorkers(t *testing.T) {
	root, bot := restartScripts(t)
	scan := scanCopies(t, bot)
	s := startStack(t, stackOpts{workers: -1, scripts: root})
	workers := map[string]*proc{}
	startWorker := func(name string) {
		p := s.start(name, filepath.Join(binDir, "pyrunner-worker"))
		workers[fmt.Sprintf(":%d", p.cmd.Process.Pid)] = p
	}
	of := func(r runRec) *proc {
		for suffix, p := range workers {
			if r.Worker != nil && strings.HasSuffix(*r.Worker, suffix) {
				return p
			}
		}
		t.Fatalf("run %s is on no worker of this test: %v", r.RunID, deref(r.Worker))
		return nil
	}
	startWorker("worker-1")
	s.waitWorkers(1)
	st, first := s.startScript(`{"script":"bot.py","restart":{"policy":"on-failure"}}`)
	if st != 200 || first.Status != "running" || first.PID == nil {
		t.Fatalf("start bot.py: %d %+v", st, first)
	}
	startWorker("worker-2")
	s.waitWorkers(2)

	// Killed.
	of(first).signal(syscall.SIGKILL)
	killed := time.Now()
	waitUntil(t, 5*time.Second, "the killed worker's bot to die with it", func() bool { return !alive(*first.PID) })
	second := s.waitStatus(first.RunID, 60*time.Second, func(cur runRec) bool {
		return cur.Attempt == 2 && cur.Status == "running" && cur.PID != nil
	})
	took := time.Since(killed)
	t.Logf("attempt 2 running %.1f s after its worker was SIGKILLed", took.Seconds())
	if limit := liveness.Stale + time.Second + 5*time.Second; took > limit {
		t.Errorf("attempt 2 ran %.1f s after the kill, past Stale + back-off + 5 s (%s)", took.Seconds(), limit)
	}
	if len(second.Restarts) != 1 || !strings.Contains(second.Restarts[0].Reason, "was lost") || of(second) == of(first) {
		t.Errorf("after the kill: worker %v, restarts %+v", deref(second.Worker), second.Restarts)
	}

	// Frozen.
	startWorker("worker-3")
	s.waitWorkers(2)
	frozen := of(second)
	frozen.group(syscall.SIGSTOP)
	froze := time.Now()
	third := s.waitStatus(first.RunID, 60*time.Second, func(cur runRec) bool {
		return cur.Attempt == 3 && cur.Status == "running" && cur.PID != nil
	})
	t.Logf("attempt 3 running %.1f s into the freeze; attempt 2's bot was dead by then: %v", time.Since(froze).Seconds(), !alive(*second.PID))
	if alive(*second.PID) {
		t.Errorf("attempt 3 started while the frozen worker's bot still ran")
	}
	time.Sleep(time.Until(froze.Add(30 * time.Second))) // frozen for 30 s in all
	frozen.group(syscall.SIGCONT)
	s.waitWorkers(2) // the frozen worker is back and has beaten
	var cur runRec
	if s.do("GET", "/v1/runs/"+first.RunID, "", &cur); cur.Status != "running" || cur.Attempt != 3 || !alive(*third.PID) {
		t.Errorf("after the frozen worker came back: %s attempt %d, alive %v", cur.Status, cur.Attempt, alive(*third.PID))
	}
	if n := scan.most(bot); n != 1 {
		t.Errorf("at most %d live copies seen, want 1", n)
	}
}

func parseTime(t *testing.T, s string) time.Time {
	t.Helper()
	at, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("time %q: %v", s, err)
	}
	return at
}
