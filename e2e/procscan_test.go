package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
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

// scan lists the live (not zombie) pids running each script.
func (c *copyScan) scan() map[string][]int {
	out := map[string][]int{}
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
					out[s] = append(out[s], pid)
				}
			}
		}
	}
	return out
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
