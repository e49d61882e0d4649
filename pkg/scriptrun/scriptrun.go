// Package scriptrun runs one script as a process of its own: own process
// group, stdin from /dev/null, output written in full to log files and
// handed in batches to a sink (the worker streams it into Redis). The
// script runs under a keeper (keeper.go), which holds its deadline: the
// worker renews a Lease after each heartbeat that lands, and a script
// whose worker stops renewing (frozen, cut off, dead) is killed by its
// keeper within the fence time. Stopping is SIGTERM to the whole group, a
// grace period, then SIGKILL; whatever the script left behind in its
// group is killed when it exits.
package scriptrun

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrKill, as the cause of the run's context (context.WithCancelCause),
// ends the script with SIGKILL at once, without the SIGTERM grace: for a
// worker fencing itself, when another copy may be about to start.
var ErrKill = errors.New("killed at once")

// Lease is how long the worker's scripts may run without news from it:
// the worker renews it after every heartbeat that lands (until = when
// that beat was sent + the fence time), and every running script's
// keeper is told at once. It is safe for concurrent use.
type Lease struct {
	mu      sync.Mutex
	until   time.Time
	changed chan struct{}
}

// NewLease is a lease that ends at until.
func NewLease(until time.Time) *Lease { return &Lease{until: until, changed: make(chan struct{})} }

// Renew moves the end of the lease to until.
func (l *Lease) Renew(until time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.until = until
	close(l.changed)
	l.changed = make(chan struct{})
}

// state is the lease's end and a channel closed at its next renewal.
func (l *Lease) state() (time.Time, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.until, l.changed
}

// Spec describes one script run.
type Spec struct {
	Python string
	Script string // absolute path
	Args   []string
	Dir    string
	Env    []string
	// Keeper is the keeper binary (FindKeeper); Lease is the deadline
	// it holds.
	Keeper string
	Lease  *Lease
	// StdoutPath and StderrPath receive the full output.
	StdoutPath, StderrPath string
	// Grace is how long a stopped script has between SIGTERM and SIGKILL.
	Grace time.Duration
	// Timeout ends the script (as a stop) after this long; 0 means never.
	Timeout time.Duration
	// OnStart is called with the script's pid once it runs.
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
	// Fenced is set when the keeper killed the script because the lease
	// ran out: the worker did not renew it in time.
	Fenced bool
}

// Run starts the script under its keeper and waits for it. It returns an
// error only when the script could not be started.
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
	if s.Keeper == "" || s.Lease == nil {
		return Result{}, errors.New("scriptrun: a script needs a keeper and a lease")
	}
	ctlR, ctlW, err := os.Pipe()
	if err != nil {
		return Result{}, fmt.Errorf("scriptrun: %w", err)
	}
	defer ctlW.Close()
	repR, repW, err := os.Pipe()
	if err != nil {
		ctlR.Close()
		return Result{}, fmt.Errorf("scriptrun: %w", err)
	}
	defer repR.Close()

	until, renewed := s.Lease.state()
	cmd := exec.Command(s.Keeper, append([]string{strconv.FormatInt(time.Until(until).Milliseconds(), 10)}, s.Argv()...)...)
	cmd.Dir, cmd.Env = s.Dir, s.Env
	// Its own group: a stop signal to the worker's group (or a debugger
	// that freezes it) does not reach the keeper, which must go on.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.ExtraFiles = []*os.File{ctlR, repW}
	outB := newBatcher("stdout", s.OnOutput, s.FlushEvery)
	errB := newBatcher("stderr", s.OnOutput, s.FlushEvery)
	cmd.Stdout = io.MultiWriter(outFile, outB)
	cmd.Stderr = io.MultiWriter(errFile, errB)
	cmd.WaitDelay = 2 * time.Second
	err = cmd.Start()
	ctlR.Close()
	repW.Close()
	if err != nil {
		return Result{}, fmt.Errorf("scriptrun: start the keeper of %s: %w", s.Script, err)
	}
	reports := make(chan string, 4)
	go func() {
		sc := bufio.NewScanner(repR)
		for sc.Scan() {
			reports <- sc.Text()
		}
		close(reports)
	}()
	tell := func(line string) { fmt.Fprintln(ctlW, line) }

	var res Result
	res.ExitCode = -int(syscall.SIGKILL) // unless the keeper says otherwise
	var timeout <-chan time.Time
	if s.Timeout > 0 {
		t := time.NewTimer(s.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	var grace <-chan time.Time // set once a stop has sent SIGTERM
	var graceTimer *time.Timer
	stop := func() {
		if graceTimer == nil {
			tell(msgTerm)
			graceTimer = time.NewTimer(s.Grace)
			grace = graceTimer.C
		}
	}
	done := ctx.Done()
	for ended := false; !ended; {
		select {
		case line, open := <-reports:
			if !open {
				ended = true // the keeper died: its script died with it (parent-death signal)
				break
			}
			word, arg, _ := strings.Cut(line, " ")
			switch word {
			case msgPID:
				if pid, err := strconv.Atoi(arg); err == nil && s.OnStart != nil {
					s.OnStart(pid)
				}
			case msgFenced, msgOrphaned:
				res.Fenced, res.Killed = true, true
			case msgExit:
				res.ExitCode, _ = strconv.Atoi(arg)
				ended = true
			}
		case <-done:
			done = nil
			res.Stopped = true
			if errors.Is(context.Cause(ctx), ErrKill) {
				res.Killed = true
				tell(msgKill)
			} else {
				stop()
			}
		case <-timeout:
			timeout = nil
			res.TimedOut = true
			stop()
		case <-grace:
			grace = nil
			res.Killed = true
			tell(msgKill)
		case <-renewed:
			until, renewed = s.Lease.state()
			tell(fmt.Sprintf("%s %d", msgRenew, time.Until(until).Milliseconds()))
		}
	}
	if graceTimer != nil {
		graceTimer.Stop()
	}
	cmd.Wait()
	outB.close()
	errB.close()
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
