package e2e

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// copyScan watches the machine's processes, every 20 ms while a test runs,
// for live copies of scripts (a python whose argv names the script's
// path): the test fails if one script ever has two at once. It is the
// invariant behind DESIGN §2: a script without duplicate:true never has
// two live copies, whatever fails.
type copyScan struct {
	t       *testing.T
	scripts []string // absolute paths
	stop    chan struct{}
	done    chan struct{}

	mu   sync.Mutex
	max  map[string]int   // most copies seen at once
	pids map[string][]int // copies seen in the last scan
}

// scanCopies starts watching the scripts (absolute paths) until the test
// ends, when it checks that none ever had two live copies.
func scanCopies(t *testing.T, scripts ...string) *copyScan {
	c := &copyScan{t: t, scripts: scripts, stop: make(chan struct{}), done: make(chan struct{}),
		max: map[string]int{}, pids: map[string][]int{}}
	go c.loop()
	t.Cleanup(c.finish)
	return c
}

func (c *copyScan) loop() {
	defer close(c.done)
	for {
		now := c.scan()
		c.mu.Lock()
		for _, s := range c.scripts {
			if n := len(now[s]); n > c.max[s] {
				c.max[s] = n
				if n > 1 {
					c.t.Errorf("%d live copies of %s at once: pids %v", n, filepath.Base(s), now[s])
				}
			}
		}
		c.pids = now
		c.mu.Unlock()
		select {
		case <-c.stop:
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// scan lists the live (not zombie) pids running each script. A process
// whose parent runs the same script is that copy's own fork (between a
// fork and its exec, as stubborn.py's subprocess.Popen, it still shows
// the script's argv), not another copy: copies are started by keepers.
func (c *copyScan) scan() map[string][]int {
	found := map[string][]int{}
	parent := map[int]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || len(b) == 0 {
			continue
		}
		argv := strings.Split(string(bytes.TrimRight(b, "\x00")), "\x00")
		if !strings.Contains(filepath.Base(argv[0]), "python") || !alive(pid) {
			continue
		}
		for _, a := range argv[1:] {
			for _, s := range c.scripts {
				if a == s {
					found[s] = append(found[s], pid)
					parent[pid] = ppid(pid)
				}
			}
		}
	}
	out := map[string][]int{}
	for s, pids := range found {
		for _, pid := range pids {
			if !slices.Contains(pids, parent[pid]) {
				out[s] = append(out[s], pid)
			}
		}
	}
	return out
}

// ppid is pid's parent (0 when it is gone).
func ppid(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// pid (comm) state ppid …: comm may hold spaces and parentheses.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

// live is the pids running script in the last scan.
func (c *copyScan) live(script string) []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pids[script]
}

// most is the most copies of script seen at once.
func (c *copyScan) most(script string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.max[script]
}

func (c *copyScan) finish() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	<-c.done
}

// TestCopyScanCountsCopiesNotForks: a script whose process has forked (a
// child that has not exec'd shows the script's argv too) is one copy; a
// second process started on the same script is a second copy.
func TestCopyScanCountsCopiesNotForks(t *testing.T) {
	script := filepath.Join(t.TempDir(), "forker.py")
	body := "import os, sys, time\nif os.fork() == 0:\n    time.sleep(60)\n    os._exit(0)\nprint('forked', flush=True)\ntime.sleep(60)\n"
	if err := os.WriteFile(script, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	c := &copyScan{scripts: []string{script}}
	start := func() {
		cmd := exec.Command("/usr/bin/python3", script)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its fork too is killed at the end
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait() })
		if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
			t.Fatal(err)
		}
	}
	for want := 1; want <= 2; want++ {
		start()
		if got := len(c.scan()[script]); got != want {
			t.Errorf("%d processes started on the script, each forked: %d copies seen, want %d", want, got, want)
		}
	}
}
