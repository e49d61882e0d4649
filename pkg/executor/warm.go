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

	mu sync.Mutex // guards z
	z  *zygote

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
	cmd  *exec.Cmd
	ctl  *net.UnixConn
	dead chan struct{} // closed when the zygote is gone

	// avail is signalled when a ready child arrives; failed says why the
	// zygote could not fork one.
	avail  chan struct{}
	failed chan string

	pid  int // the zygote's own pid (cmd's is bubblewrap's when sandboxed)
	nice int // its background priority (Warm.nice)

	mu      sync.Mutex
	ready   []standby        // ready children not yet taken, oldest first
	waiters int              // runs waiting for a ready child
	exits   map[int]chan int // pid → its exit code, once known
}

// standby is a ready child: forked, isolated, waiting on conn for a run.
type standby struct {
	pid  int
	conn *os.File
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

// take returns a ready child, waiting for the zygote to fork one if none
// is ready.
func (z *zygote) take(ctx context.Context) (standby, error) {
	for {
		z.mu.Lock()
		var c standby
		if len(z.ready) > 0 {
			c, z.ready = z.ready[0], z.ready[1:]
		}
		more := len(z.ready) > 0
		z.mu.Unlock()
		if more { // pass the word on to the next waiter
			z.signal()
		}
		if c.conn != nil {
			return c, nil
		}
		if err := z.awaitReady(ctx); err != nil {
			return standby{}, err
		}
	}
}

// awaitReady waits for the zygote to report a ready child. Meanwhile the
// zygote's work is not background work: a run waits on it, so it has
// normal priority until no run waits.
func (z *zygote) awaitReady(ctx context.Context) error {
	z.hurry(1)
	defer z.hurry(-1)
	select {
	case <-z.avail:
		return nil
	case why := <-z.failed:
		return fmt.Errorf("executor: zygote could not fork: %s", why)
	case <-z.dead:
		return errors.New("executor: python zygote died")
	case <-ctx.Done():
		return ErrCancelled
	}
}

// hurry counts the runs waiting for a child (d is +1 or -1), and sets the
// zygote's priority to normal while there are any, to its background
// nice value when there are none.
func (z *zygote) hurry(d int) {
	if z.nice == 0 {
		return
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	z.waiters += d
	prio := -1
	switch {
	case d > 0 && z.waiters == 1:
		prio = 0
	case d < 0 && z.waiters == 0:
		prio = z.nice
	}
	if prio >= 0 {
		if err := syscall.Setpriority(syscall.PRIO_PROCESS, z.pid, prio); err != nil {
			slog.Warn("could not set the zygote's priority", "pid", z.pid, "nice", prio, "err", err)
		}
	}
}

// send writes one message to the zygote.
func (z *zygote) send(msg any) error {
	b, err := json.Marshal(msg)
	if err != nil {
		return fmt.Errorf("encode message to the zygote: %w", err)
	}
	_, err = z.ctl.Write(b)
	return err
}

func (z *zygote) signal() {
	select {
	case z.avail <- struct{}{}:
	default:
	}
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
		"PYRUNNER_ISOLATE="+isolate, fmt.Sprintf("PYRUNNER_PREFORK=%d", prefork), fmt.Sprintf("PYRUNNER_NICE=%d", w.nice))
	cmd.Stdout, cmd.Stderr = logLines("zygote"), logLines("zygote")
	cmd.WaitDelay = time.Second // children holding the output open do not hold up noticing its death
	cmd.ExtraFiles = []*os.File{child}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		fc.Close()
		return nil, fmt.Errorf("executor: start zygote: %w", err)
	}
	z := &zygote{cmd: cmd, ctl: fc.(*net.UnixConn), dead: make(chan struct{}),
		avail: make(chan struct{}, 1), failed: make(chan string, 1), exits: map[int]chan int{}, nice: w.nice}
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
		_ = z.cmd.Wait() // how it ended is logged by its reader
		z.mu.Lock()
		for _, c := range z.ready {
			c.conn.Close()
		}
		z.ready = nil
		z.mu.Unlock()
		close(z.dead)
	}()
	buf := make([]byte, 1<<16)
	oob := make([]byte, syscall.CmsgSpace(4))
	first := true
	for {
		n, oobn, _, _, err := z.ctl.ReadMsgUnix(buf, oob)
		if err != nil || n == 0 {
			if first {
				ready <- fmt.Errorf("executor: python zygote exited before it was ready (see the worker log for its error)")
			}
			return
		}
		files := receivedFiles(oob[:oobn])
		if err := z.handle(buf[:n], files); err != nil {
			slog.Error("bad message from the python zygote", "err", err)
			closeAll(files)
			continue
		}
		if first && z.pid != 0 {
			first = false
			ready <- nil
		}
	}
}

// handle acts on one message from the zygote; files came with it.
func (z *zygote) handle(data []byte, files []*os.File) error {
	var op opOnly
	if err := json.Unmarshal(data, &op); err != nil {
		return fmt.Errorf("decode zygote message: %w", err)
	}
	switch op.Op {
	case opReady:
		var m readyMsg
		if err := decodeStrict(data, &m); err != nil {
			return err
		}
		z.pid = m.PID
	case opStandby:
		var m standbyMsg
		if err := decodeStrict(data, &m); err != nil {
			return err
		}
		if len(files) != 1 {
			return fmt.Errorf("standby of child %d came with %d descriptors, not 1", m.PID, len(files))
		}
		z.mu.Lock()
		z.ready = append(z.ready, standby{pid: m.PID, conn: files[0]})
		z.mu.Unlock()
		select { // the zygote forks again: an earlier failure is past
		case <-z.failed:
		default:
		}
		z.signal()
	case opForkFailed:
		var m forkFailedMsg
		if err := decodeStrict(data, &m); err != nil {
			return err
		}
		select {
		case z.failed <- m.Error:
		default:
		}
	case opExit:
		var m exitMsg
		if err := decodeStrict(data, &m); err != nil {
			return err
		}
		if !z.dropReady(m.PID) { // a ready child that died is replaced by the zygote
			z.exitChan(m.PID) <- m.Code
		}
	default:
		return fmt.Errorf("unknown op %q from the zygote", op.Op)
	}
	return nil
}

// dropReady forgets a ready child that died before it was taken.
func (z *zygote) dropReady(pid int) bool {
	z.mu.Lock()
	defer z.mu.Unlock()
	for i, c := range z.ready {
		if c.pid == pid {
			c.conn.Close()
			z.ready = append(z.ready[:i], z.ready[i+1:]...)
			return true
		}
	}
	return false
}

// receivedFiles are the descriptors passed in a message's control data.
func receivedFiles(oob []byte) []*os.File {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := syscall.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			syscall.CloseOnExec(fd)
			files = append(files, os.NewFile(uintptr(fd), "zygote-child"))
		}
	}
	return files
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// prefork is how many children the zygote keeps forked ahead of time.
const prefork = 2

// backgroundNice is the nice value of the zygote's background work (see
// Warm.nice): low enough that on a busy machine the runs in progress get
// the CPU first, high enough that a child is ready in time under load.
const backgroundNice = 10

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
	var iso *isolateMsg
	if isolated {
		iso = isolateParams(rs, w.opt.Limits)
	}
	conv := talk(ctx, rs, job, w.opt.Limits, isolated)
	z, child, err := w.start(ctx, job.RunID, rs.dir, childEnv(rs.dir, w.mplDir, w.opt.Passthrough), iso, []*os.File{chanEnd, outW, errW})
	chanEnd.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return nil, err
	}
	handed = true
	defer child.conn.Close()
	pid := child.pid
	stdout := &capBuffer{max: w.opt.Limits.MaxOutputBytes}
	stderr := &capBuffer{max: w.opt.Limits.MaxOutputBytes}
	var copies sync.WaitGroup
	outputClosed := make(chan struct{})
	for _, p := range []struct {
		r *os.File
		b *capBuffer
	}{{outR, stdout}, {errR, stderr}} {
		copies.Add(1)
		go func() {
			defer copies.Done()
			// A read error ends the output like its end: the run's
			// outcome comes from its result and exit, not its pipes.
			_, _ = io.Copy(p.b, p.r)
		}()
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
		removeDir()
		return code
	}
	out, err := supervise(ctx, job, w.opt.Limits, rs, conv, pid, wait, outputClosed, stdout, stderr)
	if err == nil && !out.OK && !zygoteDied.Load() && !tookRun(child.conn) {
		return nil, errNotTaken
	}
	if err == nil && zygoteDied.Load() && !out.OK {
		out.Error = "the Python zygote died during the run (it is restarted for the next run)"
		out.TimedOut = false
	}
	return out, err
}

// tookRun tells, once a child has ended, whether it received its run: a
// child acknowledges the run on its standby socket as soon as it has it
// (python/zygote.py, standby).
func tookRun(conn *os.File) bool {
	var b [1]byte
	n, _, err := syscall.Recvfrom(int(conn.Fd()), b[:], syscall.MSG_DONTWAIT)
	return err == nil && n == 1
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
