package e2e

import (
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestWaitSurvivesPubSubReconnect: with the API's pub/sub connections
// killed over and over, synchronous calls still answer with the finished
// result as soon as their runs end (a completion lost in a gap must not
// leave a request waiting for its cap).
func TestWaitSurvivesPubSubReconnect(t *testing.T) {
	s := startStack(t, stackOpts{scripts: writeScripts(t)})
	var scripts []runRec
	for i := 0; i < 4; i++ {
		_, r := s.startScript(`{"script":"polite.py","duplicate":true}`)
		scripts = append(scripts, r)
	}
	for _, r := range scripts {
		s.waitStatus(r.RunID, 20*time.Second, func(r runRec) bool { return r.Status == "running" })
	}
	stop := make(chan struct{})
	var killer sync.WaitGroup
	killer.Add(1)
	go func() {
		defer killer.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(30 * time.Millisecond):
				if err := exec.Command("redis-cli", "-p", strconv.Itoa(s.redisPort), "CLIENT", "KILL", "TYPE", "pubsub").Run(); err != nil {
					t.Error(err)
				}
			}
		}
	}()
	var wg sync.WaitGroup
	for i := 0; i < 6; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			st, r := s.research("import time\ntime.sleep(0.5)\nresult = 1", map[string]any{"timeoutSec": 20})
			if st != 200 || !r.ok() {
				t.Errorf("status %d status %q error %q after %s", st, r.Status, r.errText(), time.Since(start))
			} else if d := time.Since(start); d > 10*time.Second {
				t.Errorf("answered after %s for a 0.5 s run", d)
			}
		}()
	}
	// Stops published while a worker's subscription is down still land.
	for _, r := range scripts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var end runRec
			if st := s.do("POST", "/v1/runs/"+r.RunID+"/stop", "", &end); st != 200 || end.Status != "stopped" {
				t.Errorf("stop during reconnects: %d %+v", st, end)
			}
		}()
	}
	wg.Wait()
	close(stop)
	killer.Wait()
	if b, _ := readFile(s.api.log); !strings.Contains(b, "re-subscribed") {
		t.Logf("the API never noticed a re-subscription (kills may have missed): test proved less")
	}
}

// TestWorkerWaitsForItsDependencies: a worker started before its K-line
// database and its Redis exist waits for them with back-off, saying what
// it waits for, and comes up when they do (compose starts everything at
// once; a worker must not exit and crash-loop).
func TestWorkerWaitsForItsDependencies(t *testing.T) {
	s := startStack(t, stackOpts{workers: -1})
	port := strconv.Itoa(freePort(t))
	dbDir := reachableTempDir(t)
	s.env = append(s.env, "PYRUNNER_REDIS_URL=redis://127.0.0.1:"+port+"/0",
		"PYRUNNER_READONLY_TYPE=sqlite", "PYRUNNER_READONLY_URI="+filepath.Join(dbDir, "exchange.db"))
	w := s.start("worker-early", filepath.Join(binDir, "pyrunner-worker"))
	logSays := func(what string) func() bool {
		return func() bool { b, _ := readFile(w.log); return strings.Contains(b, what) }
	}
	waitUntil(t, 30*time.Second, "the worker to wait for its database", logSays("connect to the K-line database failed; retrying"))
	demoSQLite(t, dbDir)
	waitUntil(t, 30*time.Second, "the worker to wait for redis", logSays("connect to redis failed; retrying"))
	s.start("redis-late", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	waitUntil(t, 60*time.Second, "the worker to register in the late redis", func() bool {
		out, _ := exec.Command("redis-cli", "-p", port, "--scan", "--pattern", "pyrunner:worker:*").Output()
		return len(strings.TrimSpace(string(out))) > 0
	})
	if w.cmd.ProcessState != nil {
		t.Errorf("the worker exited: %v", w.cmd.ProcessState)
	}
}
