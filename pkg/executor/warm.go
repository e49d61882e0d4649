package executor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Warm keeps one long-lived Python zygote (python/zygote.py) that has
// imported numpy, pandas and matplotlib and keeps children forked ahead of
// the runs (prefork of them, ready in their namespaces); each run is given
// straight to one, over the socket the zygote handed over with it. A
// zygote that dies is replaced on the next run; the runs it had in flight
// end with a clear error.
type Warm struct {
	opt         Options
	dir         string // where harness.py and zygote.py are written
	mplDir      string
	sandboxNote string

	mu     sync.Mutex // guards z and closed
	z      *zygote
	closed bool
	live   atomic.Pointer[zygote] // z once it is ready, for Ready without mu

	restarts atomic.Int64 // zygotes that died and were replaced

	// nice is the priority (nice value) of the zygote's background work:
	// forking, getting children ready, and a child's exit after its
	// result. A taken child is set back to 0 for its run. 0 (no
	// background priority) when the worker cannot raise priorities.
	nice int
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
	if os.Geteuid() == 0 {
		w.nice = backgroundNice
	}
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

// Ready reports whether the zygote is up: false from its death until a
// new one is ready (watch starts it at once).
func (w *Warm) Ready() bool {
	z := w.live.Load()
	if z == nil {
		return false
	}
	select {
	case <-z.dead:
		return false
	default:
		return true
	}
}

// Prepare returns once the zygote is up, starting one if it is not.
func (w *Warm) Prepare(context.Context) error {
	if w.Ready() {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return errors.New("executor: closed")
	}
	_, err := w.zygoteLocked()
	return err
}

// watch starts a new zygote as soon as z dies, so that the worker is
// ready again before a run needs it rather than when one arrives.
func (w *Warm) watch(z *zygote) {
	<-z.dead
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || w.z != z {
		return
	}
	if _, err := w.zygoteLocked(); err != nil {
		slog.Error("could not restart the python zygote; the next run tries again", "err", err)
	}
}

// Close stops the zygote (its children die with it).
func (w *Warm) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
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

// start gives a ready child of the zygote a run: its directory,
// environment and, when isolate is set, what its namespaces need of the
// run; files are its channel, stdout and stderr. The caller closes the
// child's standby socket (see tookRun).
func (w *Warm) start(ctx context.Context, runID, dir string, env []string, isolate *isolateMsg, files []*os.File) (*zygote, standby, error) {
	w.mu.Lock()
	z, err := w.zygoteLocked()
	w.mu.Unlock()
	if err != nil {
		return nil, standby{}, err
	}
	envMap := map[string]string{}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			envMap[k] = v
		}
	}
	b, err := json.Marshal(runMsg{Op: opRun, Run: runID, Dir: dir, Env: envMap, Isolate: isolate})
	if err != nil {
		return nil, standby{}, fmt.Errorf("executor: encode run message: %w", err)
	}
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	for {
		c, err := z.take(ctx)
		if err != nil {
			return nil, standby{}, err
		}
		if w.nice > 0 { // the run is foreground work: back to normal priority
			if err := syscall.Setpriority(syscall.PRIO_PROCESS, c.pid, 0); err != nil {
				slog.Warn("could not raise a python child's priority", "pid", c.pid, "err", err)
			}
		}
		err = syscall.Sendmsg(int(c.conn.Fd()), b, syscall.UnixRights(fds...), nil, syscall.MSG_NOSIGNAL)
		if err == nil {
			// Only now the zygote forks the next: not while this run starts.
			if err := z.send(tookMsg{Op: opTook, PID: c.pid}); err != nil {
				slog.Warn("could not tell the zygote a child was taken", "pid", c.pid, "err", err)
			}
			return z, c, nil
		}
		c.conn.Close()
		// The child died after it was taken: its exit is reported as any
		// run's; take it and try the next.
		slog.Warn("a ready python child was gone; trying the next", "pid", c.pid, "err", err)
		select {
		case <-z.exitChan(c.pid):
		case <-z.dead:
		}
		z.forget(c.pid)
	}
}

// Run gives job to a ready child of the zygote and supervises it. A child
// that dies before it took its run (it was ready, then killed: the OOM
// killer, an operator) costs the run nothing: another child takes it.
func (w *Warm) Run(ctx context.Context, job Job) (*Output, error) {
	for tries := 1; ; tries++ {
		out, err := w.runOnce(ctx, job)
		if !errors.Is(err, errNotTaken) || tries == 3 {
			return out, err
		}
		slog.Warn("a ready python child died before it took its run; giving the run to another", "run_id", job.RunID)
	}
}

// errNotTaken: the child given a run died before it received it.
var errNotTaken = errors.New("executor: no python child took the run (each died before it could)")

func (w *Warm) runOnce(ctx context.Context, job Job) (*Output, error) {
	isolated := w.opt.Sandbox == "bwrap"
	rs, err := newRunSetup(w.opt.WorkDir, job.RunID, isolated)
	if err != nil {
		return nil, err
	}
	defer rs.conn.Close()
	// The run's directory goes once its process has (wait, below): an
	// isolated run's tmpfs is mounted on it in the run's namespace, and
	// removing it while that lives costs the kernel a detach on the
	// run's path. Until a child has the run, it goes on return.
	removeDir := func() { os.RemoveAll(rs.dir) }
	handed := false
	defer func() {
		if !handed {
			removeDir()
		}
	}()
	chanEnd := rs.child
	output, err := newPipes(w.opt.Limits.MaxOutputBytes)
	if err != nil {
		chanEnd.Close()
		return nil, err
	}
	var iso *isolateMsg
	if isolated {
		iso = isolateParams(rs, w.opt.Limits)
	}
	conv := talk(ctx, rs, job, w.opt.Limits, isolated)
	z, child, err := w.start(ctx, job.RunID, rs.dir, childEnv(rs.dir, w.mplDir, w.opt.Passthrough), iso,
		[]*os.File{chanEnd, output.w[0], output.w[1]})
	chanEnd.Close()
	output.closeWrite()
	if err != nil {
		output.closeRead()
		return nil, err
	}
	handed = true
	defer child.conn.Close()
	pid := child.pid
	output.copy()
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
		case <-output.closed:
		case <-time.After(time.Second):
		}
		output.closeRead()
		removeDir()
		return code
	}
	out, err := supervise(ctx, job, w.opt.Limits, rs, conv, pid, wait, output.closed, output.stdout, output.stderr)
	if err == nil && !out.OK && !zygoteDied.Load() && !tookRun(child.conn) {
		return nil, errNotTaken
	}
	if err == nil && zygoteDied.Load() && !out.OK {
		out.Error = "the Python zygote died during the run (it is restarted for the next run)"
		out.TimedOut = false
	}
	return out, err
}

// pipes are a warm run's stdout and stderr: the child writes to w, the
// worker copies r into stdout and stderr (capped), and closed is closed
// once both have ended.
type pipes struct {
	r, w           [2]*os.File
	stdout, stderr *capBuffer
	closed         chan struct{}
}

func newPipes(max int) (*pipes, error) {
	p := &pipes{stdout: &capBuffer{max: max}, stderr: &capBuffer{max: max}, closed: make(chan struct{})}
	for i := range 2 {
		r, w, err := os.Pipe()
		if err != nil {
			p.closeRead()
			p.closeWrite()
			return nil, fmt.Errorf("executor: pipe: %w", err)
		}
		p.r[i], p.w[i] = r, w
	}
	return p, nil
}

// copy reads both pipes until they end.
func (p *pipes) copy() {
	var copies sync.WaitGroup
	for i, b := range []*capBuffer{p.stdout, p.stderr} {
		copies.Add(1)
		go func() {
			defer copies.Done()
			// A read error ends the output like its end: the run's
			// outcome comes from its result and exit, not its pipes.
			_, _ = io.Copy(b, p.r[i])
		}()
	}
	go func() { copies.Wait(); close(p.closed) }()
}

// closeWrite closes the child's ends (it has its own copies).
func (p *pipes) closeWrite() {
	for _, f := range p.w {
		if f != nil {
			f.Close()
		}
	}
}

// closeRead closes the worker's ends.
func (p *pipes) closeRead() {
	for _, f := range p.r {
		if f != nil {
			f.Close()
		}
	}
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
