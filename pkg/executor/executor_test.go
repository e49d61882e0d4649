package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ztrade/pyrunner/pkg/frame"
	"github.com/ztrade/pyrunner/pkg/wire"
)

// testBundle holds an executor on the machine's Python with pandas.
type testBundle struct {
	exec Executor
}

func setup(t *testing.T, mode string) *testBundle {
	t.Helper()
	py, err := FindPython("")
	if err != nil {
		t.Fatalf("need a Python with numpy and pandas: %v", err)
	}
	work := t.TempDir()
	for p := work; p != os.TempDir(); p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o711); err != nil { // reachable by the run user, as a real work dir
			t.Fatal(err)
		}
	}
	opt := Options{Python: py, WorkDir: work, Limits: Limits{MaxOutputBytes: 1 << 20, MaxImages: 3, MaxImageBytes: 1 << 20,
		MemoryBytes: 1 << 30, FileBytes: 16 << 20, OpenFiles: 256, Processes: 64}}
	var e Executor
	if mode == "warm" {
		e, err = NewWarm(opt)
	} else {
		e, err = NewCold(opt)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return &testBundle{exec: e}
}

// forEachMode runs a test against a cold and a warm executor.
func forEachMode(t *testing.T, f func(t *testing.T, b *testBundle)) {
	for _, mode := range []string{"cold", "warm"} {
		t.Run(mode, func(t *testing.T) { f(t, setup(t, mode)) })
	}
}

func sampleFrame(n int) *frame.Frame {
	f := &frame.Frame{}
	for i := 0; i < n; i++ {
		f.Append(int64(1735689600+60*i), 1, 2, 0.5, 1.5, 10, frame.NaN, int64(i))
	}
	return f
}

func (b *testBundle) run(t *testing.T, code string, timeout time.Duration) *Output {
	t.Helper()
	out, err := b.exec.Run(context.Background(), Job{RunID: "t", Code: code, Timeout: timeout, Frame: sampleFrame(5),
		LoadKline: func(ctx context.Context, r wire.Market) (*frame.Frame, error) { return sampleFrame(int(r.Limit)), nil }})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestResultAndDataFrame(t *testing.T) { forEachMode(t, testResultAndDataFrame) }

func testResultAndDataFrame(t *testing.T, b *testBundle) {
	out := b.run(t, `result = {"rows": len(df), "cols": list(df.columns), "dtypes": [str(d) for d in df.dtypes],
"other": len(load_kline("x", "y", "1m", 0, 1, limit=7)), "nan": float("nan"), "arr": np.arange(3), "t": df.time.iloc[0]}
print("hello")`, 10*time.Second)
	if !out.OK {
		t.Fatalf("not ok: %s\n%s", out.Error, out.Stderr)
	}
	var r map[string]any
	if err := json.Unmarshal(out.Result, &r); err != nil {
		t.Fatal(err)
	}
	if r["rows"].(float64) != 5 || r["other"].(float64) != 7 || r["nan"] != nil || r["t"] != "2025-01-01T00:00:00+00:00" {
		t.Errorf("result = %s", out.Result)
	}
	if got := strings.Join(toStrings(r["dtypes"]), ","); got != "int64,float64,float64,float64,float64,float64,float64,int64,datetime64[ns, UTC]" {
		t.Errorf("dtypes = %s", got)
	}
	if out.Stdout != "hello\n" {
		t.Errorf("stdout = %q", out.Stdout)
	}
}

func TestLoadKlinesAreLoadedConcurrentlyAndAnsweredInOrder(t *testing.T) {
	forEachMode(t, func(t *testing.T, b *testBundle) {
		// Each load waits until loadParallel loads are in flight at once:
		// loads made one after another would never get there.
		var mu sync.Mutex
		inFlight, most := 0, 0
		all := make(chan struct{})
		load := func(ctx context.Context, r wire.Market) (*frame.Frame, error) {
			if r.Symbol == "first" {
				return sampleFrame(int(r.Limit)), nil
			}
			mu.Lock()
			inFlight++
			if inFlight > most {
				most = inFlight
			}
			if most == loadParallel {
				select {
				case <-all:
				default:
					close(all)
				}
			}
			mu.Unlock()
			defer func() { mu.Lock(); inFlight--; mu.Unlock() }()
			select {
			case <-all:
			case <-time.After(20 * time.Second):
				return nil, errors.New("loads were not concurrent")
			}
			if r.Symbol == "BAD" {
				return nil, errors.New("no such market")
			}
			return sampleFrame(int(r.Limit)), nil
		}
		code := `markets = [("x", f"S{i}") for i in range(8)]
d = {s: len(load_kline(e, s, "1m", 0, 1, limit=1)) for e, s in [("x", "first")]}
d.update({s: len(f) for (e, s), f in load_klines([(e, s) for e, s in markets], "1m", 0, 1, limit=3).items()})
try:
    load_klines([("x", "S9"), ("x", "BAD"), ("x", "S10"), ("x", "S11")], "1m", 0, 1)
except ValueError as e:
    d["error"] = str(e)
result = d`
		out, err := b.exec.Run(context.Background(), Job{RunID: "t", Code: code, Timeout: 60 * time.Second, Frame: sampleFrame(5), LoadKline: load})
		if err != nil {
			t.Fatal(err)
		}
		if !out.OK {
			t.Fatalf("not ok: %s\n%s", out.Error, out.Stderr)
		}
		want := `{"first":1,"S0":3,"S1":3,"S2":3,"S3":3,"S4":3,"S5":3,"S6":3,"S7":3,"error":"x:BAD: no such market"}`
		if string(out.Result) != want {
			t.Errorf("result %s, want %s", out.Result, want)
		}
	})
}

func toStrings(v any) (s []string) {
	for _, x := range v.([]any) {
		s = append(s, x.(string))
	}
	return
}

func TestUserExceptionAndTimeout(t *testing.T) { forEachMode(t, testUserExceptionAndTimeout) }

func testUserExceptionAndTimeout(t *testing.T, b *testBundle) {
	out := b.run(t, "x = 1\ny = x / 0\n", 10*time.Second)
	if out.OK || out.TimedOut || out.Error != "ZeroDivisionError: division by zero" || !strings.Contains(out.Stderr, `File "<user_code>", line 2`) {
		t.Errorf("ok=%v error=%q stderr=%q", out.OK, out.Error, out.Stderr)
	}
	out = b.run(t, "print('before', flush=True)\nwhile True: pass", 1*time.Second)
	if out.OK || !out.TimedOut || out.Error != "timeout after 1s" || out.Stdout != "before\n" {
		t.Errorf("timeout: %+v", out)
	}
	// stuck outside the interpreter loop: the hard kill still ends it
	out = b.run(t, "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nimport time\ntime.sleep(30)", 1*time.Second)
	if out.OK || !out.TimedOut || out.Error != "timeout after 1s" {
		t.Errorf("hard timeout: %+v", out)
	}
}

func TestOutputCapIsFlagged(t *testing.T) { forEachMode(t, testOutputCapIsFlagged) }

func testOutputCapIsFlagged(t *testing.T, b *testBundle) {
	out := b.run(t, "import sys\nsys.stdout.write('é' * 2_000_000)", 20*time.Second)
	if !out.OK || !out.StdoutTruncated || len(out.Stdout) > 1<<20 || len(out.Stdout) < 1<<20-4 || !strings.HasSuffix(out.Stdout, "é") {
		t.Errorf("ok=%v truncated=%v len=%d", out.OK, out.StdoutTruncated, len(out.Stdout))
	}
}

func TestLimitsEndTheRunOnly(t *testing.T) { forEachMode(t, testLimitsEndTheRunOnly) }

func testLimitsEndTheRunOnly(t *testing.T, b *testBundle) {
	out := b.run(t, "x = bytearray(10**11)", 10*time.Second)
	if out.OK || !strings.HasPrefix(out.Error, "MemoryError") {
		t.Errorf("memory: ok=%v error=%q", out.OK, out.Error)
	}
	out = b.run(t, "f = open('big', 'wb')\nfor i in range(10_000):\n    f.write(b'x' * (1 << 20))", 20*time.Second)
	if out.OK || !strings.Contains(out.Error, "File too large") && !strings.Contains(out.Error, "SIGXFSZ") {
		t.Errorf("file size: ok=%v error=%q", out.OK, out.Error)
	}
	if os.Geteuid() == 0 {
		out = b.run(t, "import os\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            import time; time.sleep(30); os._exit(0)\n        n += 1\nexcept OSError as e:\n    result = {'forked': n, 'error': str(e)}", 20*time.Second)
		if !out.OK || !strings.Contains(string(out.Result), "Resource temporarily unavailable") {
			t.Errorf("fork bomb: ok=%v error=%q result=%s", out.OK, out.Error, out.Result)
		}
	}
	out = b.run(t, "result = 'alive'", 10*time.Second)
	if !out.OK || string(out.Result) != `"alive"` {
		t.Errorf("next run: %+v", out)
	}
}

func TestWarmRunsLeakNothing(t *testing.T) {
	b := setup(t, "warm")
	code := `import os, sys, json, matplotlib.pyplot as plt
seen = {"global": "leak" in globals(), "module": hasattr(json, "leaked"), "figures": len(plt.get_fignums()),
        "files": sorted(os.listdir(".")), "np_attr": hasattr(np, "leaked")}
leak = 1
json.leaked = 1
np.leaked = 1
plt.figure()
open("left.txt", "w").write("x")
result = seen`
	for i := 0; i < 200; i++ {
		out := b.run(t, code, 10*time.Second)
		if !out.OK || string(out.Result) != `{"global":false,"module":false,"figures":0,"files":[],"np_attr":false}` {
			t.Fatalf("run %d: ok=%v error=%q result=%s", i, out.OK, out.Error, out.Result)
		}
	}
}

// TestEachRunHasItsOwnRandomness: runs forked from one zygote do not
// share their random generators' states (numpy's global one, random's,
// and a normal deviate numpy would have cached), and numpy's draws are
// uniform.
func TestEachRunHasItsOwnRandomness(t *testing.T) { forEachMode(t, testEachRunHasItsOwnRandomness) }

func testEachRunHasItsOwnRandomness(t *testing.T, b *testBundle) {
	code := `import random
u = np.random.random(20000)
result = [np.random.randint(1 << 62), random.getrandbits(62), float(np.random.normal()), float(u.mean()), float(u.min())]`
	seen := map[string]int{}
	for i := 0; i < 6; i++ {
		out := b.run(t, code, 10*time.Second)
		if !out.OK {
			t.Fatalf("run %d: %s\n%s", i, out.Error, out.Stderr)
		}
		var r []float64
		if err := json.Unmarshal(out.Result, &r); err != nil || len(r) != 5 {
			t.Fatalf("run %d: result %s (%v)", i, out.Result, err)
		}
		if r[3] < 0.48 || r[3] > 0.52 || r[4] < 0 {
			t.Errorf("run %d: np.random.random is not uniform on [0, 1): mean %v, min %v", i, r[3], r[4])
		}
		for k, v := range r[:3] {
			key := fmt.Sprintf("%d:%v", k, v)
			if j, dup := seen[key]; dup {
				t.Errorf("runs %d and %d drew the same value from generator %d: %v", j, i, k, v)
			}
			seen[key] = i
		}
	}
}

func TestZygoteKilledMidRun(t *testing.T) {
	b := setup(t, "warm")
	w := b.exec.(*Warm)
	pid := w.ZygotePID()
	done := make(chan *Output, 1)
	go func() { done <- b.run(t, "import time\ntime.sleep(30)", 60*time.Second) }()
	time.Sleep(time.Second)
	syscall.Kill(pid, syscall.SIGKILL)
	select {
	case out := <-done:
		if out.OK || !strings.Contains(out.Error, "zygote died") {
			t.Errorf("run in flight: ok=%v error=%q", out.OK, out.Error)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the run in flight hung after its zygote died")
	}
	out := b.run(t, "result = 1", 10*time.Second)
	if !out.OK || w.ZygotePID() == pid {
		t.Errorf("next run: ok=%v error=%q, zygote %d (was %d)", out.OK, out.Error, w.ZygotePID(), pid)
	}
}

// TestDeathIsExplained: a run that dies says how, not a guess.
func TestDeathIsExplained(t *testing.T) {
	forEachMode(t, func(t *testing.T, b *testBundle) {
		out := b.run(t, "import ctypes\nctypes.string_at(0)", 10*time.Second)
		if out.OK || out.Error != "python crashed (SIGSEGV)" {
			t.Errorf("segfault: ok=%v error=%q", out.OK, out.Error)
		}
	})
}

func TestDiedText(t *testing.T) {
	for _, c := range []struct {
		code int
		err  error
		oom  bool
		want string
	}{
		{-9, nil, true, "python was killed by the kernel's out-of-memory killer (SIGKILL): the host ran out of memory"},
		{-9, nil, false, "python was killed by SIGKILL from outside the run (not by a pyrunner limit)"},
		{-25, nil, false, "python wrote a file over the size limit (SIGXFSZ)"},
		{-15, nil, false, "python was killed by signal SIGTERM"},
		{1, &errTooLarge{size: 30, limit: 20}, false, "result too large: 30 bytes (limit 20)"},
		{3, nil, false, "python exited with code 3 before returning a result"},
	} {
		if got := diedText(c.code, c.err, c.oom); got != c.want {
			t.Errorf("diedText(%d, %v, %v) = %q, want %q", c.code, c.err, c.oom, got, c.want)
		}
	}
}

// TestSandboxHidesRelativePaths: a hidden path given relative to the
// worker (SCRIPT_STATE_DIR's default, .quant-script-api) is masked at its
// absolute place, not looked for under the sandbox's read-only root.
func TestSandboxHidesRelativePaths(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	if err := os.Mkdir("state", 0o755); err != nil {
		t.Fatal(err)
	}
	args := strings.Join(sandboxArgs(Options{Sandbox: "bwrap", Hide: []string{"state"}}, nil, nil, []string{"true"}), " ")
	if !strings.Contains(args, "--tmpfs "+filepath.Join(dir, "state")+" ") {
		t.Errorf("bwrap args %q do not mask %s", args, filepath.Join(dir, "state"))
	}
}

// readyPIDs waits (up to 30 s) until the zygote has n ready children,
// none of them in not, and returns their pids.
func (w *Warm) readyPIDs(t *testing.T, n int, not []int) []int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		w.mu.Lock()
		z := w.z
		w.mu.Unlock()
		var pids []int
		z.mu.Lock()
		for _, c := range z.ready {
			pids = append(pids, c.pid)
		}
		z.mu.Unlock()
		if len(pids) == n && !slices.ContainsFunc(pids, func(p int) bool { return slices.Contains(not, p) }) {
			return pids
		}
		if time.Now().After(deadline) {
			t.Fatalf("the zygote has ready children %v, want %d of them and none of %v", pids, n, not)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestReadyChildThatDiesIsReplaced: the zygote's ready children, killed
// while they wait, are replaced; a run asked for right after the kill
// neither fails nor waits on them.
func TestReadyChildThatDiesIsReplaced(t *testing.T) {
	b := setup(t, "warm")
	w := b.exec.(*Warm)
	killed := w.readyPIDs(t, prefork, nil)
	for _, pid := range killed {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	out := b.run(t, "result = len(df)", 10*time.Second)
	if !out.OK || string(out.Result) != "5" {
		t.Fatalf("run right after its ready children were killed: ok=%v error=%q result=%s", out.OK, out.Error, out.Result)
	}
	w.readyPIDs(t, prefork, killed)
	if n := w.ZygoteRestarts(); n != 0 {
		t.Errorf("the zygote was restarted %d times; only its children died", n)
	}
}

// TestBackgroundPriority: the zygote and its ready children wait at the
// background nice value (their forking and getting ready yield the CPU to
// runs in progress), while user code runs at normal priority.
func TestBackgroundPriority(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a worker that is not root keeps everything at normal priority")
	}
	b := setup(t, "warm")
	w := b.exec.(*Warm)
	ready := w.readyPIDs(t, prefork, nil)
	w.mu.Lock()
	zygote := w.z.pid
	w.mu.Unlock()
	for _, pid := range append(ready, zygote) {
		if n := niceOf(t, pid); n != backgroundNice {
			t.Errorf("process %d waits at nice %d, want %d", pid, n, backgroundNice)
		}
	}
	out := b.run(t, "import os\nresult = os.nice(0)", 10*time.Second)
	if !out.OK || string(out.Result) != "0" {
		t.Errorf("user code's nice value: ok=%v error=%q result=%s, want 0", out.OK, out.Error, out.Result)
	}
}

// niceOf is a process's nice value (/proc/PID/stat, field 19).
func niceOf(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	n, err := strconv.Atoi(f[16])
	if err != nil {
		t.Fatal(err)
	}
	return n
}
