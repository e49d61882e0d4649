package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// tlsRedis is a redis-server with a plain port (the API's, as compose's
// in-network one) and a TLS port (the published one remote workers use),
// its certificates made by docker/redis-tls.sh as compose's init makes them.
type tlsRedis struct {
	plain, tls int
	password   string
	certs      string // ca.crt, redis.crt, client.crt, … (redis-tls.sh)
}

func startTLSRedis(t *testing.T, dir string) tlsRedis {
	t.Helper()
	r := tlsRedis{plain: freePort(t), tls: freePort(t), password: "tls-" + strconv.Itoa(os.Getpid()), certs: filepath.Join(dir, "tls")}
	if out, err := exec.Command("sh", "../docker/redis-tls.sh", r.certs, "localhost,127.0.0.1").CombinedOutput(); err != nil {
		t.Fatalf("redis-tls.sh: %v\n%s", err, out)
	}
	conf, err := filepath.Abs("../docker/redis.conf")
	if err != nil {
		t.Fatal(err)
	}
	cert := func(f string) string { return filepath.Join(r.certs, f) }
	cmd := exec.Command("redis-server", conf, "--port", strconv.Itoa(r.plain), "--bind", "127.0.0.1", "--dir", dir,
		"--requirepass", r.password, "--tls-port", strconv.Itoa(r.tls), "--tls-cert-file", cert("redis.crt"),
		"--tls-key-file", cert("redis.key"), "--tls-ca-cert-file", cert("ca.crt"), "--tls-auth-clients", "optional")
	logf, err := os.Create(filepath.Join(dir, "redis-tls.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); logf.Close() })
	waitUntil(t, 10*time.Second, "the TLS redis to answer", func() bool {
		out, err := exec.Command("redis-cli", "-p", strconv.Itoa(r.plain), "-a", r.password, "--no-auth-warning", "ping").Output()
		return err == nil && strings.TrimSpace(string(out)) == "PONG"
	})
	return r
}

func (r tlsRedis) url(scheme string, port int) string {
	return fmt.Sprintf("%s://:%s@127.0.0.1:%d/0", scheme, r.password, port)
}

// TestRedisTLS: workers that join through Redis's TLS port (as workers of
// another machine do), an API on the plain port; and each way of getting
// the connection wrong ends the worker at once with the setting to fix.
func TestRedisTLS(t *testing.T) {
	dir := reachableTempDir(t)
	r := startTLSRedis(t, dir)
	root := writeScripts(t)
	s := startStack(t, stackOpts{workers: -1, redisURL: r.url("redis", r.plain), scripts: root})
	ca := filepath.Join(r.certs, "ca.crt")

	// Two workers through the TLS port: one with the CA only, one with a
	// client certificate as well.
	for i, extra := range [][]string{nil, {"PYRUNNER_REDIS_CERT_FILE=" + filepath.Join(r.certs, "client.crt"),
		"PYRUNNER_REDIS_KEY_FILE=" + filepath.Join(r.certs, "client.key")}} {
		env := s.env
		s.env = append(append(append([]string{}, env...), "PYRUNNER_REDIS_URL="+r.url("rediss", r.tls), "PYRUNNER_REDIS_CA_FILE="+ca), extra...)
		s.workers = append(s.workers, s.start(fmt.Sprintf("tls-worker-%d", i+1), filepath.Join(binDir, "pyrunner-worker")))
		s.env = env
	}
	s.waitWorkers(2)
	var rows int
	if s.mustOK("result = len(df)", &rows); rows == 0 {
		t.Errorf("a research run through the TLS workers saw no rows")
	}
	_, started := s.startScript(`{"script":"ticker.py"}`)
	if started.Status != "running" {
		t.Fatalf("a script through the TLS workers: %+v", started)
	}
	var stopped runRec
	if st := s.do("POST", "/v1/runs/"+started.RunID+"/stop", "", &stopped); st != 200 || stopped.Status != "stopped" {
		t.Errorf("stop: %d %+v", st, stopped)
	}

	t.Run("PortRefusesPlainAndNoPassword", func(t *testing.T) {
		if speaksPlainRedisAt(fmt.Sprintf("127.0.0.1:%d", r.tls)) {
			t.Errorf("the TLS port answered a plain-TCP PING")
		}
		if !speaksPlainRedisAt(fmt.Sprintf("127.0.0.1:%d", r.plain)) {
			t.Errorf("the plain port did not answer a plain-TCP PING (the probe is broken)")
		}
		pool := x509.NewCertPool()
		pem, err := os.ReadFile(ca)
		if err != nil || !pool.AppendCertsFromPEM(pem) {
			t.Fatal(err)
		}
		c := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", r.tls), TLSConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"},
			MaxRetries: -1})
		defer c.Close()
		if err := c.Ping(context.Background()).Err(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
			t.Errorf("a TLS PING without the password: %v", err)
		}
	})

	t.Run("MisconfiguredWorkersSayWhat", func(t *testing.T) {
		wrong := testCA(t)
		for _, c := range []struct{ name, url, ca, want string }{
			{"WrongCA", r.url("rediss", r.tls), filepath.Join(wrong, "ca.crt"), "PYRUNNER_REDIS_CA_FILE"},
			{"PlainURLAgainstTLSPort", r.url("redis", r.tls), "", "use rediss://"},
			{"TLSURLAgainstPlainPort", r.url("rediss", r.plain), ca, "answers plain text"},
			{"CAWithPlainURL", r.url("redis", r.plain), ca, "is not rediss://"},
		} {
			t.Run(c.name, func(t *testing.T) {
				out, took, code := runWorkerToExit(t, s, "PYRUNNER_REDIS_URL="+c.url, "PYRUNNER_REDIS_CA_FILE="+c.ca)
				if code == 0 || !strings.Contains(out, c.want) || took > 10*time.Second {
					t.Errorf("worker exited %d after %s; want an error with %q within 10 s:\n%s", code, took.Round(time.Millisecond), c.want, out)
				}
				if strings.Contains(out, r.password) {
					t.Errorf("the error shows the password:\n%s", out)
				}
			})
		}
	})
}

// speaksPlainRedisAt reports whether addr answers a plain-TCP PING as
// Redis does (+PONG, or -NOAUTH without the password).
func speaksPlainRedisAt(addr string) bool {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	if conn.SetDeadline(time.Now().Add(5*time.Second)) != nil {
		return false
	}
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	return err == nil && (strings.HasPrefix(line, "+") || strings.HasPrefix(line, "-"))
}

// runWorkerToExit runs a worker with env added to the stack's until it
// exits (at most 30 s): its output, how long it ran, its exit code.
func runWorkerToExit(t *testing.T, s *stack, env ...string) (string, time.Duration, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "pyrunner-worker"))
	cmd.Env = append(append([]string{}, s.env...), env...)
	began := time.Now()
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	}
	return lastLines(string(out), 5), time.Since(began), code
}

func lastLines(s string, n int) string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
