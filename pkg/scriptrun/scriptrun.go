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
	if s.Keeper == "" || s.Lease == nil {
		return Result{}, errors.New("scriptrun: a script needs a keeper and a lease")
	}
	k, err := startKeeper(s)
	if err != nil {
		return Result{}, err
	}
	defer k.close()
	return k.follow(ctx, s), nil
}

// keeperProc is a started keeper: its process, the control pipe the
// worker writes to (fd 3 in the keeper), the lines it reports (fd 4),
// and where the script's output goes.
type keeperProc struct {
	cmd        *exec.Cmd
	ctl        *os.File
	reports    chan string
	files      []*os.File // the full stdout and stderr logs
	outB, errB *batcher
	until      time.Time       // the lease the keeper holds now
	renewed    <-chan struct{} // closed when the lease is renewed
}

// startKeeper opens the script's log files and starts its keeper.
func startKeeper(s Spec) (*keeperProc, error) {
	k := &keeperProc{reports: make(chan string, 4)}
	for _, p := range []string{s.StdoutPath, s.StderrPath} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			k.close()
			return nil, fmt.Errorf("scriptrun: logs dir: %w", err)
		}
		// appended to: a restarted run's attempts share its log
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			k.close()
			return nil, fmt.Errorf("scriptrun: %w", err)
		}
		k.files = append(k.files, f)
	}
	ctlR, ctlW, err := os.Pipe()
	if err != nil {
		k.close()
		return nil, fmt.Errorf("scriptrun: %w", err)
	}
	k.ctl = ctlW
	repR, repW, err := os.Pipe()
	if err != nil {
		ctlR.Close()
		k.close()
		return nil, fmt.Errorf("scriptrun: %w", err)
	}
	k.until, k.renewed = s.Lease.state()
	cmd := exec.Command(s.Keeper, append([]string{strconv.FormatInt(time.Until(k.until).Milliseconds(), 10)}, s.Argv()...)...)
	cmd.Dir, cmd.Env = s.Dir, s.Env
	// Its own group: a stop signal to the worker's group (or a debugger
	// that freezes it) does not reach the keeper, which must go on.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.ExtraFiles = []*os.File{ctlR, repW}
	k.outB = newBatcher("stdout", s.OnOutput, s.FlushEvery)
	k.errB = newBatcher("stderr", s.OnOutput, s.FlushEvery)
	cmd.Stdout = io.MultiWriter(k.files[0], k.outB)
	cmd.Stderr = io.MultiWriter(k.files[1], k.errB)
	cmd.WaitDelay = 2 * time.Second
	err = cmd.Start()
	ctlR.Close()
	repW.Close()
	if err != nil {
		repR.Close()
		k.close()
		return nil, fmt.Errorf("scriptrun: start the keeper of %s: %w", s.Script, err)
	}
	k.cmd = cmd
	go func() {
		defer repR.Close()
		sc := bufio.NewScanner(repR)
		for sc.Scan() {
			k.reports <- sc.Text()
		}
		close(k.reports)
	}()
	return k, nil
}

// tell sends the keeper one control line. A keeper that is gone cannot
// read it, and its end is reported on the other pipe.
func (k *keeperProc) tell(line string) { fmt.Fprintln(k.ctl, line) }

// follow relays stops, the time limit and lease renewals to the keeper
// and reads its reports until the script has ended.
func (k *keeperProc) follow(ctx context.Context, s Spec) Result {
	res := Result{ExitCode: -int(syscall.SIGKILL)} // unless the keeper says otherwise
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
			k.tell(msgTerm)
			graceTimer = time.NewTimer(s.Grace)
			grace = graceTimer.C
		}
	}
	defer func() {
		if graceTimer != nil {
			graceTimer.Stop()
		}
	}()
	done := ctx.Done()
	for ended := false; !ended; {
		select {
		case line, open := <-k.reports:
			// A closed pipe: the keeper died, and its script with it
			// (parent-death signal).
			ended = !open || k.report(line, s, &res)
		case <-done:
			done = nil
			res.Stopped = true
			if errors.Is(context.Cause(ctx), ErrKill) {
				res.Killed = true
				k.tell(msgKill)
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
			k.tell(msgKill)
		case <-k.renewed:
			k.until, k.renewed = s.Lease.state()
			k.tell(fmt.Sprintf("%s %d", msgRenew, time.Until(k.until).Milliseconds()))
		}
	}
	return res
}

// report takes one line the keeper reported into res; it says whether
// the script has ended.
func (k *keeperProc) report(line string, s Spec, res *Result) (ended bool) {
	word, arg, _ := strings.Cut(line, " ")
	switch word {
	case msgPID:
		if pid, err := strconv.Atoi(arg); err == nil && s.OnStart != nil {
			s.OnStart(pid)
		}
	case msgFenced, msgOrphaned:
		res.Fenced, res.Killed = true, true
	case msgExit:
		if code, err := strconv.Atoi(arg); err == nil {
			res.ExitCode = code
		}
		return true
	}
	return false
}

// close reaps the keeper and flushes and closes the script's output.
func (k *keeperProc) close() {
	if k.cmd != nil {
		_ = k.cmd.Wait() // the exit that matters is the script's, reported by the keeper
	}
	if k.outB != nil {
		k.outB.close()
		k.errB.close()
	}
	if k.ctl != nil {
		k.ctl.Close()
	}
	for _, f := range k.files {
		f.Close()
	}
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
