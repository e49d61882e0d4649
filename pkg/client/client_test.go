package client_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztrade/pyrunner/pkg/client"
	"github.com/ztrade/pyrunner/pkg/demodata"
	"github.com/ztrade/pyrunner/pkg/scriptrun"
)

// TestMain starts the stack the examples run against.
func TestMain(m *testing.M) {
	stop, err := startStack()
	if err != nil {
		fmt.Fprintln(os.Stderr, "client tests:", err)
		os.Exit(1)
	}
	code := m.Run()
	stop()
	os.Exit(code)
}

func freePort() int {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startStack runs a redis-server, the API and one worker on demo K-lines,
// and sets PYRUNNER_URL.
func startStack() (stop func(), err error) {
	dir, err := os.MkdirTemp("", "pyrunner-client-")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		return nil, err
	}
	var procs []*exec.Cmd
	stop = func() {
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].Process.Kill()
			procs[i].Wait()
		}
		os.RemoveAll(dir)
	}
	for bin, pkg := range map[string]string{"api": "../../api", "worker": "../../worker", scriptrun.KeeperName: "../../cmd/pyrunner-keeper"} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(dir, bin), pkg).CombinedOutput(); err != nil {
			stop()
			return nil, fmt.Errorf("build %s: %v %s", bin, err, out)
		}
	}
	db := filepath.Join(dir, "exchange.db")
	w, err := demodata.OpenWriter("sqlite", db)
	if err == nil {
		err = w.WriteDemo(context.Background(), 1735689600-86400, 3)
		w.Close()
	}
	if err != nil {
		stop()
		return nil, err
	}
	scripts := filepath.Join(dir, "scripts")
	if err := os.MkdirAll(scripts, 0o755); err != nil {
		stop()
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(scripts, "greet.py"), []byte("import sys\nprint('hello', sys.argv[1])\nprint('bye')\n"), 0o644); err != nil {
		stop()
		return nil, err
	}
	rport, aport := freePort(), freePort()
	redis := exec.Command("redis-server", "--port", strconv.Itoa(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := redis.Start(); err != nil {
		stop()
		return nil, err
	}
	procs = append(procs, redis)
	env := append(os.Environ(), fmt.Sprintf("PYRUNNER_REDIS_URL=redis://127.0.0.1:%d/0", rport),
		fmt.Sprintf("PYRUNNER_LISTEN=127.0.0.1:%d", aport), "PYRUNNER_READONLY_TYPE=sqlite", "PYRUNNER_READONLY_URI="+db,
		"PYRUNNER_WORK_DIR="+filepath.Join(dir, "work"), "SCRIPT_SCRIPTS_PATH="+scripts, "SCRIPT_STATE_DIR="+filepath.Join(dir, "state"),
		"PYRUNNER_ZTRADE_CONFIG=/nonexistent", "PYRUNNER_LOG_LEVEL=warn")
	base := fmt.Sprintf("http://127.0.0.1:%d", aport)
	c := client.New(base)
	deadline := time.Now().Add(60 * time.Second)
	started := false
	for {
		if !started {
			if exec.Command("redis-cli", "-p", strconv.Itoa(rport), "ping").Run() == nil {
				for _, bin := range []string{"api", "worker"} {
					p := exec.Command(filepath.Join(dir, bin))
					p.Env = env
					if err := p.Start(); err != nil {
						stop()
						return nil, err
					}
					procs = append(procs, p)
				}
				started = true
			}
		} else if h, err := c.Health(context.Background()); err == nil && len(h["workers"].([]any)) == 1 {
			break
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("the stack did not come up in 60 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := os.Setenv("PYRUNNER_URL", base); err != nil {
		stop()
		return nil, err
	}
	return stop, nil
}

// TestRetriesHonourRetryAfter: 429 and 503 answers are retried after the
// server's Retry-After; other errors are not. (A stand-in server: this is
// the client's own retry logic.)
func TestRetriesHonourRetryAfter(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch calls.Add(1) {
		case 1:
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(429)
			if _, err := w.Write([]byte(`{"detail":"the research queue is full"}`)); err != nil {
				t.Error(err)
			}
		case 2:
			w.WriteHeader(503)
			if _, err := w.Write([]byte(`{"detail":"redis unavailable"}`)); err != nil {
				t.Error(err)
			}
		default:
			if _, err := w.Write([]byte(`{"ok":true,"result":1,"status":"succeeded","id":"x"}`)); err != nil {
				t.Error(err)
			}
		}
	}))
	defer srv.Close()
	c := client.New(srv.URL, client.WithRetries(3, 10*time.Millisecond))
	began := time.Now()
	res, err := c.Research(context.Background(), client.ResearchRequest{Code: "x"})
	if err != nil || !res.Succeeded() || calls.Load() != 3 || time.Since(began) < time.Second {
		t.Errorf("res %+v err %v after %d calls in %s", res, err, calls.Load(), time.Since(began))
	}
	c = client.New(srv.URL, client.WithRetries(0, 0))
	calls.Store(0)
	_, err = c.Research(context.Background(), client.ResearchRequest{Code: "x"})
	var e *client.Error
	if client.StatusOf(err) != 429 || !errorsAs(err, &e) || e.RetryAfter != time.Second || e.Detail != "the research queue is full" {
		t.Errorf("no retries: %v", err)
	}
}

func errorsAs(err error, e **client.Error) bool {
	x, ok := err.(*client.Error)
	*e = x
	return ok
}
