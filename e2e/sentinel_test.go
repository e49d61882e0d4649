package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const (
	redisPassword    = "redis-pw"
	sentinelPassword = "sentinel-pw"
	masterName       = "pyrunner"
)

// redisHA is a Redis set under Sentinel that a failover test drives:
// processes on 127.0.0.1 (sentinelSet) or compose's ha profile.
type redisHA interface {
	// primary is the primary's address as the sentinels name it ("" if
	// none answers).
	primary() string
	// kill SIGKILLs the Redis at addr.
	kill(addr string)
	// bringBack starts the Redis at addr again and waits until it is a
	// replica in sync that refuses writes.
	bringBack(addr string)
}

// sentinelSet is a primary, a replica and three sentinels on 127.0.0.1,
// password-protected, with docker/redis.conf's persistence.
type sentinelSet struct {
	t         *testing.T
	dir       string
	nodes     []int // redis ports; nodes[0] starts as the primary
	sentinels []int
	procs     map[int]*exec.Cmd
}

func startSentinelSet(t *testing.T) *sentinelSet {
	ss := &sentinelSet{t: t, dir: t.TempDir(), procs: map[int]*exec.Cmd{}}
	ports := map[int]bool{}
	for len(ports) < 5 { // five different ones
		ports[freePort(t)] = true
	}
	for p := range ports {
		if len(ss.nodes) < 2 {
			ss.nodes = append(ss.nodes, p)
		} else {
			ss.sentinels = append(ss.sentinels, p)
		}
	}
	ss.startNode(ss.nodes[0], 0)
	ss.startNode(ss.nodes[1], ss.nodes[0])
	for _, port := range ss.sentinels {
		conf := filepath.Join(ss.dir, fmt.Sprintf("sentinel-%d.conf", port))
		body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nrequirepass %s\nsentinel sentinel-pass %s\n"+
			"sentinel monitor %s 127.0.0.1 %d 2\nsentinel auth-pass %s %s\n"+
			"sentinel down-after-milliseconds %s 1000\nsentinel failover-timeout %s 5000\nsentinel parallel-syncs %s 1\n",
			port, ss.dir, sentinelPassword, sentinelPassword, masterName, ss.nodes[0], masterName, redisPassword,
			masterName, masterName, masterName)
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		ss.run(port, "redis-server", conf, "--sentinel")
	}
	t.Cleanup(func() {
		for _, c := range ss.procs {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	})
	// Ready when the replica has synced and every sentinel knows the
	// replica and the two other sentinels (otherwise no failover).
	waitUntil(t, 60*time.Second, "the sentinel set to be ready", func() bool {
		if !strings.Contains(ss.cli(ss.nodes[1], redisPassword, "info", "replication"), "master_link_status:up") {
			return false
		}
		for _, p := range ss.sentinels {
			info := ss.cli(p, sentinelPassword, "sentinel", "master", masterName)
			if !strings.Contains(info, "num-other-sentinels\n2") || !strings.Contains(info, "num-slaves\n1") {
				return false
			}
		}
		return true
	})
	return ss
}

// startNode starts a Redis on port, a replica of replicaOf unless it is 0.
func (ss *sentinelSet) startNode(port, replicaOf int) {
	conf, err := filepath.Abs("../docker/redis.conf")
	if err != nil {
		ss.t.Fatal(err)
	}
	dir := filepath.Join(ss.dir, strconv.Itoa(port))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		ss.t.Fatal(err)
	}
	// A config file of the node's own that includes pyrunner's: sentinels
	// rewrite it (CONFIG REWRITE) when they reconfigure the node.
	own := filepath.Join(dir, "redis.conf")
	if _, err := os.Stat(own); err != nil {
		if err := os.WriteFile(own, []byte("include "+conf+"\n"), 0o644); err != nil {
			ss.t.Fatal(err)
		}
	}
	args := []string{own, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
		"--requirepass", redisPassword, "--masterauth", redisPassword}
	if replicaOf != 0 {
		args = append(args, "--replicaof", "127.0.0.1", strconv.Itoa(replicaOf))
	}
	ss.run(port, "redis-server", args...)
	deadline := time.Now().Add(10 * time.Second)
	for strings.TrimSpace(ss.cli(port, redisPassword, "ping")) != "PONG" {
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(ss.dir, fmt.Sprintf("%d.log", port)))
			ss.t.Fatalf("redis on %d did not answer in 10 s:\n%s", port, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (ss *sentinelSet) run(port int, bin string, args ...string) {
	log, err := os.Create(filepath.Join(ss.dir, fmt.Sprintf("%d.log", port)))
	if err != nil {
		ss.t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		ss.t.Fatal(err)
	}
	ss.procs[port] = cmd
}

func (ss *sentinelSet) kill(addr string) {
	port := portOf(addr)
	c := ss.procs[port]
	if err := c.Process.Signal(syscall.SIGKILL); err != nil {
		ss.t.Fatal(err)
	}
	_ = c.Wait()
	delete(ss.procs, port)
}

func (ss *sentinelSet) cli(port int, password string, args ...string) string {
	out, _ := exec.Command("redis-cli", append([]string{"-p", strconv.Itoa(port), "--no-auth-warning", "-a", password}, args...)...).Output()
	return string(out)
}

func (ss *sentinelSet) primary() string {
	for _, p := range ss.sentinels {
		f := strings.Fields(ss.cli(p, sentinelPassword, "sentinel", "get-master-addr-by-name", masterName))
		if len(f) == 2 {
			return f[0] + ":" + f[1]
		}
	}
	return ""
}

func portOf(addr string) int {
	_, p, _ := strings.Cut(addr, ":")
	n, _ := strconv.Atoi(p)
	return n
}

func (ss *sentinelSet) bringBack(addr string) {
	port := portOf(addr)
	ss.startNode(port, 0)
	waitUntil(ss.t, 60*time.Second, "the old primary to rejoin as a replica", func() bool {
		info := ss.cli(port, redisPassword, "info", "replication")
		return strings.Contains(info, "role:slave") && strings.Contains(info, "master_link_status:up")
	})
	if out := ss.cli(port, redisPassword, "set", "probe", "1"); !strings.Contains(out, "READONLY") {
		ss.t.Errorf("the old primary takes writes: %q", out)
	}
	waitUntil(ss.t, 30*time.Second, "every sentinel to see the rejoined replica", func() bool {
		for _, p := range ss.sentinels {
			if !strings.Contains(ss.cli(p, sentinelPassword, "sentinel", "master", masterName), "num-slaves\n1") {
				return false
			}
		}
		return true
	})
}

func (ss *sentinelSet) url() string {
	var addrs []string
	for _, p := range ss.sentinels {
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", p))
	}
	return fmt.Sprintf("redis-sentinel://:%s@%s?master=%s", redisPassword, strings.Join(addrs, ","), masterName)
}

// call is one HTTP request that never fails the test: its status (0 when
// it could not be sent or timed out) and body.
func call(method, url, body string, timeout time.Duration) (int, []byte) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return 0, nil
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: timeout}).Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// TestSentinelFailover: under load (8 clients of sync research runs, 200
// queued async runs, 2 running scripts), SIGKILL the primary. A replica
// is elected; sync runs succeed again soon after; every async run
// accepted well before the kill succeeds; the scripts keep running (same
// pids, never two copies) and stop; a stop sent during the failover
// lands; the old primary comes back as a replica and nothing writes to it.
// PYRUNNER_FAILOVERS (default 1) repeats the kill, each time of the
// current primary, and logs the unavailability of each.
func TestSentinelFailover(t *testing.T) {
	ss := startSentinelSet(t)
	root := writeScripts(t)
	s := startStack(t, stackOpts{scripts: root, redisURL: ss.url(),
		env: map[string]string{"PYRUNNER_REDIS_SENTINEL_PASSWORD": sentinelPassword}})
	var h struct {
		Redis struct {
			Status, Primary  string
			MasterName       string `json:"master_name"`
			SentinelsReached int    `json:"sentinels_reached"`
		} `json:"redis"`
	}
	readHealth := func() {
		if st, b := call("GET", s.base+"/health", "", 10*time.Second); st == 200 {
			_ = json.Unmarshal(b, &h)
		}
	}
	readHealth()
	if h.Redis.Primary != ss.primary() || h.Redis.MasterName != masterName || h.Redis.SentinelsReached != 3 {
		t.Fatalf("/health redis: %+v", h.Redis)
	}
	testFailovers(t, s, ss, root)
	t.Run("ManualFailover", func(t *testing.T) { testManualFailover(t, s, ss) })
	t.Run("AcceptedMeansReplicated", func(t *testing.T) { testAcceptedMeansReplicated(t, s, ss) })
}

// testAcceptedMeansReplicated: with the replica frozen (SIGSTOP: still
// "online" to the primary, acknowledging nothing), a submission is not
// accepted, since the primary's death would lose it: 503, and nothing of
// it stays behind. Thawed, the replica acknowledges and runs are accepted.
func testAcceptedMeansReplicated(t *testing.T, s *stack, ss *sentinelSet) {
	primary := portOf(ss.primary())
	replica := 0
	for _, p := range ss.nodes {
		if p != primary {
			replica = p
		}
	}
	waitUntil(t, 60*time.Second, "the replica to be online", func() bool {
		return strings.Contains(ss.cli(primary, redisPassword, "info", "replication"), "state=online")
	})
	runs := func() string { return strings.TrimSpace(ss.cli(primary, redisPassword, "zcard", "pyrunner:runs")) }
	body := `{"exchange":"binance","symbol":"BTCUSDT","binSize":"1h","start":1735689600,"end":1735776000,"code":"result = 1"}`
	before := runs()
	ss.procs[replica].Process.Signal(syscall.SIGSTOP)
	began := time.Now()
	st, b := call("POST", s.base+"/v1/research/run?wait=false", body, 30*time.Second)
	took := time.Since(began)
	ss.procs[replica].Process.Signal(syscall.SIGCONT)
	if st != 503 || !strings.Contains(string(b), "not accepted") {
		t.Errorf("a submission while the replica acknowledges nothing: %d %s", st, b)
	}
	if after := runs(); after != before {
		t.Errorf("runs recorded: %s before, %s after the refused submission", before, after)
	}
	t.Logf("refused after %s with the replica frozen", took.Round(10*time.Millisecond))
	waitUntil(t, 30*time.Second, "a submission to be accepted with the replica thawed", func() bool {
		st, _ := call("POST", s.base+"/v1/research/run?wait=false", body, 30*time.Second)
		return st == 202
	})
}

// testManualFailover: SENTINEL FAILOVER makes the replica primary while
// the old primary stays up (demoted: its subscribers hear nothing more).
// Sync runs still get their answers (the API's waiters moved) and a stop
// still reaches its worker (the workers' subscriptions moved).
func testManualFailover(t *testing.T, s *stack, ss *sentinelSet) {
	s.t = t
	old := ss.primary()
	_, polite := s.startScript(`{"script":"polite.py"}`)
	if polite.Status != "running" || polite.PID == nil {
		t.Fatalf("polite.py: %+v", polite)
	}
	if out := ss.cli(ss.sentinels[0], sentinelPassword, "sentinel", "failover", masterName); !strings.Contains(out, "OK") {
		t.Fatalf("SENTINEL FAILOVER: %q", out)
	}
	waitUntil(t, 60*time.Second, "the manual failover", func() bool {
		p := ss.primary()
		return p != "" && p != old && strings.Contains(ss.cli(portOf(old), redisPassword, "info", "replication"), "role:slave")
	})
	seedRun := `{"exchange":"binance","symbol":"BTCUSDT","binSize":"1h","start":1735689600,"end":1735776000,"code":"result = len(df)"}`
	waitUntil(t, 30*time.Second, "a sync run answered through the new primary", func() bool {
		st, b := call("POST", s.base+"/v1/research/run", seedRun, 30*time.Second)
		return st == 200 && strings.Contains(string(b), `"ok":true`)
	})
	began := time.Now()
	var r runRec
	waitUntil(t, 30*time.Second, "the stop to be taken", func() bool {
		st, b := call("POST", s.base+"/v1/runs/"+polite.RunID+"/stop", "", 30*time.Second)
		return st == 200 && json.Unmarshal(b, &r) == nil
	})
	waitUntil(t, 10*time.Second, "polite.py to end after its stop", func() bool { return !alive(*polite.PID) })
	if r = s.waitStatus(polite.RunID, 10*time.Second, func(r runRec) bool { return r.Ended() }); r.Status != "stopped" {
		t.Errorf("polite.py after the stop: %+v", r)
	}
	t.Logf("after a manual failover (old primary up and demoted): sync runs answer, a stop landed in %s",
		time.Since(began).Round(10*time.Millisecond))
}

// testFailovers runs failoverOnce PYRUNNER_FAILOVERS times (default 1)
// with two scripts running throughout (ticker.py, and stubborn.py, which
// ignores SIGTERM); the scripts are in root.
func testFailovers(t *testing.T, s *stack, ha redisHA, root string) {
	kept := []string{"ticker.py", "stubborn.py"}
	scan := scanCopies(t, filepath.Join(root, "ticker.py"), filepath.Join(root, "stubborn.py"), filepath.Join(root, "polite.py"))
	var running []runRec
	for _, name := range kept {
		_, r := s.startScript(`{"script":"` + name + `"}`)
		if r.Status != "running" || r.PID == nil {
			t.Fatalf("%s: %+v", name, r)
		}
		running = append(running, r)
	}

	failovers := 1
	if n, err := strconv.Atoi(os.Getenv("PYRUNNER_FAILOVERS")); err == nil && n > 0 {
		failovers = n
	}
	for i := 0; i < failovers; i++ {
		writes, answers := failoverOnce(t, s, ha, scan, filepath.Join(root, "polite.py"))
		t.Logf("failover %d: runs could not be submitted for %s (first refused to first accepted); "+
			"the longest gap between sync answers %s", i+1,
			writes.Round(10*time.Millisecond), answers.Round(10*time.Millisecond))
	}

	// Both ran through every failover: same pid, one copy, and they stop.
	for i, name := range kept {
		was := running[i]
		var r runRec
		if st := s.do("GET", "/v1/runs/"+was.RunID, "", &r); st != 200 || r.Status != "running" || r.PID == nil || *r.PID != *was.PID {
			t.Errorf("%s after the failovers: %d %s %q on %s (pid was %d)", name, st, r.Status, deref(r.Error), deref(r.Worker), *was.PID)
		}
		if st := s.do("POST", "/v1/runs/"+was.RunID+"/stop", "", &r); st != 200 {
			t.Errorf("stop %s: %d %+v", name, st, r)
		}
		if r = s.waitStatus(was.RunID, time.Minute, func(r runRec) bool { return r.Ended() }); r.Status != "stopped" {
			t.Errorf("%s after its stop: %s %q", name, r.Status, deref(r.Error))
		}
		if n := scan.most(filepath.Join(root, name)); n != 1 {
			t.Errorf("%s had %d copies at most", name, n)
		}
	}
}

// failoverOnce kills the current primary under load, checks what the
// test's comment says, brings the old primary back as a replica, and
// returns how long runs could not be submitted (from the first refused
// to the next accepted) and the longest gap between two successful sync
// answers.
func failoverOnce(t *testing.T, s *stack, ha redisHA, scan *copyScan, polite string) (writes, answers time.Duration) {
	old := ha.primary()
	seedRun := `{"exchange":"binance","symbol":"BTCUSDT","binSize":"1h","start":1735689600,"end":1735776000,"code":"result = len(df)"}`
	_, stopped := s.startScript(`{"script":"polite.py"}`)
	if stopped.Status != "running" {
		t.Fatalf("polite.py: %+v", stopped)
	}

	// 200 async runs, accepted now (well before the kill).
	var asyncIDs []string
	for i := 0; i < 200; i++ {
		st, b := call("POST", s.base+"/v1/research/run?wait=false", `{"exchange":"binance","symbol":"BTCUSDT","binSize":"1h",`+
			`"start":1735689600,"end":1735776000,"code":"result = 1"}`, 30*time.Second)
		var a struct{ ID string }
		if st != 202 || json.Unmarshal(b, &a) != nil {
			t.Fatalf("async run %d: %d %s", i, st, b)
		}
		asyncIDs = append(asyncIDs, a.ID)
	}
	accepted := time.Now()

	// 8 clients of sync runs, through the failover.
	var (
		stop      sync.WaitGroup
		quit      atomic.Bool
		mu        sync.Mutex
		successes []time.Time
		hung      int
	)
	defer func() { quit.Store(true); stop.Wait() }() // also when a check below ends the test
	for c := 0; c < 8; c++ {
		stop.Add(1)
		go func() {
			defer stop.Done()
			for !quit.Load() {
				st, b := call("POST", s.base+"/v1/research/run", seedRun, 90*time.Second)
				var res struct {
					OK     bool
					Result int
				}
				ok := st == 200 && json.Unmarshal(b, &res) == nil && res.OK && res.Result == 24
				mu.Lock()
				switch {
				case st == 0:
					hung++
					t.Errorf("a sync run got no answer in 90 s: %s", b)
				case !ok && st != 503 && st != 202:
					t.Errorf("a sync run answered %d: %s", st, b)
				}
				if ok {
					successes = append(successes, time.Now())
				}
				mu.Unlock()
			}
		}()
	}

	// A prober submits a run every 250 ms: the write path's availability.
	var refused, reaccepted time.Time
	stop.Add(1)
	go func() {
		defer stop.Done()
		for !quit.Load() {
			began := time.Now()
			st, _ := call("POST", s.base+"/v1/research/run?wait=false", seedRun, 30*time.Second)
			mu.Lock()
			if st != 202 && refused.IsZero() {
				refused = began
			}
			if st == 202 && !refused.IsZero() && reaccepted.IsZero() {
				reaccepted = time.Now()
			}
			mu.Unlock()
			time.Sleep(250 * time.Millisecond)
		}
	}()

	// Every async run was accepted more than 1 s before the kill, and some
	// are still queued then (at most 40, so that what a new run waits
	// behind after the failover is the failover, not the backlog).
	for time.Since(accepted) < 1100*time.Millisecond || pendingResearch(s) > 40 {
		time.Sleep(50 * time.Millisecond)
	}
	killed := time.Now()
	ha.kill(old)
	// A stop sent during the failover (retried while Redis is away).
	stopDone := make(chan time.Time, 1)
	go func() {
		for {
			if st, _ := call("POST", s.base+"/v1/runs/"+stopped.RunID+"/stop", "", 30*time.Second); st == 200 {
				stopDone <- time.Now()
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
	var elected time.Time
	waitUntil(t, 60*time.Second, "the sentinels to elect a new primary", func() bool {
		if p := ha.primary(); p != "" && p != old {
			elected = time.Now()
			return true
		}
		return false
	})
	t.Logf("primary %s killed; new primary elected after %s", old, elected.Sub(killed).Round(10*time.Millisecond))

	// Within 15 s of the election, new sync runs succeed.
	waitUntil(t, 15*time.Second, "a sync run to succeed after the election", func() bool {
		st, b := call("POST", s.base+"/v1/research/run", seedRun, 15*time.Second)
		return st == 200 && strings.Contains(string(b), `"ok":true`)
	})
	// The stop landed within 10 s of the election: the script is gone.
	select {
	case at := <-stopDone:
		if at.Sub(elected) > 10*time.Second {
			t.Errorf("the stop sent during the failover landed %s after the election", at.Sub(elected))
		}
	case <-time.After(time.Until(elected.Add(10 * time.Second))):
		t.Errorf("the stop sent during the failover did not land within 10 s of the election")
	}
	// Its process is gone (seen from the host, which also sees a
	// container's processes; a record's pid is the container's own).
	waitUntil(t, 5*time.Second, "polite.py's process to be gone after its stop", func() bool { return len(scan.live(polite)) == 0 })

	// Every async run accepted before the kill ends succeeded.
	for _, id := range asyncIDs {
		var r result
		waitUntil(t, 2*time.Minute, "async run "+id+" to end", func() bool {
			st, b := call("GET", s.base+"/v1/research/runs/"+id+"?wait=10", "", 30*time.Second)
			return st == 200 && json.Unmarshal(b, &r) == nil
		})
		if r.Status != "succeeded" {
			t.Errorf("async run %s accepted %s before the kill ended %s: %s", id, killed.Sub(accepted), r.Status, r.errText())
		}
	}
	quit.Store(true)
	stop.Wait()
	mu.Lock()
	defer mu.Unlock()

	// The old primary comes back: as a replica of the new one, written to
	// by no one but replication.
	ha.bringBack(old)
	st, b := call("POST", s.base+"/v1/research/run", seedRun, 30*time.Second)
	if st != 200 || !strings.Contains(string(b), `"ok":true`) {
		t.Errorf("a run after the old primary came back: %d %s", st, b)
	}
	if hung > 0 {
		t.Errorf("%d sync runs hung past their timeout", hung)
	}
	last := killed
	for _, at := range successes {
		if at.After(killed) {
			answers = max(answers, at.Sub(last))
			last = at
		}
	}
	if !refused.IsZero() && !reaccepted.IsZero() {
		writes = reaccepted.Sub(refused)
	}
	return writes, answers
}

// pendingResearch is the research queue's pending count (/health).
func pendingResearch(s *stack) int {
	var h struct {
		Queues map[string]struct{ Pending int } `json:"queues"`
	}
	if st, b := call("GET", s.base+"/health", "", 10*time.Second); st != 200 || json.Unmarshal(b, &h) != nil {
		return -1
	}
	return h.Queues["research"].Pending
}
