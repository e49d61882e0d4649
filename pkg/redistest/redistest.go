// Package redistest starts a private redis-server for a test, on a free
// port, and stops it when the test ends: tests of code that talks to Redis
// run against the real thing, isolated from every other test.
package redistest

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/ztrade/pyrunner/pkg/store"
)

// Server is a running redis-server.
type Server struct {
	Port int
	cmd  *exec.Cmd
}

// URL is the server's redis:// URL for database db.
func (s *Server) URL(db int) string { return fmt.Sprintf("redis://127.0.0.1:%d/%d", s.Port, db) }

// Store opens a store on database 0 of the server, with pyrunner's key
// prefix, closed when the test ends.
func (s *Server) Store(t testing.TB) *store.Store {
	t.Helper()
	rds, err := store.ParseRedisURL(s.URL(0))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(context.Background(), rds, "pyrunner:", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// Stop kills the server (as a crash would) and waits until it is gone.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.cmd.Process.Kill()
	s.cmd.Wait()
}

// CLI runs redis-cli against the server and returns its output.
func (s *Server) CLI(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("redis-cli", append([]string{"-p", strconv.Itoa(s.Port)}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli %v: %v %s", args, err, out)
	}
	return string(out)
}

// Start starts a redis-server that keeps nothing on disk and waits until
// it answers.
func Start(t testing.TB) *Server {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for exec.Command("redis-cli", "-p", strconv.Itoa(port), "ping").Run() != nil {
		if time.Now().After(deadline) {
			t.Fatal("redis-server did not answer within 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &Server{Port: port, cmd: cmd}
}
