package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TestAdmission: past PYRUNNER_MAX_QUEUED waiting runs in a queue, a
// submission is 429 with Retry-After and nothing is recorded.
func TestAdmission(t *testing.T) {
	root := writeScripts(t)
	s := startStack(t, stackOpts{workers: -1, scripts: root, env: map[string]string{"PYRUNNER_MAX_QUEUED": "5", "SCRIPT_START_WAIT_SECONDS": "0"}})
	for i := 0; i < 5; i++ {
		if st, r := s.research("result = 1", map[string]any{"wait": false}); st != 202 {
			t.Fatalf("submission %d: %d %+v", i+1, st, r)
		}
	}
	req, _ := http.NewRequest("POST", s.base+"/v1/research/run?wait=false", strings.NewReader(seedBody))
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), `"detail":"the research queue is full`) {
		t.Errorf("6th submission: %d Retry-After %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	if n := s.runKeys(); n != 5 {
		t.Errorf("%d runs recorded, want 5", n)
	}
	var h struct {
		Queues map[string]struct {
			Pending   int `json:"pending"`
			MaxQueued int `json:"max_queued"`
		} `json:"queues"`
	}
	s.getJSON("/health", &h)
	if q := h.Queues["research"]; q.Pending != 5 || q.MaxQueued != 5 {
		t.Errorf("health queues: %+v", h.Queues)
	}
	// The scripts queue has its own cap.
	for i := 0; i < 5; i++ {
		if st, r := s.startScript(`{"script":"hello.py","duplicate":true}`); st != 200 || r.Status != "queued" {
			t.Fatalf("script %d: %d %+v", i+1, st, r)
		}
	}
	if st, r := s.startScript(`{"script":"hello.py","duplicate":true}`); st != 429 || !strings.Contains(r.Detail, "scripts queue is full") {
		t.Errorf("6th script: %d %+v", st, r)
	}
}

// clientFrom is an HTTP client whose connections come from source, a
// loopback address of its own: another client, as the API sees it.
func clientFrom(source string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
	return &http.Client{Timeout: time.Minute, Transport: &http.Transport{DialContext: d.DialContext}}
}

func statusWith(t *testing.T, c *http.Client, method, url, body, authz string) (int, http.Header) {
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header
}

// TestTokens: a JWT without exp is refused unless SCRIPT_JWT_REQUIRE_EXP
// is false; wrong static tokens back one client off (429, even for the
// right token then), never another.
func TestTokens(t *testing.T) {
	secret := "jwt-secret-for-tokens"
	noExp, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "forever", "scopes": "*"}).SignedString([]byte(secret))
	for _, require := range []string{"true", "false"} {
		t.Run("require_exp="+require, func(t *testing.T) {
			s := startStack(t, stackOpts{workers: 1, env: map[string]string{"SCRIPT_JWT_AUTH": "true", "SCRIPT_JWT_SECRET": secret, "SCRIPT_JWT_REQUIRE_EXP": require}})
			var e struct{ Detail string }
			st := s.doAuth("GET", "/v1/scripts", "", "Bearer "+noExp, &e)
			if require == "true" && (st != 401 || !strings.Contains(e.Detail, "no exp claim")) {
				t.Errorf("a token without exp: %d %q", st, e.Detail)
			}
			if require == "false" && st != 200 {
				t.Errorf("a token without exp with SCRIPT_JWT_REQUIRE_EXP=false: %d %q", st, e.Detail)
			}
		})
	}
	t.Run("StaticTokenBackOff", func(t *testing.T) {
		s := startStack(t, stackOpts{workers: 1, env: map[string]string{"PYRUNNER_TOKEN": "the-static-token"}})
		attacker, other := clientFrom("127.0.0.2"), clientFrom("127.0.0.3")
		url := s.base + "/v1/research/run"
		var last int
		var hdr http.Header
		for i := 0; i < 12; i++ {
			last, hdr = statusWith(t, attacker, "POST", url, seedBody, fmt.Sprintf("Bearer guess-%d", i))
			if i < 10 && last != 401 {
				t.Fatalf("guess %d: %d", i, last)
			}
		}
		if last != 429 || hdr.Get("Retry-After") == "" {
			t.Errorf("after 12 wrong guesses: %d Retry-After %q", last, hdr.Get("Retry-After"))
		}
		if st, _ := statusWith(t, attacker, "POST", url, seedBody, "Bearer the-static-token"); st != 429 {
			t.Errorf("a locked-out client with the right token: %d, want 429", st)
		}
		if st, _ := statusWith(t, other, "POST", url, seedBody, "Bearer the-static-token"); st != 200 {
			t.Errorf("another client while the first is locked out: %d", st)
		}
	})
}

// TestStopsAlwaysLand: 200 start/stop cycles of a script, with every
// pub/sub connection killed before every 5th stop: each stop lands within
// 10 s (a lost stop message is found at the worker's next heartbeat).
func TestStopsAlwaysLand(t *testing.T) {
	root := writeScripts(t)
	s := startStack(t, stackOpts{scripts: root, env: map[string]string{"SCRIPT_TERMINATE_TIMEOUT_SECONDS": "5"}})
	slow := 0
	for i := 0; i < 200; i++ {
		st, r := s.startScript(`{"script":"polite.py","duplicate":true}`)
		if st != 200 || r.Status != "running" {
			t.Fatalf("cycle %d: start %d %+v", i, st, r)
		}
		if i%5 == 4 {
			if out, err := exec.Command("redis-cli", "-p", strconv.Itoa(s.redisPort), "client", "kill", "type", "pubsub").CombinedOutput(); err != nil {
				t.Fatalf("client kill: %v %s", err, out)
			}
		}
		began := time.Now()
		var stopped runRec
		s.do("POST", "/v1/runs/"+r.RunID+"/stop", "", &stopped)
		if stopped.Status != "stopped" {
			stopped = s.waitStatus(r.RunID, 10*time.Second, ended)
		}
		if stopped.Status != "stopped" {
			t.Fatalf("cycle %d: run %s ended %s (%v)", i, r.RunID, stopped.Status, stopped.Error)
		}
		if d := time.Since(began); d > time.Second {
			slow++
		}
	}
	t.Logf("200 stops landed; %d took over a second (their message was lost with the pub/sub connection)", slow)
}

// proxy is a TCP proxy to Redis that a test can cut: while cut, it
// accepts nothing and every connection through it is closed.
type proxy struct {
	l      net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  []net.Conn
}

func newProxy(t *testing.T, target string) *proxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l, target: target}
	t.Cleanup(func() { l.Close(); p.setCut(true) })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.cut {
				p.mu.Unlock()
				c.Close()
				continue
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			// Either side ending (or the proxy cutting it) ends both.
			go func() { _, _ = io.Copy(up, c); up.Close() }()
			go func() { _, _ = io.Copy(c, up); c.Close() }()
		}
	}()
	return p
}

func (p *proxy) addr() string { return p.l.Addr().String() }

func (p *proxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for _, c := range p.conns {
			c.Close()
		}
		p.conns = nil
	}
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && !strings.Contains(string(b), ") Z ")
}

// TestExactlyOneLiveCopy: a worker cut off from Redis kills its script
// before the reaper can call it terminated, so a second copy can start
// only once the first is dead; a frozen worker (SIGSTOP) that comes back
// finds its run ended and kills it at once.
func TestExactlyOneLiveCopy(t *testing.T) {
	root := writeScripts(t)
	scanCopies(t, filepath.Join(root, "ticker.py"))
	s := startStack(t, stackOpts{workers: -1, scripts: root})
	p := newProxy(t, fmt.Sprintf("127.0.0.1:%d", s.redisPort))
	cutOff := s.startWorkerVia("worker-behind-proxy", p.addr())
	frozen := s.start("worker-to-freeze", filepath.Join(binDir, "pyrunner-worker"))
	waitUntil(t, 30*time.Second, "both workers", func() bool {
		var h struct{ Workers []any }
		return s.getJSON("/health", &h) == 200 && len(h.Workers) == 2
	})

	// startOn starts ticker.py until the given worker runs it.
	startOn := func(w *proc) runRec {
		for i := 0; i < 50; i++ {
			_, r := s.startScript(`{"script":"ticker.py","duplicate":true}`)
			if r.Status == "running" && r.Worker != nil && strings.HasSuffix(*r.Worker, fmt.Sprintf(":%d", w.cmd.Process.Pid)) {
				return r
			}
			s.do("POST", "/v1/runs/"+r.RunID+"/stop", "", nil)
		}
		t.Fatalf("no run landed on %s", w.name)
		return runRec{}
	}

	t.Run("PartitionFences", func(t *testing.T) {
		r := startOn(cutOff)
		pid := *r.PID
		p.setCut(true)
		cutAt := time.Now()
		var seen time.Time
		waitUntil(t, 40*time.Second, "the run to be ended by the reaper", func() bool {
			var cur runRec
			s.do("GET", "/v1/runs/"+r.RunID, "", &cur)
			if cur.Status == "terminated" && seen.IsZero() {
				seen = time.Now()
			}
			return !seen.IsZero()
		})
		if alive(pid) {
			// It must be dead no later than a second after the record says so.
			waitUntil(t, time.Second, "the script to be dead", func() bool { return !alive(pid) })
		}
		t.Logf("cut at 0 s; record terminated at %.1f s; script dead by then", seen.Sub(cutAt).Seconds())
		// A new copy may start now, and only one runs.
		if st, r2 := s.startScript(`{"script":"ticker.py"}`); st != 200 {
			t.Errorf("a new copy after the fence: %d %+v", st, r2)
		} else {
			s.do("POST", "/v1/runs/"+r2.RunID+"/stop", "", nil)
		}
		// Heal after 40 s in all; the worker comes back.
		time.Sleep(time.Until(cutAt.Add(40 * time.Second)))
		p.setCut(false)
		waitUntil(t, 30*time.Second, "the cut-off worker to come back", func() bool {
			var h struct{ Workers []any }
			return s.getJSON("/health", &h) == 200 && len(h.Workers) == 2
		})
	})

	t.Run("FrozenWorkerKillsOnReturn", func(t *testing.T) {
		r := startOn(frozen)
		pid := *r.PID
		frozen.signal(syscall.SIGSTOP)
		waitUntil(t, 40*time.Second, "the frozen worker's run to be ended", func() bool {
			var cur runRec
			s.do("GET", "/v1/runs/"+r.RunID, "", &cur)
			return cur.Status == "terminated"
		})
		frozen.signal(syscall.SIGCONT)
		resumed := time.Now()
		waitUntil(t, 3*time.Second, "the script to die after SIGCONT", func() bool { return !alive(pid) })
		t.Logf("script dead %.1f s after SIGCONT", time.Since(resumed).Seconds())
	})
}
