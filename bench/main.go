// Command bench measures pyrunner on this machine with the real binaries
// (a private redis-server, bin/pyrunner-api, bin/pyrunner-worker) and
// prints a Markdown table, also written to bench/RESULTS.md:
//
//	(a) p50/p99 latency of a trivial synchronous research call, warm and cold
//	(b) sustained trivial runs/s with one and with two workers
//	(c) time to deliver a 1M-row frame to user code, next to pandas.read_sql
//	(d) worker RSS (worker + zygote + children) at rest and under load
//	(f) a script's start until its first output is readable (POST /v1/runs,
//	    then the SSE follow), next to a plain python3 -u subprocess from Go
//	(e) the cost of isolation: warm trivial p50 with the full sandbox next
//	    to PYRUNNER_SANDBOX=none, two stacks called in turn
//	(g) the warm trivial call next to, each called in turn, the fork floor of a warm interpreter,
//	    a warm Jupyter kernel and the original python-runner's per-request
//	    interpreter (bench/baselines.go)
//	(h) 1M rows from MariaDB, next to pandas.read_sql through pymysql
//	(i) a backlog of 5 000 queued runs drained, next to the sustained rate
//	(j) sustained trivial runs/s with Redis as shipped (append-only file,
//	    everysec) next to Redis keeping nothing, two stacks in turn
//	(k) the whole machine's CPU per isolated trivial run (clients
//	    excluded) next to the fork floor's CPU per call, and by process
//	(l) the first research run's queueMs on a stack just started
//	(m) one run that loads 20 markets (load_klines), next to 20 runs
//	    that load one each
//	(n) 10M rows from SQLite and MariaDB: first call next to the 1M
//	    first call, the worker's memory during it, the cached repeat
//
// BENCH_ONLY=gh (letters) runs only those parts and leaves RESULTS.md.
// Run it with `make bench`.
package main

import (
	"bufio"
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
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ztrade/pyrunner/pkg/demodata"
)

const (
	t0      = 1735689600
	bigRows = 1_000_000
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type stack struct {
	base    string
	procs   []*exec.Cmd
	workers []*exec.Cmd
	shmem0  int64 // the machine's shared memory before the workers started
}

func (s *stack) stop() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		s.procs[i].Process.Signal(syscall.SIGTERM)
	}
	for _, p := range s.procs {
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			p.Process.Kill()
		}
	}
}

func freePort() int {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// durableRedis is Redis as pyrunner runs it (docker/redis.conf);
// volatileRedis keeps nothing on disk (for line (j) only).
var (
	durableRedis  = []string{"docker/redis.conf"}
	volatileRedis = []string{"docker/redis.conf", "--appendonly", "no"}
)

// start starts a stack whose Redis runs as pyrunner ships it.
func start(dir, db string, workers int, env ...string) (*stack, error) {
	return startWith(dir, db, workers, durableRedis, env...)
}

// startWith starts a stack with redis-server started with redisConf
// (a config file and directives), its files in the stack's own folder.
func startWith(dir, db string, workers int, redisConf []string, env ...string) (*stack, error) {
	s := &stack{}
	rport, aport := freePort(), freePort()
	rdir := filepath.Join(dir, fmt.Sprintf("redis-%d", rport))
	if err := os.MkdirAll(rdir, 0o755); err != nil {
		return nil, err
	}
	redis := exec.Command("redis-server", append(append([]string{}, redisConf...),
		"--port", strconv.Itoa(rport), "--bind", "127.0.0.1", "--dir", rdir)...)
	if err := redis.Start(); err != nil {
		return nil, err
	}
	s.procs = append(s.procs, redis)
	time.Sleep(200 * time.Millisecond)
	s.base = fmt.Sprintf("http://127.0.0.1:%d", aport)
	work := filepath.Join(dir, fmt.Sprintf("work-%d", aport))
	common := append(os.Environ(),
		fmt.Sprintf("PYRUNNER_REDIS_URL=redis://127.0.0.1:%d/0", rport),
		fmt.Sprintf("PYRUNNER_LISTEN=127.0.0.1:%d", aport),
		"PYRUNNER_READONLY_TYPE=sqlite", "PYRUNNER_READONLY_URI="+db,
		"PYRUNNER_WORK_DIR="+work, "SCRIPT_STATE_DIR="+filepath.Join(dir, fmt.Sprintf("state-%d", aport)), "PYRUNNER_MAX_ROWS=2000000", "PYRUNNER_LOG_LEVEL="+envOr("BENCH_LOG_LEVEL", "warn"),
		"PYRUNNER_ZTRADE_CONFIG=/nonexistent")
	common = append(common, env...)
	logf, _ := os.Create(filepath.Join(dir, fmt.Sprintf("stack-%d.log", aport)))
	s.shmem0 = meminfo("Shmem:")
	for i := 0; i <= workers; i++ {
		bin := "bin/pyrunner-worker"
		if i == 0 {
			bin = "bin/pyrunner-api"
		}
		c := exec.Command(bin)
		c.Env, c.Stdout, c.Stderr = common, logf, logf
		if err := c.Start(); err != nil {
			s.stop()
			return nil, err
		}
		s.procs = append(s.procs, c)
		if i > 0 {
			s.workers = append(s.workers, c)
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		var h struct {
			Workers []any `json:"workers"`
		}
		if resp, err := http.Get(s.base + "/health"); err == nil {
			err = json.NewDecoder(resp.Body).Decode(&h)
			resp.Body.Close()
			if err != nil {
				h.Workers = nil
			}
			if len(h.Workers) == workers {
				return s, nil
			}
		}
		if time.Now().After(deadline) {
			s.stop()
			b, _ := os.ReadFile(logf.Name())
			if len(b) > 3000 {
				b = b[len(b)-3000:]
			}
			return nil, fmt.Errorf("stack did not come up; the end of its log:\n%s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var client = &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

type result struct {
	OK     bool            `json:"ok"`
	Error  *string         `json:"error"`
	Result json.RawMessage `json:"result"`
	Meta   struct {
		Rows   int    `json:"rows"`
		LoadMs int64  `json:"loadMs"`
		Cache  string `json:"klineCache"`
		ExecMs int64  `json:"execMs"`
		Queue  int64  `json:"queueMs"`
	} `json:"meta"`
}

func (s *stack) research(body string) (*result, time.Duration, error) {
	t := time.Now()
	resp, err := client.Post(s.base+"/v1/research/run", "application/json", strings.NewReader(body))
	if err != nil {
		return nil, 0, err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	d := time.Since(t)
	var r result
	if err := json.Unmarshal(b, &r); err != nil || !r.OK {
		return &r, d, fmt.Errorf("run failed: %s", b)
	}
	return &r, d, nil
}

// bestOf calls body n times and returns the fastest call.
func (s *stack) bestOf(n int, body string) (*result, time.Duration, error) {
	var best time.Duration
	var bestR *result
	for i := 0; i < n; i++ {
		r, d, err := s.research(body)
		if err != nil {
			return nil, 0, err
		}
		if best == 0 || d < best {
			best, bestR = d, r
		}
	}
	return bestR, best, nil
}

// bigBody asks for the 1M-row table.
var bigBody = fmt.Sprintf(`{"exchange":"bench","symbol":"BIG","binSize":"1m","start":0,"end":%d,"limit":%d,"code":"result = [len(df), float(df.close.sum())]"}`, t0+bigRows*60, bigRows)

// trivial is a 1 000-row frame and result = len(df).
var trivial = fmt.Sprintf(`{"exchange":"binance","symbol":"BTCUSDT","binSize":"1m","start":%d,"end":%d,"code":"result = len(df)"}`, t0, t0+999*60)

func percentile(ds []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(float64(len(s)-1)*p)]
}

func latency(s *stack, n int) (p50, p99 time.Duration, err error) {
	for i := 0; i < 5; i++ { // warm up connections and caches
		if _, _, err := s.research(trivial); err != nil {
			return 0, 0, err
		}
	}
	var ds []time.Duration
	for i := 0; i < n; i++ {
		_, d, err := s.research(trivial)
		if err != nil {
			return 0, 0, err
		}
		ds = append(ds, d)
	}
	return percentile(ds, 0.5), percentile(ds, 0.99), nil
}

// interleaved calls each stack in turn, n times each, and returns each
// one's p50.
func interleaved(n int, stacks ...*stack) ([]time.Duration, error) {
	ds := make([][]time.Duration, len(stacks))
	for i := -5; i < n; i++ { // 5 to warm up
		for j, s := range stacks {
			_, d, err := s.research(trivial)
			if err != nil {
				return nil, err
			}
			if i >= 0 {
				ds[j] = append(ds[j], d)
			}
		}
	}
	p50s := make([]time.Duration, len(stacks))
	for j := range stacks {
		p50s[j] = percentile(ds[j], 0.5)
	}
	return p50s, nil
}

// scriptFirstOutput starts script and returns how long until its first
// line of stdout arrives on the follow stream.
func (s *stack) scriptFirstOutput(script string) (time.Duration, error) {
	t := time.Now()
	resp, err := client.Post(s.base+"/v1/runs", "application/json", strings.NewReader(`{"script":"`+script+`","duplicate":true}`))
	if err != nil {
		return 0, err
	}
	var r struct {
		RunID string `json:"run_id"`
	}
	err = json.NewDecoder(resp.Body).Decode(&r)
	resp.Body.Close()
	if err != nil || r.RunID == "" {
		return 0, fmt.Errorf("script start: status %d", resp.StatusCode)
	}
	f, err := client.Get(s.base + "/v1/runs/" + r.RunID + "/logs?stream=stdout&follow=true")
	if err != nil {
		return 0, err
	}
	defer f.Body.Close()
	sc := bufio.NewScanner(f.Body)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "data: hello") {
			return time.Since(t), nil
		}
	}
	return 0, fmt.Errorf("script %s: no output on the follow stream", r.RunID)
}

// bareFirstOutput runs python -u script as a plain subprocess and returns
// how long until its first line arrives.
func bareFirstOutput(python, script string) (time.Duration, error) {
	t := time.Now()
	cmd := exec.Command(python, "-u", script)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	d := time.Since(t)
	cmd.Wait()
	if !strings.HasPrefix(line, "hello") {
		return 0, fmt.Errorf("bare python printed %q: %v", line, err)
	}
	return d, nil
}

func pythonPath() string {
	if p, err := exec.LookPath(os.Getenv("PYRUNNER_PYTHON")); err == nil {
		return p
	}
	return "/usr/bin/python3"
}

// throughput runs trivial calls from clients goroutines for d and
// samples the workers' RSS meanwhile.
func throughput(s *stack, clients int, d time.Duration) (perSec float64, peakRSS int64, err error) {
	var n atomic.Int64
	var firstErr atomic.Value
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if _, _, err := s.research(trivial); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				n.Add(1)
			}
		}()
	}
	var peak int64
	go func() {
		for ctx.Err() == nil {
			if r := s.rss(); r > peak {
				peak = r
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	wg.Wait()
	if e := firstErr.Load(); e != nil {
		return 0, 0, e.(error)
	}
	return float64(n.Load()) / time.Since(start).Seconds(), peak, nil
}

// rss sums the proportional set size (Pss, bytes) of the workers and all
// their descendants: pages the zygote's children share with it are counted
// once, not once a process (as VmRSS would).
func (s *stack) rss() int64 {
	var total int64
	s.walk(func(pid int) { total += smaps(pid)["Pss:"] })
	return total
}

// walk calls visit for each worker process and all its descendants.
func (s *stack) walk(visit func(pid int)) {
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
		ppid, _ := strconv.Atoi(f[1])
		children[ppid] = append(children[ppid], pid)
	}
	var walk func(int)
	walk = func(pid int) {
		visit(pid)
		for _, c := range children[pid] {
			walk(c)
		}
	}
	for _, w := range s.workers {
		walk(w.Process.Pid)
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

func run() error {
	dir, err := os.MkdirTemp("", "pyrunner-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o711); err != nil {
		return err
	}
	db := filepath.Join(dir, "exchange.db")
	fmt.Fprintln(os.Stderr, "bench: writing demo data and a 1M-row table…")
	w, err := demodata.OpenWriter("sqlite", db)
	if err != nil {
		return err
	}
	ctx := context.Background()
	if err := w.WriteDemo(ctx, t0, 2); err != nil {
		return err
	}
	if err := w.CreateTable(ctx, "bench_BIG_1m", true); err != nil {
		return err
	}
	if err := w.Insert(ctx, "bench_BIG_1m", demodata.Generate(demodata.DemoMarkets[0], t0, bigRows, 7), true); err != nil {
		return err
	}
	w.Close()

	var rows [][2]string
	add := func(k, v string) {
		rows = append(rows, [2]string{k, v})
		fmt.Fprintf(os.Stderr, "bench: %s: %s\n", k, v)
	}

	only := os.Getenv("BENCH_ONLY") // e.g. "c" while working on one part
	py := pythonPath()
	// (l) the first run on a stack just started, as soon as /health lists
	// its worker, SQLite and MariaDB (bench/first.go)
	if only == "" || strings.Contains(only, "l") {
		if err := firstRuns(ctx, dir, db, add); err != nil {
			return err
		}
	}

	// (a) latency, warm and cold
	lat := map[string][2]time.Duration{}
	for _, mode := range []string{"warm", "cold"} {
		if only != "" && !strings.Contains(only, "a") {
			break
		}
		s, err := start(dir, db, 1, "PYRUNNER_EXECUTOR="+mode)
		if err != nil {
			return err
		}
		n := 300
		if mode == "cold" {
			n = 50
		}
		p50, p99, err := latency(s, n)
		s.stop()
		if err != nil {
			return err
		}
		lat[mode] = [2]time.Duration{p50, p99}
		add(fmt.Sprintf("(a) trivial sync call, %s: p50 / p99 (n=%d)", mode, n), ms(p50)+" / "+ms(p99))
	}
	if len(lat) == 2 {
		add("(a) cold p50 / warm p50", fmt.Sprintf("%.1f×", float64(lat["cold"][0])/float64(lat["warm"][0])))
	}

	// (f) script start → output readable, next to a bare subprocess
	if only == "" || strings.Contains(only, "f") {
		scripts := filepath.Join(dir, "scripts")
		hello := filepath.Join(scripts, "hello.py")
		if err := os.MkdirAll(scripts, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(hello, []byte("print('hello', flush=True)\n"), 0o644); err != nil {
			return err
		}
		s, err := start(dir, db, 1, "SCRIPT_SCRIPTS_PATH="+scripts)
		if err != nil {
			return err
		}
		var viaAPI, bare []time.Duration
		for i := -3; i < 40; i++ { // 3 to warm up
			d, err := s.scriptFirstOutput("hello.py")
			if err != nil {
				s.stop()
				return err
			}
			b, err := bareFirstOutput(py, hello)
			if err != nil {
				s.stop()
				return err
			}
			if i >= 0 {
				viaAPI, bare = append(viaAPI, d), append(bare, b)
			}
		}
		s.stop()
		add("(f) script start → first output readable over the API (POST /v1/runs + SSE follow): p50 / p99 (n=40)", ms(percentile(viaAPI, 0.5))+" / "+ms(percentile(viaAPI, 0.99)))
		add("(f) the same for a plain `python3 -u hello.py` subprocess from Go, interleaved: p50 / p99", ms(percentile(bare, 0.5))+" / "+ms(percentile(bare, 0.99)))
	}

	// (e) isolation cost, interleaved so both see the same machine load
	if only == "" || strings.Contains(only, "e") {
		iso, err := start(dir, db, 1, "PYRUNNER_EXECUTOR=warm", "PYRUNNER_SANDBOX=bwrap")
		if err != nil {
			return err
		}
		bare, err := start(dir, db, 1, "PYRUNNER_EXECUTOR=warm", "PYRUNNER_SANDBOX=none")
		if err != nil {
			iso.stop()
			return err
		}
		p50s, err := interleaved(200, iso, bare)
		iso.stop()
		bare.stop()
		if err != nil {
			return err
		}
		add("(e) warm trivial p50, full isolation (bwrap + per-run namespaces + seccomp) / PYRUNNER_SANDBOX=none, interleaved (n=200)",
			fmt.Sprintf("%s / %s (isolation costs %+.0f%%)", ms(p50s[0]), ms(p50s[1]), 100*(float64(p50s[0])/float64(p50s[1])-1)))
	}

	// (b) throughput and (d) RSS
	for _, workers := range []int{1, 2} {
		if only != "" && !strings.Contains(only, "b") {
			break
		}
		s, err := start(dir, db, workers, "PYRUNNER_EXECUTOR=warm")
		if err != nil {
			return err
		}
		time.Sleep(time.Second)
		rest := s.rss()
		perSec, peak, err := throughput(s, 8, 10*time.Second)
		s.stop()
		if err != nil {
			return err
		}
		add(fmt.Sprintf("(b) sustained trivial runs/s, %d worker(s), 8 clients", workers), fmt.Sprintf("%.0f runs/s", perSec))
		add(fmt.Sprintf("(d) memory (PSS) of %d worker(s) incl. zygote and children: at rest / peak under load", workers), mib(rest)+" / "+mib(peak))
	}

	// (c) 1M-row frame to user code vs pandas.read_sql
	s, err := start(dir, db, 1, "PYRUNNER_EXECUTOR=warm")
	if err != nil {
		return err
	}
	body := bigBody
	// The first call reads the database; the repeats find the closed
	// history in the worker's K-line cache.
	firstR, firstD, err := s.research(body)
	if err != nil {
		s.stop()
		return err
	}
	bestR, best, err := s.bestOf(3, body)
	s.stop()
	if err != nil {
		return err
	}
	pandas, err := readSQL(py, `import sqlite3; con = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)`, "?", db)
	if err != nil {
		return err
	}
	delivered := time.Duration(firstR.Meta.LoadMs+firstR.Meta.ExecMs) * time.Millisecond
	add("(c) 1M-row frame to user code, first call (load + hand-off + df, meta loadMs+execMs)", ms(delivered)+
		fmt.Sprintf(" (load %d ms, hand-off+df+code %d ms; whole call %s)", firstR.Meta.LoadMs, firstR.Meta.ExecMs, ms(firstD)))
	add("(c) the same call repeated (closed history from the K-line cache): whole call, best of 3", ms(best)+
		fmt.Sprintf(" (load %d ms, cache %s; %.1f× faster than the first)", bestR.Meta.LoadMs, bestR.Meta.Cache, float64(firstD)/float64(best)))
	add("(c) pandas.read_sql of the same rows, same SQLite, same Python", ms(pandas))
	add("(c) read_sql / pyrunner", fmt.Sprintf("%.1f×", float64(pandas)/float64(delivered)))

	// (g) the floor and the alternatives: a warm interpreter's fork, a warm
	// Jupyter kernel and python-runner's fresh interpreter, called in turn
	// with pyrunner's warm trivial call (1 000 rows) so all see one machine.
	if only == "" || strings.Contains(only, "g") {
		s, err := start(dir, db, 1, "PYRUNNER_EXECUTOR=warm")
		if err != nil {
			return err
		}
		k, err := startStepper("jupyter kernel (python3-ipykernel and python3-jupyter-client installed?)", py, kernelScript, db, thousandRows)
		if err != nil {
			s.stop()
			return err
		}
		fl, err := startStepper("fork floor", py, forkFloorScript)
		if err != nil {
			k.close()
			s.stop()
			return err
		}
		var ours, jup, floors, orig []time.Duration
		for i := -10; i < 200; i++ {
			_, d, err := s.research(trivial)
			var j, f time.Duration
			if err == nil {
				j, err = k.call()
			}
			if err == nil {
				f, err = fl.call()
			}
			if err == nil && i >= 0 {
				ours, jup, floors = append(ours, d), append(jup, j), append(floors, f)
			}
			if err == nil && i >= 0 && i%10 == 0 {
				var o time.Duration
				if o, err = originalStyle(py, db); err == nil {
					orig = append(orig, o)
				}
			}
			if err != nil {
				fl.close()
				k.close()
				s.stop()
				return err
			}
		}
		fl.close()
		k.close()
		s.stop()
		floor := percentile(floors, 0.5)
		p50, j50, o50 := percentile(ours, 0.5), percentile(jup, 0.5), percentile(orig, 0.5)
		p90 := percentile(ours, 0.9)
		add("(g) warm trivial call (1 000 rows, result = len(df)), over HTTP: p50 / p90 (n=200)",
			fmt.Sprintf("%s / %s (p90 / p50: %.2f)", ms(p50), ms(p90), float64(p90)/float64(p50)))
		add("(g) fork floor: fork of the warm interpreter + a 1 000-row DataFrame in the child, same Python, interleaved: p50 (n=200)",
			fmt.Sprintf("%s (pyrunner's call / fork floor: %.2f)", ms(floor), float64(p50)/float64(floor)))
		add("(g) warm Jupyter kernel (jupyter_client → ipykernel) reloading the 1 000 rows from SQLite and running the snippet, interleaved: p50",
			fmt.Sprintf("%s (pyrunner / Jupyter: %.2f)", ms(j50), float64(p50)/float64(j50)))
		add("(g) original-style request (fresh /usr/bin/python3, import pandas, pandas.read_sql of the 1 000 rows), interleaved: p50 (n=20)",
			fmt.Sprintf("%s (%.0f× pyrunner's warm call)", ms(o50), float64(o50)/float64(p50)))
	}

	// (k) CPU per isolated trivial run, whole machine, next to the fork
	// floor's CPU per call (measured before and after, averaged).
	if only == "" || strings.Contains(only, "k") {
		s, err := start(dir, db, 1)
		if err != nil {
			return err
		}
		floorA, err := forkFloorCPU(py, 600)
		var per time.Duration
		var rps float64
		var parts map[string]time.Duration
		if err == nil {
			per, rps, parts, err = cpuPerRun(s, 8, 600)
		}
		var floorB time.Duration
		if err == nil {
			floorB, err = forkFloorCPU(py, 600)
		}
		s.stop()
		if err != nil {
			return err
		}
		floor := (floorA + floorB) / 2
		add("(k) CPU per isolated trivial run, whole machine, clients excluded (n=600, 8 clients, 1 worker): per run / fork floor's CPU per call",
			fmt.Sprintf("%s / %s (%.2f×; %.0f runs/s)", ms(per), ms(floor), float64(per)/float64(floor), rps))
		add("(k) where a run's CPU goes, per run (the rest: kernel work outside these processes, other processes)", cpuLine(parts))
	}

	// (h) the MySQL path: 1M rows through the read-only connection, next to
	// pandas.read_sql (pymysql) on the same MariaDB.
	if only == "" || strings.Contains(only, "h") {
		dsn, pyArgs, cleanup, err := mysqlBig(ctx)
		if err != nil {
			return fmt.Errorf("mysql 1M rows (set PYRUNNER_BENCH_MYSQL to a root DSN): %w", err)
		}
		s, err := start(dir, db, 1, "PYRUNNER_EXECUTOR=warm", "PYRUNNER_READONLY_TYPE=mysql", "PYRUNNER_READONLY_URI="+dsn)
		if err != nil {
			cleanup()
			return err
		}
		first, firstD, err := s.research(bigBody)
		var best time.Duration
		for i := 0; i < 3 && err == nil; i++ {
			var d time.Duration
			if _, d, err = s.research(bigBody); best == 0 || d < best {
				best = d
			}
		}
		s.stop()
		var pandas time.Duration
		if err == nil {
			pandas, err = readSQL(py, "import pymysql; con = pymysql.connect(host=sys.argv[1], user=sys.argv[2], password=sys.argv[3], database=sys.argv[4])", "%s", pyArgs...)
		}
		cleanup()
		if err != nil {
			return err
		}
		delivered := time.Duration(first.Meta.LoadMs+first.Meta.ExecMs) * time.Millisecond
		add("(h) MySQL (MariaDB): 1M-row frame to user code, first call (meta loadMs+execMs)", ms(delivered)+
			fmt.Sprintf(" (load %d ms, hand-off+df+code %d ms; whole call %s)", first.Meta.LoadMs, first.Meta.ExecMs, ms(firstD)))
		add("(h) MySQL: the same call repeated (K-line cache), best of 3", ms(best)+fmt.Sprintf(" (%.1f× faster than the first)", float64(firstD)/float64(best)))
		add("(h) MySQL: pandas.read_sql (pymysql) of the same rows, best of 3", fmt.Sprintf("%s (read_sql / pyrunner first call: %.1f×)", ms(pandas), float64(pandas)/float64(delivered)))
	}

	// (m) 20 markets in one run (load_klines) next to 20 runs of one
	if only == "" || strings.Contains(only, "m") {
		if err := writeCrossMarkets(ctx, db); err != nil {
			return err
		}
		if err := crossSection(dir, db, add); err != nil {
			return err
		}
	}

	// (n) ten times the data: 10M rows, SQLite and MariaDB (bench/large.go)
	if only == "" || strings.Contains(only, "n") {
		if err := largeFrames(ctx, dir, db, add); err != nil {
			return err
		}
	}

	// (i) a backlog drains from the queue as fast as clients that wait
	if only == "" || strings.Contains(only, "i") {
		s, err := start(dir, db, 1, "PYRUNNER_EXECUTOR=warm")
		if err != nil {
			return err
		}
		syncRate, _, err := throughput(s, 8, 10*time.Second)
		var drained float64
		if err == nil {
			drained, err = drain(s, 5000)
		}
		s.stop()
		if err != nil {
			return err
		}
		add("(i) 5 000 trivial runs queued at once (wait=false), drained by 1 worker", fmt.Sprintf("%.0f runs/s (%.0f%% of the sustained synchronous %.0f runs/s, same stack)", drained, 100*drained/syncRate, syncRate))
	}

	// (j) what durability costs: the same load on two stacks in turn
	if only == "" || strings.Contains(only, "j") {
		aof, err := start(dir, db, 1, "PYRUNNER_EXECUTOR=warm")
		if err != nil {
			return err
		}
		none, err := startWith(dir, db, 1, volatileRedis, "PYRUNNER_EXECUTOR=warm")
		if err != nil {
			aof.stop()
			return err
		}
		var rates [2]float64
		for round := 0; round < 4 && err == nil; round++ {
			for i, s := range []*stack{aof, none} {
				var r float64
				if r, _, err = throughput(s, 8, 4*time.Second); err != nil {
					break
				}
				rates[i] += r / 4
			}
		}
		aof.stop()
		none.stop()
		if err != nil {
			return err
		}
		add("(j) sustained trivial runs/s, 1 worker, 8 clients: redis with the append-only file (everysec, as shipped) / keeping nothing, 4 s each in turn ×4",
			fmt.Sprintf("%.0f / %.0f runs/s (durability costs %+.1f%%)", rates[0], rates[1], 100*(rates[1]-rates[0])/rates[1]))
	}

	var md strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&md, "# pyrunner benchmark\n\nMeasured by `make bench` on %s (%d cores), %s.\n\n| measure | value |\n|---|---|\n",
		host, runtimeCPUs(), time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	for _, r := range rows {
		fmt.Fprintf(&md, "| %s | %s |\n", r[0], r[1])
	}
	fmt.Print(md.String())
	if only != "" {
		return nil // a partial run does not replace the committed table
	}
	return os.WriteFile("bench/RESULTS.md", []byte(md.String()), 0o644)
}

func runtimeCPUs() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "processor\t:")
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
