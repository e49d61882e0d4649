package e2e

import (
	"os/exec"
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
				exec.Command("redis-cli", "-p", strconv.Itoa(s.redisPort), "CLIENT", "KILL", "TYPE", "pubsub").Run()
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
