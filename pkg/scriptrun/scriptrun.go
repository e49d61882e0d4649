// Package scriptrun runs one script as a process of its own: own process
// group, stdin from /dev/null, output written in full to log files and
// handed in batches to a sink (the worker streams it into Redis). Stopping
// is SIGTERM to the whole group, a grace period, then SIGKILL; whatever the
// script left behind in its group is killed when it exits.
package scriptrun

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/ztrade/pyrunner/pkg/proc"
)

// ErrKill, as the cause of the run's context (context.WithCancelCause),
// ends the script with SIGKILL at once, without the SIGTERM grace: for a
// worker fencing itself, when another copy may be about to start.
var ErrKill = errors.New("killed at once")

// Spec describes one script run.
type Spec struct {
	Python string
	Script string // absolute path
	Args   []string
	Dir    string
	Env    []string
	// StdoutPath and StderrPath receive the full output.
	StdoutPath, StderrPath string
	// Grace is how long a stopped script has between SIGTERM and SIGKILL.
	Grace time.Duration
	// Timeout ends the script (as a stop) after this long; 0 means never.
	Timeout time.Duration
	// OnStart is called with the pid once the process runs.
	OnStart func(pid int)
	// OnOutput receives output in batches, at most every FlushEvery.
	OnOutput   func(stream string, data []byte)
	FlushEvery time.Duration
}

// Argv is the command line the spec runs.
func (s Spec) Argv() []string {
	return append([]string{s.Python, "-u", s.Script}, s.Args...)
}

// Result is how a script ended.
type Result struct {
	// ExitCode is the exit status, or minus the signal that killed it.
	ExitCode int
	// Stopped is set when ctx was cancelled (a stop request or shutdown).
	Stopped bool
	// Killed is set when the grace ran out and SIGKILL was sent.
	Killed   bool
	TimedOut bool
}

// Run starts the script and waits for it. It returns an error only when
// the script could not be started.
func Run(ctx context.Context, s Spec) (Result, error) {
	for _, p := range []string{s.StdoutPath, s.StderrPath} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return Result{}, fmt.Errorf("scriptrun: logs dir: %w", err)
		}
	}
	outFile, err := os.Create(s.StdoutPath)
	if err != nil {
		return Result{}, fmt.Errorf("scriptrun: %w", err)
	}
	defer outFile.Close()
	errFile, err := os.Create(s.StderrPath)
	if err != nil {
		return Result{}, fmt.Errorf("scriptrun: %w", err)
	}
	defer errFile.Close()

	argv := s.Argv()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir, cmd.Env = s.Dir, s.Env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	outB := newBatcher("stdout", s.OnOutput, s.FlushEvery)
	errB := newBatcher("stderr", s.OnOutput, s.FlushEvery)
	cmd.Stdout = io.MultiWriter(outFile, outB)
	cmd.Stderr = io.MultiWriter(errFile, errB)
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return Result{}, fmt.Errorf("scriptrun: start %s: %w", s.Script, err)
	}
	pid := cmd.Process.Pid
	if s.OnStart != nil {
		s.OnStart(pid)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()

	var res Result
	var timeout <-chan time.Time
	if s.Timeout > 0 {
		t := time.NewTimer(s.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	stop := func() {
		syscall.Kill(-pid, syscall.SIGTERM)
		grace := time.NewTimer(s.Grace)
		defer grace.Stop()
		select {
		case <-done:
		case <-grace.C:
			res.Killed = true
			syscall.Kill(-pid, syscall.SIGKILL)
			<-done
		}
	}
	select {
	case <-done:
	case <-ctx.Done():
		res.Stopped = true
		if errors.Is(context.Cause(ctx), ErrKill) {
			res.Killed = true
			syscall.Kill(-pid, syscall.SIGKILL)
			<-done
		} else {
			stop()
		}
	case <-timeout:
		res.TimedOut = true
		stop()
	}
	syscall.Kill(-pid, syscall.SIGKILL) // children the script left behind
	outB.close()
	errB.close()
	res.ExitCode = proc.ExitCode(cmd.ProcessState)
	return res, nil
}

// batcher collects output and hands it to sink at most every interval, so
// a chatty script costs few Redis calls and a quiet one shows its lines at
// once.
type batcher struct {
	stream   string
	sink     func(string, []byte)
	interval time.Duration

	mu   sync.Mutex
	buf  []byte
	wake chan struct{}
	done chan struct{}
}

func newBatcher(stream string, sink func(string, []byte), interval time.Duration) *batcher {
	if interval <= 0 {
		interval = 100 * time.Millisecond
	}
	b := &batcher{stream: stream, sink: sink, interval: interval, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go b.loop()
	return b
}

func (b *batcher) Write(p []byte) (int, error) {
	if b.sink == nil {
		return len(p), nil
	}
	b.mu.Lock()
	b.buf = append(b.buf, p...)
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (b *batcher) loop() {
	defer close(b.done)
	for {
		_, open := <-b.wake
		b.flush()
		if !open {
			return
		}
		time.Sleep(b.interval) // let more output gather before the next flush
	}
}

func (b *batcher) flush() {
	b.mu.Lock()
	data := b.buf
	b.buf = nil
	b.mu.Unlock()
	if len(data) > 0 && b.sink != nil {
		b.sink(b.stream, data)
	}
}

// close flushes what is left and waits for the last hand-off.
func (b *batcher) close() {
	close(b.wake)
	<-b.done
	b.flush()
}
