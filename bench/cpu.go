package main

// CPU per run: what a trivial isolated run costs the whole machine (the
// API, the worker, its zygote and the run's child, Redis, the kernel),
// client excluded, next to the fork floor's CPU per call, and where it
// goes, process by process.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// clockTick is the kernel's USER_HZ, the unit of /proc CPU times.
const clockTick = 10 * time.Millisecond

// machineBusy is the CPU time every core of the machine has spent busy
// so far (/proc/stat: all but idle and iowait).
func machineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal guest guest_nice
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: %q", line)
	}
	var busy int64
	for i, v := range f[1:9] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, err
		}
		busy += n
	}
	return time.Duration(busy) * clockTick, nil
}

// selfCPU is this process's own CPU time (the clients').
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU is pid's CPU time: its own, and its reaped children's.
func procCPU(pid int) (own, children time.Duration) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state); utime is field 14
	if len(f) < 15 {
		return 0, 0
	}
	n := func(k int) time.Duration {
		v, _ := strconv.ParseInt(f[k-3], 10, 64)
		return time.Duration(v) * clockTick
	}
	return n(14) + n(15), n(16) + n(17)
}

// descendants lists every process below pid, with its command line.
func descendants(pid int) map[int]string {
	parent := map[int]int{}
	cmd := map[int]string{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		parent[p], _ = strconv.Atoi(f[1])
		c, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		cmd[p] = strings.ReplaceAll(strings.TrimRight(string(c), "\x00"), "\x00", " ")
	}
	out := map[int]string{}
	for p := range parent {
		for q := parent[p]; q > 1; q = parent[q] {
			if q == pid {
				out[p] = cmd[p]
				break
			}
		}
	}
	return out
}

// cpuShares samples the CPU of a stack's parts: the API, Redis, the
// workers' Go processes, and everything under them (zygote, sandbox,
// children, keepers; a reaped child counts in its parent's children).
func (s *stack) cpuShares() map[string]time.Duration {
	out := map[string]time.Duration{}
	for i, p := range s.procs {
		own, _ := procCPU(p.Process.Pid)
		switch i {
		case 0:
			out["redis"] += own
		case 1:
			out["api"] += own
		default:
			out["worker (Go)"] += own
			for pid, cmd := range descendants(p.Process.Pid) {
				own, kids := procCPU(pid)
				if strings.Contains(cmd, "zygote.py") {
					out["zygote"] += own
					out["run children (reaped by the zygote)"] += kids
				} else {
					out["sandbox and other"] += own + kids
				}
			}
		}
	}
	return out
}

// cpuPerRun runs n trivial runs from clients goroutines and returns the
// machine's busy CPU per run, the clients' own CPU excluded, the runs/s,
// and each part's CPU per run.
func cpuPerRun(s *stack, clients, n int) (perRun time.Duration, perSec float64, parts map[string]time.Duration, err error) {
	for i := 0; i < 20; i++ { // warm
		if _, _, err := s.research(trivial); err != nil {
			return 0, 0, nil, err
		}
	}
	before := s.cpuShares()
	busy0, err := machineBusy()
	if err != nil {
		return 0, 0, nil, err
	}
	self0, t0 := selfCPU(), time.Now()
	var left atomic.Int64
	left.Store(int64(n))
	var firstErr atomic.Value
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for left.Add(-1) >= 0 && ctx.Err() == nil {
				if _, _, err := s.research(trivial); err != nil {
					firstErr.CompareAndSwap(nil, err)
					cancel()
				}
			}
		}()
	}
	wg.Wait()
	elapsed, self := time.Since(t0), selfCPU()-self0
	busy1, err := machineBusy()
	if err != nil {
		return 0, 0, nil, err
	}
	if e := firstErr.Load(); e != nil {
		return 0, 0, nil, e.(error)
	}
	after := s.cpuShares()
	parts = map[string]time.Duration{}
	for k, v := range after {
		parts[k] = (v - before[k]) / time.Duration(n)
	}
	return (busy1 - busy0 - self) / time.Duration(n), float64(n) / elapsed.Seconds(), parts, nil
}

// forkFloorCPU is the fork floor's CPU per call (the warm interpreter and
// its reaped children) over n calls.
func forkFloorCPU(py string, n int) (time.Duration, error) {
	fl, err := startStepper("fork floor", py, forkFloorScript)
	if err != nil {
		return 0, err
	}
	defer fl.close()
	for i := 0; i < 20; i++ {
		if _, err := fl.call(); err != nil {
			return 0, err
		}
	}
	own0, kids0 := procCPU(fl.cmd.Process.Pid)
	for i := 0; i < n; i++ {
		if _, err := fl.call(); err != nil {
			return 0, err
		}
	}
	own1, kids1 := procCPU(fl.cmd.Process.Pid)
	return (own1 - own0 + kids1 - kids0) / time.Duration(n), nil
}

// cpuLine formats the parts of a run's CPU, largest first.
func cpuLine(parts map[string]time.Duration) string {
	type kv struct {
		k string
		v time.Duration
	}
	var list []kv
	for k, v := range parts {
		list = append(list, kv{k, v})
	}
	sort.Slice(list, func(i, j int) bool { return list[i].v > list[j].v })
	var b strings.Builder
	for i, p := range list {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %s", p.k, ms(p.v))
	}
	return b.String()
}
