package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// testComposeRemote: "Adding a worker machine", as the README has it. The
// main project publishes Redis over TLS (compose.redis-tls.yaml); a second
// project on its own network (compose.worker.yaml, as another machine
// runs it) reaches it only through that port, with the CA and the
// password; its two workers take research runs and scripts like the
// main four. Workers given the wrong CA, or a plain URL, say so and exit.
func testComposeRemote(t *testing.T, c *compose) {
	parent := c.t
	c.t = t // c.run's failures are this test's
	defer func() { c.t = parent }()
	tlsPort := freePort(t)
	c.files = []string{"compose.redis-tls.yaml"}
	c.env["PYRUNNER_SCRIPTS_DIR"] = writeScripts(t)
	c.env["REDIS_TLS_PUBLISH"] = strconv.Itoa(tlsPort)
	c.env["REDIS_TLS_NAMES"] = "host.docker.internal,localhost,127.0.0.1"
	readonly, hadReadonly := c.env["PYRUNNER_READONLY_URI"]
	delete(c.env, "PYRUNNER_READONLY_URI") // the demo SQLite, whatever an earlier subtest chose
	c.writeEnv()
	defer func() {
		c.files = nil
		delete(c.env, "REDIS_TLS_PUBLISH")
		delete(c.env, "REDIS_TLS_NAMES")
		delete(c.env, "PYRUNNER_SCRIPTS_DIR")
		if hadReadonly {
			c.env["PYRUNNER_READONLY_URI"] = readonly
		}
		c.writeEnv()
	}()
	c.run("up", "-d", "--wait", "--scale", "worker=4")
	s := c.stack(t, "sqlite")

	// What the main machine hands over: the CA and the URL with the password.
	redisBox := c.containers("redis")
	if len(redisBox) != 1 {
		t.Fatalf("redis containers: %v", redisBox)
	}
	ca, err := c.dockerCmd("exec", redisBox[0].name, "cat", "/run/pyrunner-secrets/tls/ca.crt")
	if err != nil || !strings.Contains(ca, "BEGIN CERTIFICATE") {
		t.Fatalf("the CA from the secrets volume: %v %q", err, ca)
	}
	pass, err := c.dockerCmd("exec", redisBox[0].name, "cat", "/run/pyrunner-secrets/redis.pass")
	if err != nil || pass == "" {
		t.Fatalf("the password: %v", err)
	}
	remoteDir := func(name, url, caPEM string) string {
		dir := filepath.Join(reachableTempDir(t), name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for f, body := range map[string]string{"redis.url": url, "ca.crt": caPEM + "\n"} {
			if err := os.WriteFile(filepath.Join(dir, f), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	url := fmt.Sprintf("rediss://:%s@host.docker.internal:%d/0", pass, tlsPort)

	t.Run("PortRefusesPlainAndNoPassword", func(t *testing.T) {
		addr := fmt.Sprintf("127.0.0.1:%d", tlsPort)
		if speaks := speaksPlainRedisAt(addr); speaks {
			t.Errorf("the published port answered a plain-TCP PING")
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM([]byte(ca)) {
			t.Fatal("no certificate in the CA")
		}
		r := redis.NewClient(&redis.Options{Addr: addr, TLSConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}, MaxRetries: -1})
		defer r.Close()
		if err := r.Ping(context.Background()).Err(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
			t.Errorf("a TLS PING without the password: %v", err)
		}
	})

	remote := c.remote("remote", remoteDir("remote", url, ca))
	t0 := time.Now()
	remote.run("--profile", "demo", "up", "-d", "--no-build", "--wait", "--scale", "worker=2")
	s.waitWorkers(6)
	t.Logf("a second project's two workers joined through the TLS port in %s", time.Since(t0).Round(time.Second))
	hosts := map[string]bool{}
	for _, k := range remote.containers("worker") {
		hosts[k.hostname] = true
	}
	remoteOf := func(worker string) bool { h, _, _ := strings.Cut(worker, ":"); return hosts[h] }

	t.Run("ResearchLandsOnBoth", func(t *testing.T) {
		local, far := 0, 0
		for w, n := range spread(t, s) {
			if remoteOf(w) {
				far += n
			} else {
				local += n
			}
		}
		t.Logf("40 runs: %d on the main project's workers, %d on the remote ones", local, far)
		if local == 0 || far == 0 {
			t.Errorf("40 runs: %d on the main project's workers, %d on the remote ones; want both", local, far)
		}
	})

	t.Run("ScriptOnARemoteWorker", func(t *testing.T) {
		// Only the remote workers are left to take it.
		c.run("stop", "worker")
		defer c.run("start", "worker")
		s.waitWorkers(2)
		_, r := s.startScript(`{"script":"ticker.py"}`)
		if r.Status != "running" || r.Worker == nil || !remoteOf(*r.Worker) {
			t.Fatalf("ticker.py: %+v", r)
		}
		var stopped runRec
		if st := s.do("POST", "/v1/runs/"+r.RunID+"/stop", "", &stopped); st != 200 || stopped.Status != "stopped" {
			t.Errorf("stop on the remote worker: %d %+v", st, stopped)
		}
	})

	t.Run("MisconfiguredWorkersSayWhat", func(t *testing.T) {
		otherCA, err := os.ReadFile(filepath.Join(testCA(t), "ca.crt"))
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []struct{ name, url, ca, want string }{
			{"WrongCA", url, string(otherCA), "PYRUNNER_REDIS_CA_FILE"},
			{"PlainURL", strings.Replace(url, "rediss://", "redis://", 1), ca, "PYRUNNER_REDIS_URL"},
		} {
			t.Run(k.name, func(t *testing.T) {
				bad := c.remote("bad-"+strings.ToLower(k.name), remoteDir(k.name, k.url, k.ca))
				bad.run("--profile", "demo", "up", "-d", "--no-build", "--scale", "worker=1")
				began := time.Now()
				var logs string
				waitUntil(t, 30*time.Second, "the worker to exit naming "+k.want, func() bool {
					logs = bad.output("logs", "--no-color", "worker")
					return strings.Contains(logs, "refusing to start") && strings.Contains(logs, k.want)
				})
				took := time.Since(began)
				if took > 10*time.Second {
					t.Errorf("the worker said why after %s, want within 10 s", took.Round(time.Millisecond))
				}
				if strings.Contains(logs, pass) {
					t.Errorf("the logs show the password")
				}
				t.Logf("%s: said why within %s: %s", k.name, took.Round(100*time.Millisecond), lastLines(logs, 1))
			})
		}
	})
}

// remote is a project of compose.worker.yaml (plus the test's
// host-gateway name) on its own network, given dir as PYRUNNER_REMOTE_DIR
// and the main project's scripts; it is taken down at the end.
func (c *compose) remote(name, dir string) *compose {
	r := &compose{t: c.t, project: c.project + "-" + name, docker: c.docker, base: true,
		files: []string{"compose.worker.yaml", "tools/compose/remote.yaml"}, envFile: filepath.Join(dir, "compose.env"),
		env: map[string]string{"PYRUNNER_REMOTE_DIR": dir, "PYRUNNER_SCRIPTS_DIR": c.env["PYRUNNER_SCRIPTS_DIR"],
			"SCRIPT_TERMINATE_TIMEOUT_SECONDS": "3"}}
	if r.env["PYRUNNER_SCRIPTS_DIR"] == "" {
		delete(r.env, "PYRUNNER_SCRIPTS_DIR")
	}
	r.writeEnv()
	c.t.Cleanup(func() {
		if c.t.Failed() {
			c.t.Logf("---- %s logs (tail) ----\n%s", r.project, r.output("logs", "--no-color", "--tail", "30"))
		}
		r.output("--profile", "demo", "down", "-v", "--remove-orphans")
	})
	return r
}

// testCA makes a CA (and certificates) of the test's own with
// docker/redis-tls.sh: one that signed nothing Redis shows.
func testCA(t *testing.T) string {
	dir := filepath.Join(t.TempDir(), "tls")
	if out, err := exec.Command("sh", "../docker/redis-tls.sh", dir, "localhost").CombinedOutput(); err != nil {
		t.Fatalf("redis-tls.sh: %v\n%s", err, out)
	}
	return dir
}
