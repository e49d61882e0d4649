package scriptrun_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ztrade/pyrunner/pkg/scriptrun"
)

// keeper is the real pyrunner-keeper, built once for these tests.
var keeper string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "scriptrun-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	keeper = filepath.Join(dir, scriptrun.KeeperName)
	build := exec.Command("go", "build", "-o", keeper, "../../cmd/pyrunner-keeper")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build the keeper: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// testBundle is one script's spec and what its callbacks saw.
type testBundle struct {
	spec scriptrun.Spec

	mu     sync.Mutex
	output map[string]string
	pid    int
}

// setup writes script (Python) into a temp dir and returns a spec that
// runs it under the keeper with a lease of an hour.
func setup(t *testing.T, script string) *testBundle {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "s.py")
	if err := os.WriteFile(path, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal(err)
	}
	b := &testBundle{output: map[string]string{}}
	b.spec = scriptrun.Spec{
		Python: py, Script: path, Args: []string{"a b"}, Dir: dir, Env: []string{"PATH=/usr/bin:/bin", "X=from-env"},
		Keeper: keeper, Lease: scriptrun.NewLease(time.Now().Add(time.Hour)),
		StdoutPath: filepath.Join(dir, "logs", "out.log"), StderrPath: filepath.Join(dir, "logs", "err.log"),
		Grace: 10 * time.Minute, FlushEvery: 10 * time.Millisecond,
		OnStart: func(pid int) { b.mu.Lock(); b.pid = pid; b.mu.Unlock() },
		OnOutput: func(stream string, data []byte) {
			b.mu.Lock()
			b.output[stream] += string(data)
			b.mu.Unlock()
		},
	}
	return b
}

func (b *testBundle) seen(stream string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.output[stream]
}

// started waits for the script's "ready" line. It is called from
// goroutines too, so it fails the test with Error and returns.
func (b *testBundle) started(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(b.seen("stdout"), "ready") {
		if time.Now().After(deadline) {
			t.Error("the script did not start in 30 s") // not Fatal: callers in goroutines must go on
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func run(t *testing.T, ctx context.Context, b *testBundle) scriptrun.Result {
	t.Helper()
	res, err := scriptrun.Run(ctx, b.spec)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestExitCodeOutputAndLogs(t *testing.T) {
	b := setup(t, "import os, sys\nprint('out', sys.argv[1], os.environ['X'])\nprint('err', file=sys.stderr)\nsys.exit(3)\n")
	res := run(t, context.Background(), b)
	if res != (scriptrun.Result{ExitCode: 3}) {
		t.Errorf("result = %+v", res)
	}
	if b.seen("stdout") != "out a b from-env\n" || b.seen("stderr") != "err\n" {
		t.Errorf("streamed %q", b.output)
	}
	if out, err := os.ReadFile(b.spec.StdoutPath); err != nil || string(out) != "out a b from-env\n" {
		t.Errorf("stdout log %q %v", out, err)
	}
	if b.pid <= 0 {
		t.Errorf("OnStart got pid %d", b.pid)
	}
}

func TestStopGivesSIGTERMThenTheGrace(t *testing.T) {
	t.Run("exits on SIGTERM", func(t *testing.T) {
		b := setup(t, "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: (print('bye', flush=True), sys.exit(0)))\nprint('ready', flush=True)\ntime.sleep(600)\n")
		ctx, cancel := context.WithCancel(context.Background())
		go func() { b.started(t); cancel() }()
		res := run(t, ctx, b)
		if !res.Stopped || res.Killed || res.ExitCode != 0 || !strings.Contains(b.seen("stdout"), "bye") {
			t.Errorf("result %+v, stdout %q", res, b.seen("stdout"))
		}
	})
	t.Run("ignores SIGTERM", func(t *testing.T) {
		b := setup(t, "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(600)\n")
		b.spec.Grace = 200 * time.Millisecond
		ctx, cancel := context.WithCancel(context.Background())
		go func() { b.started(t); cancel() }()
		res := run(t, ctx, b)
		if !res.Stopped || !res.Killed || res.ExitCode != -int(syscall.SIGKILL) {
			t.Errorf("result %+v", res)
		}
	})
}

// TestErrKillSkipsTheGrace: a fencing worker kills at once (the grace of
// ten minutes is never waited for).
func TestErrKillSkipsTheGrace(t *testing.T) {
	b := setup(t, "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(600)\n")
	ctx, cancel := context.WithCancelCause(context.Background())
	go func() { b.started(t); cancel(scriptrun.ErrKill) }()
	res := run(t, ctx, b)
	if !res.Stopped || !res.Killed || res.ExitCode != -int(syscall.SIGKILL) {
		t.Errorf("result %+v", res)
	}
}

func TestTimeout(t *testing.T) {
	b := setup(t, "import time\nprint('ready', flush=True)\ntime.sleep(600)\n")
	b.spec.Timeout = 500 * time.Millisecond
	res := run(t, context.Background(), b)
	if !res.TimedOut || res.Stopped || res.ExitCode != -int(syscall.SIGTERM) {
		t.Errorf("result %+v", res)
	}
}

// TestLeaseThatRunsOutFencesTheScript: the keeper kills a script whose
// lease is not renewed, with no help from the worker's side.
func TestLeaseThatRunsOutFencesTheScript(t *testing.T) {
	b := setup(t, "import time\nprint('ready', flush=True)\ntime.sleep(600)\n")
	b.spec.Lease = scriptrun.NewLease(time.Now().Add(time.Second))
	res := run(t, context.Background(), b)
	if !res.Fenced || !res.Killed || res.Stopped || res.ExitCode != -int(syscall.SIGKILL) {
		t.Errorf("result %+v", res)
	}
}

// TestRenewedLeaseKeepsTheScript: renewals reach the keeper, so a script
// that outlives its first lease is not fenced while they come.
func TestRenewedLeaseKeepsTheScript(t *testing.T) {
	b := setup(t, "import os, time\nprint('ready', flush=True)\nwhile not os.path.exists('done'):\n    time.sleep(0.05)\n")
	lease := scriptrun.NewLease(time.Now().Add(time.Second))
	b.spec.Lease = lease
	stop := make(chan struct{})
	go func() {
		defer close(stop)
		// Renew from the start (a start slowed by a busy machine must not
		// be fenced), until three of the first lease's lengths after the
		// script is ready; then let it end. Errors only: t.Fatal would
		// leave the test waiting on stop.
		began, ready := time.Now(), time.Time{}
		for ready.IsZero() || time.Since(ready) < 3*time.Second {
			lease.Renew(time.Now().Add(time.Second))
			if ready.IsZero() && strings.Contains(b.seen("stdout"), "ready") {
				ready = time.Now()
			}
			if ready.IsZero() && time.Since(began) > 60*time.Second {
				t.Error("the script did not start in 60 s")
				return // no more renewals: the keeper fences it
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err := os.WriteFile(filepath.Join(b.spec.Dir, "done"), nil, 0o644); err != nil {
			t.Error(err)
		}
	}()
	res := run(t, context.Background(), b)
	<-stop
	if res.Fenced || res.ExitCode != 0 {
		t.Errorf("result %+v", res)
	}
}

func TestAScriptNeedsAKeeper(t *testing.T) {
	b := setup(t, "print(1)\n")
	b.spec.Keeper = ""
	if _, err := scriptrun.Run(context.Background(), b.spec); err == nil || !strings.Contains(err.Error(), "keeper") {
		t.Errorf("err = %v", err)
	}
	b.spec.Keeper = filepath.Join(t.TempDir(), "missing")
	_, err := scriptrun.Run(context.Background(), b.spec)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing keeper: err = %v", err)
	}
}
