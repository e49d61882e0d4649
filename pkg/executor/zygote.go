package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

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
	w.live.Store(z)
	go w.watch(z)
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

// tookRun tells, once a child has ended, whether it received its run: a
// child acknowledges the run on its standby socket as soon as it has it
// (python/zygote.py, standby).
func tookRun(conn *os.File) bool {
	var b [1]byte
	n, _, err := syscall.Recvfrom(int(conn.Fd()), b[:], syscall.MSG_DONTWAIT)
	return err == nil && n == 1
}
