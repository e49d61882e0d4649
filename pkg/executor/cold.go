package executor

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/ztrade/pyrunner/pkg/proc"
)

// Cold starts a fresh interpreter for every run: simple and fully
// isolated, but each run pays for importing pandas (~0.6 s).
type Cold struct {
	opt         Options
	harness     string
	mplDir      string
	sandboxNote string
}

// NewCold prepares the work dir and the harness, and resolves the sandbox.
func NewCold(opt Options) (*Cold, error) {
	py, mpl, err := prepareWorkDir(opt)
	if err != nil {
		return nil, err
	}
	c := &Cold{opt: opt, harness: filepath.Join(py, "harness.py"), mplDir: mpl}
	if c.opt.Sandbox, c.sandboxNote, err = resolveSandbox(opt, py); err != nil {
		return nil, err
	}
	return c, nil
}

// Mode is "cold".
func (c *Cold) Mode() string { return "cold" }

// Sandbox is the sandbox in force.
func (c *Cold) Sandbox() (string, string) { return c.opt.Sandbox, c.sandboxNote }

// Close does nothing: a cold executor holds no processes between runs.
func (c *Cold) Close() error { return nil }

// Ready is always true: a cold run starts its own interpreter.
func (c *Cold) Ready() bool { return true }

// Prepare has nothing to do.
func (c *Cold) Prepare(context.Context) error { return nil }

// Run runs job in a new process group and a fresh working directory.
func (c *Cold) Run(ctx context.Context, job Job) (*Output, error) {
	isolated := c.opt.Sandbox == "bwrap"
	rs, err := newRunSetup(c.opt.WorkDir, job.RunID, isolated)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(rs.dir)
	defer rs.conn.Close()
	childEnd := rs.child
	conv := talk(ctx, rs, job, c.opt.Limits, isolated)

	argv := sandboxArgs(c.opt, []string{filepath.Dir(c.harness), c.mplDir}, []string{rs.dir}, []string{c.opt.Python, "-I", "-u", c.harness})
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = rs.dir
	cmd.Env = childEnv(rs.dir, c.mplDir, c.opt.Passthrough)
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
	wait := func() int {
		cmd.Wait()
		code := proc.ExitCode(cmd.ProcessState)
		if c.opt.Sandbox == "bwrap" && code > 128 {
			code = 128 - code // bubblewrap passes on a signal as 128+N
		}
		return code
	}
	return supervise(ctx, job, c.opt.Limits, rs, conv, cmd.Process.Pid, wait, nil, stdout, stderr)
}
