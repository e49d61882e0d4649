package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ztrade/pyrunner/pkg/liveness"
	"github.com/ztrade/pyrunner/pkg/wire"
)

// botScript is a trading bot stand-in: it ticks until stopped.
const botScript = "import time\ni = 0\nwhile True:\n    print(f'tick {i}', flush=True)\n    i += 1\n    time.sleep(0.2)\n"

// writeBots writes bot_a.py and bot_b.py into a new scripts root.
func writeBots(t *testing.T) (root string, paths []string) {
	root = filepath.Join(reachableTempDir(t), "scripts")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"bot_a.py", "bot_b.py"} {
		p := filepath.Join(root, n)
		if err := os.WriteFile(p, []byte(botScript), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return root, paths
}

// makeRunStack is the stack `make run` starts, with its own settings (its
// redis-server as tools/stack.sh runs it), stopped with `make stop`.
func makeRunStack(t *testing.T, scripts string) (*stack, string) {
	port, redisPort := freePort(t), freePort(t)
	runDir := t.TempDir()
	env := append(os.Environ(), "PYRUNNER_RUN_DIR="+runDir, fmt.Sprintf("PYRUNNER_PORT=%d", port),
		fmt.Sprintf("PYRUNNER_REDIS_PORT=%d", redisPort), "SCRIPT_SCRIPTS_PATH="+scripts)
	mk := func(target string) ([]byte, error) {
		cmd := exec.Command("make", target)
		cmd.Dir, cmd.Env = "..", env
		return cmd.CombinedOutput()
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, f := range []string{"api.log", "worker-1.log", "worker-2.log", "redis.log"} {
				b, _ := os.ReadFile(filepath.Join(runDir, f))
				t.Logf("---- %s (tail) ----\n%s", f, tail(b, 6000))
			}
		}
		if _, err := mk("stop"); err != nil {
			t.Fatal(err)
		}
	})
	if out, err := mk("run"); err != nil {
		t.Fatalf("make run: %v\n%s", err, out)
	}
	return &stack{t: t, base: fmt.Sprintf("http://127.0.0.1:%d", port), redisPort: redisPort, wantWorkers: 2, mode: "warm"}, runDir
}

// crashMakeRunRedis SIGKILLs the redis-server `make run` started and
// starts it again as the stack runs it (tools/stack.sh redis: the same
// settings and files), as a restart policy would; with lose, its files
// are gone first (Redis comes back empty). It returns when Redis answers.
func crashMakeRunRedis(t *testing.T, runDir string, redisPort int, lose bool) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(runDir, "redis.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "redis-server to die", func() bool { return !alive(pid) })
	if lose {
		files, _ := filepath.Glob(filepath.Join(runDir, "redis", "*"))
		if len(files) == 0 {
			t.Fatalf("no redis files in %s to lose: is it durable?", runDir)
		}
		for _, f := range files {
			os.RemoveAll(f)
		}
	}
	cmd := exec.Command("tools/stack.sh", "redis")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "PYRUNNER_RUN_DIR="+runDir, fmt.Sprintf("PYRUNNER_REDIS_PORT=%d", redisPort))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tools/stack.sh redis: %v\n%s", err, out)
	}
}

// TestDurability: on the stack `make run` starts, Redis is SIGKILLed and
// started again as it ran. With its files: every result, every accepted
// run and both running scripts survive (the scripts keep their run ids
// and pids; a second start is 409; stop works). Without them (Redis came
// back empty): the workers write their scripts' records again within two
// heartbeats, a second start is 409, and stop and stop_all end them. A
// scan of the machine's processes finds no second copy of either script
// at any moment.
func TestDurability(t *testing.T) {
	root, bots := writeBots(t)
	scan := scanCopies(t, bots...)
	s, runDir := makeRunStack(t, root)

	var h struct {
		Redis struct{ Status, Persistence, Eviction string } `json:"redis"`
	}
	if s.getJSON("/health", &h); h.Redis.Status != "ok" || h.Redis.Persistence != "aof-everysec" || h.Redis.Eviction != "noeviction" {
		t.Fatalf("make run's redis: %+v, want aof-everysec and noeviction", h.Redis)
	}

	var finished []string
	for i := 0; i < 5; i++ {
		r := s.mustOK("result = len(df)", nil)
		finished = append(finished, r.ID)
	}
	startBot := func(t *testing.T, name string) runRec {
		t.Helper()
		st, r := s.startScript(fmt.Sprintf(`{"script":%q}`, name))
		if st != 200 || r.Status != "running" || r.PID == nil {
			t.Fatalf("start %s: %d %+v", name, st, r)
		}
		return r
	}
	a, b := startBot(t, "bot_a.py"), startBot(t, "bot_b.py")
	var sched wire.Schedule
	if st := s.do("POST", "/v1/schedules", `{"name":"kept","cron":"@daily","kind":"script","request":{"script":"bot_a.py"},"paused":true}`, &sched); st != 201 {
		t.Fatalf("create a schedule: %d", st)
	}
	var queued []string
	for i := 0; i < 30; i++ {
		st, r := s.research("import time\ntime.sleep(1)\nresult = 7", map[string]any{"wait": false})
		if st != 202 {
			t.Fatalf("submission %d: %d %+v", i, st, r)
		}
		queued = append(queued, r.ID)
	}
	// appendfsync everysec: what was acknowledged more than a second ago
	// is on disk, which is the promise under test.
	time.Sleep(1500 * time.Millisecond)

	t.Run("CrashWithFiles", func(t *testing.T) {
		crashMakeRunRedis(t, runDir, s.redisPort, false)
		for _, id := range finished {
			var r result
			if st := s.do("GET", "/v1/research/runs/"+id, "", &r); st != 200 || r.Status != "succeeded" || string(r.Result) != "1441" {
				t.Errorf("finished run %s after the crash: %d %s %s", id, st, r.Status, r.Result)
			}
		}
		ok := 0
		for _, id := range queued {
			var r result
			if st := s.do("GET", "/v1/research/runs/"+id+"?wait=120", "", &r); st == 200 && r.Status == "succeeded" && string(r.Result) == "7" {
				ok++
			} else {
				t.Errorf("accepted run %s after the crash: %d %s %q", id, st, r.Status, r.errText())
			}
		}
		t.Logf("after the crash: %d/%d finished results readable, %d/%d accepted runs succeeded", len(finished), len(finished), ok, len(queued))
		for _, bot := range []runRec{a, b} {
			var r runRec
			if st := s.do("GET", "/v1/runs/"+bot.RunID, "", &r); st != 200 || r.Status != "running" || r.PID == nil || *r.PID != *bot.PID {
				t.Errorf("script %s after the crash: %d %+v (pid was %d)", deref(bot.Script), st, r, *bot.PID)
			}
		}
		if st, r := s.startScript(`{"script":"bot_a.py"}`); st != 409 {
			t.Errorf("a second start of bot_a.py after the crash: %d %+v", st, r)
		}
		var kept wire.Schedule
		if st := s.do("GET", "/v1/schedules/"+sched.ID, "", &kept); st != 200 || kept.Name != "kept" || !kept.Paused {
			t.Errorf("the schedule after the crash: %d %+v", st, kept)
		}
		var stopped runRec
		if st := s.do("POST", "/v1/runs/"+a.RunID+"/stop", "", &stopped); st != 200 || stopped.Status != "stopped" {
			t.Errorf("stop bot_a.py after the crash: %d %+v", st, stopped)
		}
	})

	t.Run("ComesBackEmpty", func(t *testing.T) {
		a := startBot(t, "bot_a.py")
		crashMakeRunRedis(t, runDir, s.redisPort, true)
		back := time.Now()
		var took time.Duration
		waitUntil(t, 30*time.Second, "both scripts to be listed as running again", func() bool {
			var list struct{ Runs []runRec }
			if s.getJSON("/v1/runs?status=running", &list) != 200 {
				return false
			}
			seen := 0
			for _, r := range list.Runs {
				for _, bot := range []runRec{a, b} {
					if r.RunID == bot.RunID && r.PID != nil && *r.PID == *bot.PID {
						seen++
					}
				}
			}
			took = time.Since(back)
			return seen == 2
		})
		t.Logf("both scripts listed as running again %.1f s after redis came back empty", took.Seconds())
		if took > 2*liveness.Interval+time.Second {
			t.Errorf("the scripts came back after %s, want within two heartbeats (%s)", took, 2*liveness.Interval)
		}
		if st, r := s.startScript(`{"script":"bot_b.py"}`); st != 409 {
			t.Errorf("a second start of bot_b.py after redis came back empty: %d %+v", st, r)
		}
		var logs struct{ Stdout string }
		waitUntil(t, 10*time.Second, "bot_a's log tail back from the worker's file", func() bool {
			s.do("GET", "/v1/runs/"+a.RunID+"/logs", "", &logs)
			return strings.Contains(logs.Stdout, "tick 0\n")
		})
		var stopped runRec
		if st := s.do("POST", "/v1/runs/"+a.RunID+"/stop", "", &stopped); st != 200 || stopped.Status != "stopped" {
			t.Errorf("stop bot_a.py after redis came back empty: %d %+v", st, stopped)
		}
		var all struct {
			Results []struct {
				RunID  string `json:"run_id"`
				Status string `json:"status"`
			} `json:"results"`
		}
		if st := s.do("POST", "/v1/runs/stop_all", "", &all); st != 200 {
			t.Errorf("stop_all: %d", st)
		}
		ended := s.waitStatus(b.RunID, 30*time.Second, func(r runRec) bool { return r.Status == "stopped" })
		t.Logf("stop_all: %+v; bot_b.py %s", all.Results, ended.Status)
		waitUntil(t, 10*time.Second, "no bot process left", func() bool {
			return len(scan.live(bots[0])) == 0 && len(scan.live(bots[1])) == 0
		})
	})
	for _, p := range bots {
		if n := scan.most(p); n != 1 {
			t.Errorf("%s: at most %d live copies seen, want exactly 1", filepath.Base(p), n)
		}
	}
}

// TestDurabilityCutOffWorker: a worker cut off from Redis for less than
// the fence time, while Redis restarts empty behind it, keeps its script
// and writes its record again once it is back; a second start is 409,
// and no second copy ever runs.
func TestDurabilityCutOffWorker(t *testing.T) {
	root, bots := writeBots(t)
	scan := scanCopies(t, bots[0])
	s := startStack(t, stackOpts{workers: -1, scripts: root})
	p := newProxy(t, fmt.Sprintf("127.0.0.1:%d", s.redisPort))
	w := s.startWorkerVia("worker-behind-proxy", p.addr())
	s.waitWorkers(1)
	st, a := s.startScript(`{"script":"bot_a.py"}`)
	if st != 200 || a.Status != "running" || a.PID == nil {
		t.Fatalf("start bot_a.py: %d %+v", st, a)
	}
	// Cut right after a heartbeat landed: the fence is Fence away.
	beat := func() string {
		out, _ := exec.Command("redis-cli", "-p", strconv.Itoa(s.redisPort), "zscore", "pyrunner:workers",
			fmt.Sprintf("%s:%d", hostname(t), w.cmd.Process.Pid)).Output()
		return strings.TrimSpace(string(out))
	}
	last := beat()
	waitUntil(t, 10*time.Second, "a heartbeat to land", func() bool { return beat() != last })
	p.setCut(true)
	cut := time.Now()
	s.crashRedis(true)
	time.Sleep(time.Until(cut.Add(liveness.Fence / 3))) // cut off for a third of the fence time
	p.setCut(false)
	var r runRec
	waitUntil(t, 2*liveness.Fence, "the worker to write its script's record again", func() bool {
		return s.getJSON("/v1/runs/"+a.RunID, &r) == 200 && r.Status == "running" && r.PID != nil && *r.PID == *a.PID
	})
	t.Logf("record back %.1f s after the cut (healed at %.1f s)", time.Since(cut).Seconds(), (liveness.Fence / 3).Seconds())
	if st, r := s.startScript(`{"script":"bot_a.py"}`); st != 409 {
		t.Errorf("a second start of bot_a.py: %d %+v", st, r)
	}
	if !alive(*a.PID) {
		t.Errorf("the script died: the worker fenced although it was back within the fence time")
	}
	var stopped runRec
	if st := s.do("POST", "/v1/runs/"+a.RunID+"/stop", "", &stopped); st != 200 || stopped.Status != "stopped" {
		t.Errorf("stop: %d %+v", st, stopped)
	}
	if n := scan.most(bots[0]); n != 1 {
		t.Errorf("at most %d live copies seen, want 1", n)
	}
}

func hostname(t *testing.T) string {
	h, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestFrozenWorkerFence: the whole process group of the worker running a
// script (its zygote too) is SIGSTOPped for 30 s. The script's keeper,
// outside that group, kills it before its record leaves running; until
// the record has ended a second start is 409, then exactly one copy
// starts on the other worker, and the frozen worker, resumed, changes
// nothing. Then the worker running that copy is SIGKILLed: its keeper
// kills the copy at once, and the next copy starts only after. A scan of
// the machine's processes finds no second copy at any moment.
func TestFrozenWorkerFence(t *testing.T) {
	root, bots := writeBots(t)
	scan := scanCopies(t, bots[0])
	s := startStack(t, stackOpts{workers: -1, scripts: root})
	frozen := s.start("worker-to-freeze", filepath.Join(binDir, "pyrunner-worker"))
	s.waitWorkers(1)
	st, first := s.startScript(`{"script":"bot_a.py"}`)
	if st != 200 || first.Status != "running" || first.PID == nil {
		t.Fatalf("start bot_a.py: %d %+v", st, first)
	}
	other := s.start("worker-2", filepath.Join(binDir, "pyrunner-worker"))
	s.waitWorkers(2)

	frozen.group(syscall.SIGSTOP)
	froze := time.Now()
	var died, endedAt time.Time
	refused := 0
	for endedAt.IsZero() {
		if time.Since(froze) > 40*time.Second {
			t.Fatal("the frozen worker's run was never ended")
		}
		if died.IsZero() && !alive(*first.PID) {
			died = time.Now()
		}
		var cur runRec
		s.do("GET", "/v1/runs/"+first.RunID, "", &cur)
		if cur.Status != "running" {
			endedAt = time.Now()
			if died.IsZero() {
				t.Errorf("the record says %s while the script still runs", cur.Status)
			}
			t.Logf("record %s (%q) %.1f s into the freeze", cur.Status, *cur.Error, endedAt.Sub(froze).Seconds())
			break
		}
		if st, r := s.startScript(`{"script":"bot_a.py"}`); st == 409 {
			refused++
		} else {
			t.Fatalf("a second start while the record says running: %d %+v", st, r)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("script killed by its keeper %.1f s into the freeze; record ended %.1f s in; %d second starts refused meanwhile",
		died.Sub(froze).Seconds(), endedAt.Sub(froze).Seconds(), refused)
	if refused == 0 {
		t.Errorf("no second start was tried while the record said running")
	}
	st, second := s.startScript(`{"script":"bot_a.py"}`)
	if st != 200 || second.Status != "running" || second.PID == nil || !strings.HasSuffix(*second.Worker, fmt.Sprintf(":%d", other.cmd.Process.Pid)) {
		t.Fatalf("a new copy once the record ended: %d %+v", st, second)
	}
	time.Sleep(time.Until(froze.Add(30 * time.Second))) // frozen for 30 s in all
	frozen.group(syscall.SIGCONT)
	s.waitWorkers(2) // the frozen worker is back and has had a heartbeat
	var cur runRec
	if s.do("GET", "/v1/runs/"+second.RunID, "", &cur); cur.Status != "running" || !alive(*second.PID) {
		t.Errorf("the new copy after the frozen worker came back: %+v, alive %v", cur, alive(*second.PID))
	}

	// The worker running the copy dies: its keeper kills the copy at once.
	other.signal(syscall.SIGKILL)
	killed := time.Now()
	waitUntil(t, 5*time.Second, "the dead worker's script to die with it", func() bool { return !alive(*second.PID) })
	t.Logf("script dead %.0f ms after its worker was SIGKILLed", float64(time.Since(killed).Microseconds())/1000)
	s.waitStatus(second.RunID, 30*time.Second, ended)
	if st, r := s.startScript(`{"script":"bot_a.py"}`); st != 200 || r.Status != "running" {
		t.Errorf("a new copy after the worker's death: %d %+v", st, r)
	}
	if n := scan.most(bots[0]); n != 1 {
		t.Errorf("at most %d live copies seen, want 1", n)
	}
}

// TestNoFalseFenceUnderStarvation: a worker at nice 19 beside two `yes`
// per core keeps its script for PYRUNNER_SOAK_MINUTES (10 in CI, 1
// otherwise): a worker that is only slow loses nothing to its fence.
func TestNoFalseFenceUnderStarvation(t *testing.T) {
	minutes := 1
	if v := os.Getenv("PYRUNNER_SOAK_MINUTES"); v != "" {
		minutes, _ = strconv.Atoi(v)
	}
	root, bots := writeBots(t)
	scanCopies(t, bots[0])
	s := startStack(t, stackOpts{workers: -1, scripts: root})
	w := s.start("worker-nice-19", "nice", "-n", "19", filepath.Join(binDir, "pyrunner-worker"))
	// At nice 19 a worker starts slowly on a machine already busy with
	// other work (a nice-0 process gets about 70 times its share).
	s.waitWorkersWithin(1, 4*time.Minute)
	st, bot := s.startScript(`{"script":"bot_a.py"}`)
	if st != 200 || bot.Status != "running" || bot.PID == nil {
		t.Fatalf("start bot_a.py: %d %+v", st, bot)
	}
	var hogs []*exec.Cmd
	for i := 0; i < 2*runtime.NumCPU(); i++ {
		hog := exec.Command("yes")
		if err := hog.Start(); err != nil {
			t.Fatal(err)
		}
		hogs = append(hogs, hog)
	}
	defer func() {
		for _, h := range hogs {
			h.Process.Kill()
			h.Wait()
		}
	}()
	t.Logf("%d CPU hogs beside a worker at nice 19 for %d minute(s)", len(hogs), minutes)
	deadline := time.Now().Add(time.Duration(minutes) * time.Minute)
	for time.Now().Before(deadline) {
		if !alive(*bot.PID) {
			t.Fatalf("the script died %s into the starvation", time.Until(deadline).Round(time.Second))
		}
		time.Sleep(time.Second)
	}
	for _, h := range hogs {
		h.Process.Kill()
	}
	var cur runRec
	if s.do("GET", "/v1/runs/"+bot.RunID, "", &cur); cur.Status != "running" || !alive(*bot.PID) {
		t.Errorf("after the starvation: %+v, alive %v", cur, alive(*bot.PID))
	}
	if b, _ := readFile(w.log); strings.Contains(b, "killing run at once") || strings.Contains(b, "keeper killed") {
		t.Errorf("the worker fenced under starvation")
	}
	if b, _ := readFile(w.log); strings.Contains(b, "heartbeat failed") {
		t.Logf("heartbeats failed at times under starvation (none long enough to fence)")
	}
}
