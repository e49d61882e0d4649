package e2e

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestIsolation tries, as an attacker would, to reach outside one research
// run: signal other runs, leave processes behind, share /tmp or /dev/shm,
// fill the disk or memory, create a user namespace, send a huge result,
// and touch another run's directory. Each attempt must end that run only.
// It runs against a stack with two workers and the sandbox on, warm and
// cold.
func TestIsolation(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("per-run isolation needs the worker to run as root")
	}
	for _, mode := range []string{"warm", "cold"} {
		t.Run(mode, func(t *testing.T) {
			runIsolation(t, startStack(t, stackOpts{env: map[string]string{"PYRUNNER_EXECUTOR": mode, "PYRUNNER_SANDBOX": "bwrap"}}))
		})
	}
}

// check is a named subtest.
type check struct {
	name string
	run  func(t *testing.T)
}

// runIsolation runs every attack of TestIsolation against s (a local stack
// or the compose one), then the extra checks, then checks that the stack
// survived.
func runIsolation(t *testing.T, s *stack, extra ...check) {
	t.Run("KillAllSparesOthers", func(t *testing.T) { testKillAll(t, s) })
	t.Run("NothingOutlivesTheRun", func(t *testing.T) { testNothingOutlives(t, s) })
	t.Run("PrivateTmp", func(t *testing.T) { testPrivateTmp(t, s) })
	t.Run("DiskCap", func(t *testing.T) { testDiskCap(t, s) })
	t.Run("NoUserNamespaces", func(t *testing.T) { testNoUserNS(t, s) })
	t.Run("ResultSize", func(t *testing.T) { testResultSize(t, s) })
	t.Run("OtherRunsDirectory", func(t *testing.T) { testOtherRunsDir(t, s) })
	for _, c := range extra {
		t.Run(c.name, c.run)
	}
	t.Run("StackSurvives", func(t *testing.T) { testStackSurvives(t, s) })
}

// submit starts a research run without waiting and returns its id.
func (s *stack) submit(code string, timeoutSec int) string {
	s.t.Helper()
	st, r := s.research(code, map[string]any{"wait": false, "timeoutSec": timeoutSec})
	if st != 202 || r.ID == "" {
		s.t.Fatalf("submit: status %d %+v", st, r)
	}
	return r.ID
}

// waitRunning waits for a research run to be running.
func (s *stack) waitRunning(id string) {
	s.t.Helper()
	waitUntil(s.t, 30*time.Second, "run "+id+" to be running", func() bool {
		var r result
		s.do("GET", "/v1/research/runs/"+id, "", &r)
		return r.Status == "running"
	})
}

// finished long-polls a research run to its end.
func (s *stack) finished(id string) *result {
	s.t.Helper()
	var r result
	if st := s.do("GET", "/v1/research/runs/"+id+"?wait=120", "", &r); st != 200 {
		s.t.Fatalf("run %s did not finish: %d %s", id, st, r.Status)
	}
	return &r
}

func testKillAll(t *testing.T, s *stack) {
	sleeper := "import time; print('up', flush=True); time.sleep(4); result = 'slept'"
	a, b := s.submit(sleeper, 30), s.submit(sleeper, 30)
	s.waitRunning(a)
	s.waitRunning(b)
	// The killer's own child is hit: kill(-1) works, within the run.
	st, r := s.research("import os, signal, subprocess\nchild = subprocess.Popen(['sleep', '30'])\nos.kill(-1, signal.SIGKILL)\nresult = child.wait()", nil)
	if st != 200 || !r.ok() || string(r.Result) != "-9" {
		t.Errorf("the killer itself: %d ok=%v %q result %s", st, r.ok(), r.errText(), r.Result)
	}
	for _, id := range []string{a, b} {
		if r := s.finished(id); !r.ok() || string(r.Result) != `"slept"` {
			t.Errorf("sleeper %s was hit: %s %q", id, r.Status, r.errText())
		}
	}
}

// markerProcs lists the host's processes whose command line holds marker.
func markerProcs(marker string) []string {
	var found []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), marker) {
			found = append(found, e.Name()+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return found
}

// escapeCode double-forks, leaves the session and execs a long sleep whose
// argument is marker, then runs tail.
func escapeCode(marker, tail string) string {
	return `import os, signal, time
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.execvp("sleep", ["sleep", "` + marker + `"])
    os._exit(0)
os.waitpid(pid, 0)
def cmdline(p):
    try:
        return open(f"/proc/{p}/cmdline", "rb").read()
    except OSError:
        return b""
for _ in range(100):
    if any(b"` + marker + `" in cmdline(p) for p in os.listdir("/proc") if p.isdigit()):
        break
    time.sleep(0.05)
print("escaped", flush=True)
` + tail
}

func testNothingOutlives(t *testing.T, s *stack) {
	cases := []struct {
		name, tail, status string
		timeout            int
	}{
		{"success", "result = 'done'", "succeeded", 30},
		{"timeout", "time.sleep(60)", "timeout", 2},
		{"cancel", "time.sleep(60)", "stopped", 60},
	}
	for _, c := range cases {
		marker := fmt.Sprintf("%d.%04d", 600+rand.IntN(300), rand.IntN(10000))
		id := s.submit(escapeCode(marker, c.tail), c.timeout)
		if c.name == "cancel" {
			s.waitRunning(id)
			waitUntil(t, 20*time.Second, "the escaped sleep to start", func() bool { return len(markerProcs(marker)) > 0 })
			var r result
			s.do("POST", "/v1/research/runs/"+id+"/cancel", "", &r)
		}
		r := s.finished(id)
		ended := time.Now()
		// (A cancelled run may be killed before it prints.)
		if r.Status != c.status || c.name != "cancel" && !strings.Contains(r.Stdout, "escaped") {
			t.Errorf("%s: status %s (want %s) stdout %q error %q", c.name, r.Status, c.status, r.Stdout, r.errText())
		}
		for left := markerProcs(marker); len(left) > 0; left = markerProcs(marker) {
			if time.Since(ended) > 2*time.Second {
				t.Errorf("%s: 2 s after the response, processes of the run are still alive: %v", c.name, left)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// shmem is the host's Shmem in bytes: what tmpfs files (a run's /tmp and
// /dev/shm) and memory files hold. Unlike MemAvailable, which this VM's
// memory reporting returns only slowly, it drops the moment a tmpfs goes.
func shmem(t *testing.T) int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Shmem:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no Shmem in /proc/meminfo")
	return 0
}

func testPrivateTmp(t *testing.T, s *stack) {
	s.mustOK("open('/tmp/left-behind', 'w').write('x')\nopen('/dev/shm/left-behind', 'w').write('x')\nresult = 1", nil)
	// Several runs, so that both workers (and, warm, both zygotes) are asked.
	for i := 0; i < 6; i++ {
		var seen map[string]any
		s.mustOK("import os\nresult = {'tmp': os.listdir('/tmp'), 'shm': os.listdir('/dev/shm'), 'home': os.listdir('.')}", &seen)
		for k, v := range seen {
			if len(v.([]any)) != 0 {
				t.Errorf("run %d sees a previous run's files in %s: %v", i, k, v)
			}
		}
	}
	before := shmem(t)
	st, r := s.research(`chunk = b"x" * (100 << 20)
written = 0
try:
    for i in range(15):
        with open(f"/tmp/fill-{i}", "wb") as f:
            f.write(chunk)
        written += 100
finally:
    print("written_mb", written)`, map[string]any{"timeoutSec": 60})
	if st != 200 || r.ok() || r.Status != "failed" || !strings.Contains(r.errText(), "No space left") {
		t.Errorf("1.5 GB into /tmp: %d %s %q stdout %q", st, r.Status, r.errText(), r.Stdout)
	}
	t.Logf("1.5 GB into /tmp: %q, %s", r.errText(), strings.TrimSpace(r.Stdout))
	waitUntil(t, 10*time.Second, "the run's tmpfs memory to come back", func() bool { return shmem(t) < before+300<<20 })
}

func testDiskCap(t *testing.T, s *stack) {
	st, r := s.research(`chunk = b"x" * (1 << 20)
written = 0
try:
    for i in range(6):
        with open(f"file-{i}", "wb") as f:
            for _ in range(250):
                f.write(chunk)
                written += 1
finally:
    print("written_mb", written)`, map[string]any{"timeoutSec": 60})
	if st != 200 || r.ok() || !strings.Contains(r.errText(), "No space left") {
		t.Errorf("six 250 MB files: %d %s %q", st, r.Status, r.errText())
	}
	var mb int
	if _, err := fmt.Sscanf(strings.TrimSpace(r.Stdout), "written_mb %d", &mb); err != nil {
		t.Fatal(err)
	}
	if mb == 0 || mb >= 600 {
		t.Errorf("the run wrote %d MB before it was stopped (stdout %q), want under 600", mb, r.Stdout)
	}
	waitUntil(t, 5*time.Second, "the work dir to hold no run dirs", func() bool { return len(s.runDirs("")) == 0 })
}

func testNoUserNS(t *testing.T, s *stack) {
	var got map[string]any
	s.mustOK(`import ctypes, os, subprocess
libc = ctypes.CDLL(None, use_errno=True)
def attempt(flags):
    return "allowed" if libc.unshare(flags) == 0 else os.strerror(ctypes.get_errno())
result = {"userns": attempt(0x10000000), "mountns": attempt(0x00020000), "netns": attempt(0x40000000),
          "mount": "allowed" if libc.mount(b"none", b"/tmp", b"tmpfs", 0, None) == 0 else os.strerror(ctypes.get_errno()),
          "unshare_cmd": subprocess.run(["unshare", "-Ur", "true"], capture_output=True).returncode,
          "pid": os.getpid(), "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}
import fcntl, termios
for name, req in (("tiocsti", termios.TIOCSTI), ("tioclinux", 0x541C)):
    try:  # on a descriptor that is no terminal, the kernel alone says ENOTTY
        fcntl.ioctl(os.open(os.devnull, os.O_RDONLY), req, b"x")
        result[name] = "allowed"
    except OSError as e:
        result[name] = e.strerror`, &got)
	for _, k := range []string{"userns", "mountns", "netns", "mount"} {
		if got[k] == "allowed" {
			t.Errorf("%s was allowed inside a run: %v", k, got)
		}
	}
	// Pushing input into a terminal is refused by the filter itself.
	for _, k := range []string{"tiocsti", "tioclinux"} {
		if got[k] != "Operation not permitted" {
			t.Errorf("%s inside a run: %v, want refused (Operation not permitted)", k, got[k])
		}
	}
	if got["unshare_cmd"] == 0.0 {
		t.Errorf("`unshare -Ur true` worked inside a run: %v", got)
	}
	// Its own PID namespace: it is PID 1 and sees only itself (and the
	// unshare command it just ran is gone).
	if got["pid"] != 1.0 || fmt.Sprint(got["procs"]) != "[1]" {
		t.Errorf("the run sees processes beyond its own: pid %v, /proc has %v", got["pid"], got["procs"])
	}
}

func testResultSize(t *testing.T, s *stack) {
	for _, code := range []string{"result = 'x' * 200_000_000", "print('before'); result = ['x' * 1000] * 500000"} {
		began := time.Now()
		st, r := s.research(code, map[string]any{"timeoutSec": 30})
		if st != 200 || r.ok() || r.Status != "failed" || !strings.Contains(r.errText(), "result too large") || !strings.Contains(r.errText(), "(limit 16777216)") {
			t.Errorf("%.40s: %d %s %q", code, st, r.Status, r.errText())
		}
		if strings.HasPrefix(code, "print") && r.Stdout != "before\n" {
			t.Errorf("stdout is kept with a too-large result: %q", r.Stdout)
		}
		if d := time.Since(began); d > 30*time.Second {
			t.Errorf("a too-large result took %s, over the run's timeout", d)
		}
		t.Logf("%.30s → %q", code, r.errText())
	}
	var str string
	if s.mustOK("result = 'y' * 5_000_000", &str); len(str) != 5_000_000 {
		t.Errorf("a 5 MB result came back with %d bytes", len(str))
	}
}

func testOtherRunsDir(t *testing.T, s *stack) {
	// The victim sleeps long enough for a probe to land on its worker,
	// which takes a few tries when there are many.
	sleep := "4"
	if s.containers != nil {
		sleep = "12"
	}
	a := s.submit("import os, time\nopen('secret', 'w').write('mine')\ntime.sleep("+sleep+")\nresult = {'files': sorted(os.listdir('.')), 'secret': open('secret').read()}", 60)
	s.waitRunning(a)
	var dir runDir
	waitUntil(t, 10*time.Second, "the run's directory", func() bool {
		m := s.runDirs(a)
		if len(m) == 1 {
			dir = m[0]
		}
		return dir.path != ""
	})
	probed := false
	for try := 0; try < 40 && !probed; try++ {
		var got map[string]string
		r := s.mustOK(`import os
d = `+strconv.Quote(dir.path)+`
def attempt(f):
    try:
        f()
        return "allowed"
    except Exception as e:
        return type(e).__name__
result = {"list": attempt(lambda: os.listdir(d)), "read": attempt(lambda: open(d + "/secret").read()),
          "write": attempt(lambda: open(d + "/planted", "w").write("x"))}`, &got)
		if w, _ := r.Meta["worker"].(string); dir.worker != "" && !strings.HasPrefix(w, dir.worker+":") {
			continue // another worker: the directory is not even there
		}
		probed = true
		for k, v := range got {
			if v == "allowed" {
				t.Errorf("another run could %s the directory of run %s: %v", k, a, got)
			}
		}
	}
	if !probed {
		t.Errorf("no probe ran on the worker of run %s (%s)", a, dir.worker)
	}
	r := s.finished(a)
	if !r.ok() || string(r.Result) != `{"files":["secret"],"secret":"mine"}` {
		t.Errorf("the first run's directory changed: %s %s", r.Result, r.errText())
	}
}

func testStackSurvives(t *testing.T, s *stack) {
	if err := s.workersAlive(); err != nil {
		t.Error(err)
	}
	var h struct {
		Workers []any `json:"workers"`
	}
	if s.getJSON("/health", &h); len(h.Workers) != s.wantWorkers {
		t.Errorf("health lists %d workers, want %d", len(h.Workers), s.wantWorkers)
	}
	var got map[string]float64
	s.mustOK("result = {'rows': len(df)}", &got)
	if got["rows"] != 1441 {
		t.Errorf("a normal run after the attacks: %v", got)
	}
}

// TestOutcomeRedisRefuses: a result Redis will not store (here: over its
// proto-max-bulk-len) ends the run failed with the reason, promptly; it
// never stays running.
func TestOutcomeRedisRefuses(t *testing.T) {
	s := startStack(t, stackOpts{workers: 1})
	if out, err := exec.Command("redis-cli", "-p", strconv.Itoa(s.redisPort), "config", "set", "proto-max-bulk-len", "1mb").CombinedOutput(); err != nil {
		t.Fatalf("config set: %v %s", err, out)
	}
	st, r := s.research("print('kept'); result = 'y' * 3_000_000", nil)
	if st != 200 || r.ok() || r.Status != "failed" || !strings.Contains(r.errText(), "could not be stored") {
		t.Errorf("a result Redis refuses: %d %s %q", st, r.Status, r.errText())
	}
	s.mustOK("result = 1", nil)
}

// TestSandboxFallback: PYRUNNER_SANDBOX=auto on a machine where the sandbox
// cannot work (here: no bwrap on PATH) runs unsandboxed but says so in
// /health; PYRUNNER_SANDBOX=bwrap refuses to start there.
func TestSandboxFallback(t *testing.T) {
	noBwrap := map[string]string{"PATH": "/nonexistent", "PYRUNNER_PYTHON": "/usr/bin/python3"}
	s := startStack(t, stackOpts{workers: 1, env: noBwrap})
	var h struct {
		Workers []struct {
			Sandbox     string `json:"sandbox"`
			SandboxNote string `json:"sandbox_note"`
		} `json:"workers"`
	}
	s.getJSON("/health", &h)
	if len(h.Workers) != 1 || h.Workers[0].Sandbox != "none" || !strings.Contains(h.Workers[0].SandboxNote, "bwrap") {
		t.Errorf("health does not say the sandbox is off: %+v", h.Workers)
	}
	s.mustOK("result = 1", nil)

	cmd := exec.Command(filepath.Join(binDir, "pyrunner-worker"))
	cmd.Env = append(slices.Clone(s.env), "PYRUNNER_SANDBOX=bwrap")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "PYRUNNER_SANDBOX=bwrap but the sandbox does not work here") {
		t.Errorf("a worker with PYRUNNER_SANDBOX=bwrap and no sandbox: err %v, output %s", err, out)
	}
}
