package scriptrun

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ztrade/pyrunner/pkg/proc"
)

// The keeper: a fence that needs no running worker.
//
// A worker that cannot renew its heartbeat kills its own scripts before
// the reaper may call them lost (the fence). But a worker that is not
// scheduled at all (SIGSTOP, a stalled VM, a swap storm) cannot act,
// while its scripts, in process groups of their own, go on. So each
// script runs under a keeper: a small process (cmd/pyrunner-keeper, next
// to the worker's binary) in a process group of its own, which is the
// script's parent and holds the script's deadline. The worker renews that
// deadline after every heartbeat that lands; when renewals stop for the
// fence time, or the worker dies (the control pipe closes), the keeper
// SIGKILLs the script's whole group itself. A script cannot outlive its
// keeper either: it is started with the parent-death signal SIGKILL.
//
// The protocol, one line each, in this file only:
//
//	worker → keeper (fd 3): "renew <ms>"  the lease ends <ms> from now
//	                        "term"        SIGTERM to the script's group (a stop)
//	                        "kill"        SIGKILL to the script's group
//	keeper → worker (fd 4): "pid <n>"     the script runs as pid n
//	                        "fenced"      the lease ran out: the group was killed
//	                        "orphaned"    the worker went away: the group was killed
//	                        "exit <code>" the script ended: its exit code, or minus its signal
//
// The keeper's own argv is: pyrunner-keeper <lease-ms> <command...>.

// KeeperName is the keeper's binary, found next to the worker's.
const KeeperName = "pyrunner-keeper"

// FindKeeper is the keeper binary: next to the running executable (as
// make build and the image put it), else on PATH.
func FindKeeper() (string, error) {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), KeeperName)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	p, err := exec.LookPath(KeeperName)
	if err != nil {
		return "", fmt.Errorf("%s (the keeper every script runs under) is neither next to this binary nor on PATH: build it with make build", KeeperName)
	}
	return p, nil
}

const (
	msgRenew    = "renew"
	msgTerm     = "term"
	msgKill     = "kill"
	msgPID      = "pid"
	msgFenced   = "fenced"
	msgOrphaned = "orphaned"
	msgExit     = "exit"
)

// Keep is pyrunner-keeper's main: args are <lease-ms> <command...>. The
// control pipe from the worker is fd 3 and the report pipe to it fd 4;
// stdout and stderr are the script's. It returns the keeper's exit code.
func Keep(args []string) int {
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: pyrunner-keeper <lease-ms> <command...>")
		return 2
	}
	ms, err := strconv.ParseInt(args[0], 10, 64)
	if err != nil {
		fmt.Fprintln(os.Stderr, "keep: bad lease:", args[0])
		return 2
	}
	ctl, report := os.NewFile(3, "control"), os.NewFile(4, "report")
	say := func(format string, a ...any) { fmt.Fprintf(report, format+"\n", a...) }

	// The parent-death signal is sent when the thread that forked the
	// script ends: keep this goroutine on its thread for good.
	runtime.LockOSThread()
	cmd := exec.Command(args[1], args[2:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		say("%s %d", msgExit, 127)
		fmt.Fprintf(os.Stderr, "keep: start %s: %v\n", args[1], err)
		return 0
	}
	pid := cmd.Process.Pid
	say("%s %d", msgPID, pid)
	group := func(sig syscall.Signal) { syscall.Kill(-pid, sig) }

	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(ctl)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	lease := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer lease.Stop()
	for done := false; !done; {
		select {
		case <-exited:
			done = true
		case <-lease.C:
			group(syscall.SIGKILL)
			say(msgFenced)
			lines = nil // nothing the worker says matters now
		case line, open := <-lines:
			if !open {
				group(syscall.SIGKILL)
				say(msgOrphaned)
				lines = nil
				continue
			}
			word, arg, _ := strings.Cut(line, " ")
			switch word {
			case msgRenew:
				if n, err := strconv.ParseInt(arg, 10, 64); err == nil {
					lease.Reset(time.Duration(n) * time.Millisecond)
				}
			case msgTerm:
				group(syscall.SIGTERM)
			case msgKill:
				group(syscall.SIGKILL)
			}
		}
	}
	group(syscall.SIGKILL) // what the script left behind in its group
	say("%s %d", msgExit, proc.ExitCode(cmd.ProcessState))
	return 0
}
