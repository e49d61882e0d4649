package executor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ztrade/pyrunner/pkg/wire"
	"golang.org/x/sys/unix"
)

// hardKillGrace is how long past the run's own time limit (which the
// harness enforces with SIGALRM, keeping the output so far) the worker
// waits before it SIGKILLs the process group, for code stuck outside the
// interpreter loop.
const hardKillGrace = 2 * time.Second

// supervise follows a started harness process and its conversation
// (talk), enforces the hard time limit and cancellation by killing its
// process group, and assembles the Output. wait must reap the process (and collect its output) and return
// its exit code. outputClosed, when not nil, is closed once the run's
// stdout and stderr are: the harness closes them just before it sends its
// result, so a result and closed output end the run at once, and the
// process is reaped (and what it left in its group killed) after the
// answer instead of before it.
func supervise(ctx context.Context, job Job, lim Limits, rs *runSetup, convDone <-chan convResult, pid int, wait func() int, outputClosed <-chan struct{}, stdout, stderr *capBuffer) (*Output, error) {
	conn := rs.conn
	oomBefore := oomSeen.recent()
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
		over      <-chan struct{} // outputClosed, once the result is in
	)
	for waitDone != nil {
		select {
		case conv = <-convDone:
			haveConv, convDone = true, nil
			if tooLarge := (*errTooLarge)(nil); errors.As(conv.err, &tooLarge) {
				// Nothing more from this run will be read: end it.
				syscall.Kill(-pid, syscall.SIGKILL)
			}
			if conv.res != nil {
				over = outputClosed
			}
		case <-over:
			// The harness exits 0 right after its result (serve, then
			// os._exit(0)): end its group now, and reap it in the
			// background.
			go func(done <-chan int) { <-done }(waitDone)
			waitDone, code = nil, 0
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
	// The process is gone (or, above, its result is in): kill anything it
	// left in its group, and stop waiting on the channel.
	syscall.Kill(-pid, syscall.SIGKILL)
	if !haveConv {
		if err := conn.SetDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
			conn.Close() // the conversation ends either way
		}
		conv = <-convDone
	}
	// Only a run killed without its result asks whether the OOM killer
	// struck meanwhile: /proc/vmstat is read once per ended run at most.
	oom := conv.res == nil && code == -int(syscall.SIGKILL) && oomKills() > oomBefore
	return assemble(job, conv, code, stdout, stderr, cancelled, hardKill, oom)
}

// assemble is the Output of a run that has ended: code is its exit code,
// conv its conversation; cancelled and hardKill say how supervise ended
// it, oom that the kernel's OOM killer struck meanwhile.
func assemble(job Job, conv convResult, code int, stdout, stderr *capBuffer, cancelled, hardKill, oom bool) (*Output, error) {
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
		out.TimedOut = conv.res.TimedOut
	case hardKill:
		out.TimedOut = true
		out.Error = timeoutText(job.Timeout)
	default:
		out.Error = diedText(out.ExitCode, conv.err, oom)
	}
	if out.Images == nil {
		out.Images = []wire.Image{}
	}
	if len(out.Result) == 0 {
		out.Result = []byte("null")
	}
	return out, nil
}

// oomSeen caches the host's count of OOM kills for the starts of runs:
// reading /proc/vmstat (a few kilobytes the kernel formats) for each of
// a hundred runs a second was a twentieth of a busy worker's CPU. A count
// up to oomMaxAge old can only make an OOM kill just before a run's start
// count as one during it, for a run that was SIGKILLed anyway.
var oomSeen oomCache

const oomMaxAge = 250 * time.Millisecond

type oomCache struct {
	mu    sync.Mutex
	at    time.Time
	count int64
}

// recent is the count of OOM kills, read again when the last read is
// older than oomMaxAge.
func (c *oomCache) recent() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := time.Now(); now.Sub(c.at) > oomMaxAge {
		c.at, c.count = now, oomKills()
	}
	return c.count
}

// oomKills is the host's count of OOM kills so far (/proc/vmstat), or 0.
func oomKills() int64 {
	b, err := os.ReadFile("/proc/vmstat")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

func timeoutText(d time.Duration) string { return fmt.Sprintf("timeout after %ds", int(d/time.Second)) }

// diedText explains a harness that ended without sending a result: what
// is known, not a guess. oom says the kernel's OOM killer struck during
// the run.
func diedText(code int, err error, oom bool) string {
	var tooLarge *errTooLarge
	switch {
	case errors.As(err, &tooLarge):
		return fmt.Sprintf("result too large: %d bytes (limit %d)", tooLarge.size, tooLarge.limit)
	case code == -int(syscall.SIGKILL) && oom:
		return "python was killed by the kernel's out-of-memory killer (SIGKILL): the host ran out of memory"
	case code == -int(syscall.SIGKILL):
		return "python was killed by SIGKILL from outside the run (not by a pyrunner limit)"
	case code == -int(syscall.SIGXCPU):
		return "python went over its CPU time limit (SIGXCPU)"
	case code == -int(syscall.SIGXFSZ):
		return "python wrote a file over the size limit (SIGXFSZ)"
	case code == -int(syscall.SIGSEGV), code == -int(syscall.SIGBUS), code == -int(syscall.SIGABRT):
		return fmt.Sprintf("python crashed (%s)", unix.SignalName(syscall.Signal(-code)))
	case code < 0:
		return fmt.Sprintf("python was killed by signal %s", unix.SignalName(syscall.Signal(-code)))
	case err != nil && !errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Sprintf("python exited with code %d before returning a result (%v)", code, err)
	}
	return fmt.Sprintf("python exited with code %d before returning a result", code)
}
