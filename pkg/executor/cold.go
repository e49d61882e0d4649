package executor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/ztrade/pyrunner/pkg/proc"
	"github.com/ztrade/pyrunner/pkg/research"
)

// Cold starts a fresh interpreter for every run: simple and fully
// isolated, but each run pays for importing pandas (~0.6 s).
type Cold struct {
	opt     Options
	harness string
	mplDir  string
}

// NewCold prepares the work dir and the harness.
func NewCold(opt Options) (*Cold, error) {
	py, mpl, err := prepareWorkDir(opt)
	if err != nil {
		return nil, err
	}
	return &Cold{opt: opt, harness: filepath.Join(py, "harness.py"), mplDir: mpl}, nil
}

// Mode is "cold".
func (c *Cold) Mode() string { return "cold" }

// Close does nothing: a cold executor holds no processes between runs.
func (c *Cold) Close() error { return nil }

// hardKillGrace is how long past the run's own time limit (which the
// harness enforces with SIGALRM, keeping the output so far) the worker
// waits before it SIGKILLs the process group, for code stuck outside the
// interpreter loop.
const hardKillGrace = 2 * time.Second

// Run runs job in a new process group and a fresh working directory.
func (c *Cold) Run(ctx context.Context, job Job) (*Output, error) {
	dir, conn, childEnd, cleanup, err := prepareRun(c.opt.WorkDir, job.RunID)
	if err != nil {
		return nil, err
	}
	defer cleanup()

	argv := sandboxArgs(c.opt, []string{filepath.Dir(c.harness), c.mplDir}, []string{dir}, []string{c.opt.Python, "-I", "-u", c.harness})
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = childEnv(dir, c.mplDir, c.opt.Passthrough)
	cmd.Stdin = nil
	stdout := &capBuffer{max: c.opt.Limits.MaxOutputBytes}
	stderr := &capBuffer{max: c.opt.Limits.MaxOutputBytes}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.ExtraFiles = []*os.File{childEnd}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		childEnd.Close()
		return nil, fmt.Errorf("executor: start %s: %w", c.opt.Python, err)
	}
	childEnd.Close()
	wait := func() int { cmd.Wait(); return proc.ExitCode(cmd.ProcessState) }
	return supervise(ctx, job, c.opt.Limits, conn, cmd.Process.Pid, wait, stdout, stderr)
}

// supervise talks to a started harness process, enforces the hard time
// limit and cancellation by killing its process group, and assembles the
// Output. wait must reap the process (and collect its output) and return
// its exit code.
func supervise(ctx context.Context, job Job, lim Limits, conn net.Conn, pid int, wait func() int, stdout, stderr *capBuffer) (*Output, error) {
	type convResult struct {
		res *resultMsg
		err error
	}
	convDone := make(chan convResult, 1)
	go func() {
		res, err := conversation(ctx, conn, job, lim)
		convDone <- convResult{res, err}
	}()
	waitDone := make(chan int, 1)
	go func() { waitDone <- wait() }()

	hard := time.NewTimer(job.Timeout + hardKillGrace)
	defer hard.Stop()
	kill := func(why string) {
		logKill(job.RunID, pid, why)
		syscall.Kill(-pid, syscall.SIGKILL)
	}
	var (
		conv      convResult
		code      int
		haveConv  bool
		hardKill  bool
		cancelled bool
	)
	for waitDone != nil {
		select {
		case conv = <-convDone:
			haveConv, convDone = true, nil
		case code = <-waitDone:
			waitDone = nil
		case <-hard.C:
			hardKill = true
			kill("time limit")
		case <-ctx.Done():
			cancelled = true
			kill("cancelled")
			ctx = context.Background()
		}
	}
	// The process is gone: kill anything it left in its group, and stop
	// waiting on the channel.
	syscall.Kill(-pid, syscall.SIGKILL)
	if !haveConv {
		conn.SetDeadline(time.Now().Add(100 * time.Millisecond))
		conv = <-convDone
	}
	out := &Output{ExitCode: code}
	out.Stdout, out.StdoutTruncated = stdout.String()
	out.Stderr, out.StderrTruncated = stderr.String()
	switch {
	case cancelled:
		return out, ErrCancelled
	case conv.res != nil:
		out.OK = conv.res.OK
		if conv.res.Error != nil {
			out.Error = *conv.res.Error
		}
		out.Result = conv.res.Result
		out.Images = conv.res.Images
		out.Warnings = conv.res.Warnings
		out.TimedOut = !out.OK && out.Error == timeoutText(job.Timeout)
	case hardKill:
		out.TimedOut = true
		out.Error = timeoutText(job.Timeout)
	default:
		out.Error = diedText(out.ExitCode, conv.err)
	}
	if out.Images == nil {
		out.Images = []research.Image{}
	}
	if len(out.Result) == 0 {
		out.Result = []byte("null")
	}
	return out, nil
}

func timeoutText(d time.Duration) string { return fmt.Sprintf("timeout after %ds", int(d/time.Second)) }

// diedText explains a harness that ended without sending a result.
func diedText(code int, err error) string {
	switch {
	case code == -int(syscall.SIGKILL):
		return "python was killed (SIGKILL): it may have run out of memory"
	case code < 0:
		return fmt.Sprintf("python was killed by signal %s", syscall.Signal(-code))
	case err != nil && !errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Sprintf("python exited with code %d before returning a result (%v)", code, err)
	}
	return fmt.Sprintf("python exited with code %d before returning a result", code)
}
