package executor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Warm keeps one long-lived Python zygote (python/zygote.py) that has
// imported numpy, pandas and matplotlib, and asks it to fork a child per
// run. A zygote that dies is replaced on the next run; the runs it had in
// flight end with a clear error.
type Warm struct {
	opt         Options
	dir         string // where harness.py and zygote.py are written
	mplDir      string
	sandboxNote string

	mu sync.Mutex // guards z and serializes fork requests
	z  *zygote

	restarts atomic.Int64 // zygotes that died and were replaced
}

// ZygoteRestarts is how many times the zygote died and was replaced.
func (w *Warm) ZygoteRestarts() int64 { return w.restarts.Load() }

// NewWarm writes the Python side and starts the zygote.
func NewWarm(opt Options) (*Warm, error) {
	py, mpl, err := prepareWorkDir(opt)
	if err != nil {
		return nil, err
	}
	w := &Warm{opt: opt, dir: py, mplDir: mpl}
	if w.opt.Sandbox, w.sandboxNote, err = resolveSandbox(opt, py); err != nil {
		return nil, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := w.zygoteLocked(); err != nil {
		return nil, err
	}
	return w, nil
}

// Mode is "warm".
func (w *Warm) Mode() string { return "warm" }

// Sandbox is the sandbox in force.
func (w *Warm) Sandbox() (string, string) { return w.opt.Sandbox, w.sandboxNote }

// Close stops the zygote (its children die with it).
func (w *Warm) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.z != nil {
		w.z.stop()
		w.z = nil
	}
	return nil
}

// ZygotePID is the current zygote's pid (0 if none); tests kill it.
func (w *Warm) ZygotePID() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.z == nil {
		return 0
	}
	return w.z.cmd.Process.Pid
}

// zygote is one running zygote process and its control channel.
type zygote struct {
	cmd     *exec.Cmd
	ctl     *net.UnixConn
	replies chan map[string]any // fork replies, in request order
	dead    chan struct{}       // closed when the zygote is gone

	mu    sync.Mutex
	exits map[int]chan int // pid → its exit code, once known
}

func (z *zygote) exitChan(pid int) chan int {
	z.mu.Lock()
	defer z.mu.Unlock()
	ch, ok := z.exits[pid]
	if !ok {
		ch = make(chan int, 1)
		z.exits[pid] = ch
	}
	return ch
}

// forget drops a child's exit channel once its exit was taken.
func (z *zygote) forget(pid int) {
	z.mu.Lock()
	defer z.mu.Unlock()
	delete(z.exits, pid)
}

func (z *zygote) stop() {
	z.cmd.Process.Kill()
	<-z.dead
}

// zygoteLocked returns a live zygote, starting one if needed. w.mu is held.
func (w *Warm) zygoteLocked() (*zygote, error) {
	if w.z != nil {
		select {
		case <-w.z.dead:
			slog.Warn("python zygote died; starting a new one", "pid", w.z.cmd.Process.Pid)
			w.z = nil
			w.restarts.Add(1)
		default:
			return w.z, nil
		}
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("executor: control socket: %w", err)
	}
	parent, child := os.NewFile(uintptr(fds[0]), "zygote-ctl"), os.NewFile(uintptr(fds[1]), "zygote-ctl-child")
	defer child.Close()
	fc, err := net.FileConn(parent)
	parent.Close()
	if err != nil {
		return nil, fmt.Errorf("executor: control socket: %w", err)
	}
	argv := sandboxArgs(w.opt, nil, []string{w.opt.WorkDir}, []string{w.opt.Python, "-E", "-s", "-u", filepath.Join(w.dir, "zygote.py")})
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = w.opt.WorkDir
	isolate := "0"
	if w.opt.Sandbox == "bwrap" {
		isolate = "1"
	}
	cmd.Env = append(childEnv(w.opt.WorkDir, w.mplDir, w.opt.Passthrough), "PYRUNNER_PRELOAD="+w.opt.Preload,
		"PYRUNNER_ISOLATE="+isolate, fmt.Sprintf("PYRUNNER_PREFORK=%d", prefork))
	cmd.Stdout, cmd.Stderr = logLines("zygote"), logLines("zygote")
	cmd.WaitDelay = time.Second // children holding the output open do not hold up noticing its death
	cmd.ExtraFiles = []*os.File{child}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		fc.Close()
		return nil, fmt.Errorf("executor: start zygote: %w", err)
	}
	z := &zygote{cmd: cmd, ctl: fc.(*net.UnixConn), replies: make(chan map[string]any, 1),
		dead: make(chan struct{}), exits: map[int]chan int{}}
	ready := make(chan error, 1)
	go z.read(ready)
	select {
	case err := <-ready:
		if err != nil {
			return nil, err
		}
	case <-time.After(60 * time.Second):
		z.stop()
		return nil, errors.New("executor: python zygote did not become ready in 60 s")
	}
	slog.Info("python zygote ready", "pid", cmd.Process.Pid, "preload", w.opt.Preload)
	w.z = z
	return z, nil
}

// read dispatches the zygote's messages until its control socket closes.
func (z *zygote) read(ready chan<- error) {
	defer func() {
		z.ctl.Close()
		z.cmd.Wait()
		close(z.dead)
	}()
	buf := make([]byte, 1<<16)
	first := true
	for {
		n, err := z.ctl.Read(buf)
		if err != nil || n == 0 {
			if first {
				ready <- fmt.Errorf("executor: python zygote exited before it was ready (see the worker log for its error)")
			}
			return
		}
		var m map[string]any
		if json.Unmarshal(buf[:n], &m) != nil {
			continue
		}
		switch m["op"] {
		case "ready":
			first = false
			ready <- nil
		case "forked", "fork_failed":
			z.replies <- m
		case "exit":
			pid, _ := m["pid"].(float64)
			code, _ := m["code"].(float64)
			z.exitChan(int(pid)) <- int(code)
		}
	}
}

// prefork is how many children the zygote keeps forked ahead of time.
const prefork = 2

// fork asks the zygote for a child wired to chanEnd, stdout and stderr.
// isolate, when set, is what the child's namespaces need of the run.
func (w *Warm) fork(runID, dir string, env []string, isolate map[string]any, files []*os.File) (*zygote, int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	z, err := w.zygoteLocked()
	if err != nil {
		return nil, 0, err
	}
	envMap := map[string]string{}
	for _, kv := range env {
		for i := 0; i < len(kv); i++ {
			if kv[i] == '=' {
				envMap[kv[:i]] = kv[i+1:]
				break
			}
		}
	}
	req := map[string]any{"op": "fork", "run": runID, "dir": dir, "env": envMap}
	if isolate != nil {
		req["isolate"] = isolate
	}
	b, _ := json.Marshal(req)
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	if _, _, err := z.ctl.WriteMsgUnix(b, syscall.UnixRights(fds...), nil); err != nil {
		return nil, 0, fmt.Errorf("executor: ask zygote to fork: %w", err)
	}
	select {
	case m := <-z.replies:
		if m["op"] != "forked" {
			return nil, 0, fmt.Errorf("executor: zygote could not fork: %v", m["error"])
		}
		pid, _ := m["pid"].(float64)
		return z, int(pid), nil
	case <-z.dead:
		return nil, 0, errors.New("executor: python zygote died while forking")
	}
}

// Run forks a child of the zygote for job and supervises it.
func (w *Warm) Run(ctx context.Context, job Job) (*Output, error) {
	isolated := w.opt.Sandbox == "bwrap"
	rs, cleanup, err := prepareRun(w.opt.WorkDir, job.RunID, isolated)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	chanEnd := rs.child
	outR, outW, err := os.Pipe()
	if err != nil {
		chanEnd.Close()
		return nil, fmt.Errorf("executor: pipe: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		chanEnd.Close()
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("executor: pipe: %w", err)
	}
	var iso map[string]any
	if isolated {
		iso = isolateParams(rs, w.opt.Limits)
	}
	z, pid, err := w.fork(job.RunID, rs.dir, childEnv(rs.dir, w.mplDir, w.opt.Passthrough), iso, []*os.File{chanEnd, outW, errW})
	chanEnd.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return nil, err
	}
	stdout := &capBuffer{max: w.opt.Limits.MaxOutputBytes}
	stderr := &capBuffer{max: w.opt.Limits.MaxOutputBytes}
	var copies sync.WaitGroup
	outputClosed := make(chan struct{})
	for _, p := range []struct {
		r *os.File
		b *capBuffer
	}{{outR, stdout}, {errR, stderr}} {
		copies.Add(1)
		go func() { io.Copy(p.b, p.r); copies.Done() }()
	}
	go func() { copies.Wait(); close(outputClosed) }()
	var zygoteDied atomic.Bool
	wait := func() int {
		var code int
		select {
		case code = <-z.exitChan(pid):
		case <-z.dead:
			zygoteDied.Store(true)
			code = -int(syscall.SIGKILL)
		}
		z.forget(pid)
		// Output still in the pipes arrives right after the exit; a
		// grandchild holding them open is not waited for past a second.
		select {
		case <-outputClosed:
		case <-time.After(time.Second):
		}
		outR.Close()
		errR.Close()
		return code
	}
	out, err := supervise(ctx, job, w.opt.Limits, rs, isolated, pid, wait, outputClosed, stdout, stderr)
	if err == nil && zygoteDied.Load() && !out.OK {
		out.Error = "the Python zygote died during the run (it is restarted for the next run)"
		out.TimedOut = false
	}
	return out, err
}

// logLines is a writer that logs each line written to it (the zygote's own
// output: a preload's warning, a traceback) through slog.
func logLines(source string) io.Writer {
	r, w := io.Pipe()
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			slog.Warn(sc.Text(), "component", source)
		}
	}()
	return w
}
