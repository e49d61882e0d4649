package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// composeHA is compose's ha profile as failover tests drive it: the redis
// and redis-replica services under sentinel-1..3.
type composeHA struct {
	t        *testing.T
	c        *compose
	password string
	killed   map[string]string // address → the service killed there
}

// ipOf is the address of service's container on the project's network.
func (h composeHA) ipOf(service string) string {
	ks := h.c.containers(service)
	if len(ks) != 1 {
		return ""
	}
	out, _ := h.c.dockerCmd("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", ks[0].name)
	return out
}

// redisCLI runs redis-cli in service's container.
func (h composeHA) redisCLI(service string, args ...string) string {
	ks := h.c.containers(service)
	if len(ks) != 1 {
		return ""
	}
	out, _ := h.c.dockerCmd(append([]string{"exec", "-e", "REDISCLI_AUTH=" + h.password, ks[0].name, "redis-cli"}, args...)...)
	return out
}

func (h composeHA) primary() string {
	for _, sentinel := range []string{"sentinel-1", "sentinel-2", "sentinel-3"} {
		f := strings.Fields(h.redisCLI(sentinel, "-p", "26379", "sentinel", "get-master-addr-by-name", masterName))
		if len(f) == 2 {
			return f[0] + ":" + f[1]
		}
	}
	return ""
}

// service is the service whose container has addr (an IP, or the
// redis service's name the sentinels were first given).
func (h composeHA) service(addr string) string {
	host, _, _ := strings.Cut(addr, ":")
	for _, svc := range []string{"redis", "redis-replica"} {
		if host == svc || host == h.ipOf(svc) {
			return svc
		}
	}
	h.t.Fatalf("no redis service has address %s", addr)
	return ""
}

func (h composeHA) kill(addr string) {
	svc := h.service(addr)
	h.killed[addr] = svc
	h.c.run("kill", "-s", "SIGKILL", svc)
}

func (h composeHA) bringBack(addr string) {
	svc := h.killed[addr]
	h.c.run("start", svc)
	waitUntil(h.t, 90*time.Second, svc+" to rejoin as a replica", func() bool {
		info := h.redisCLI(svc, "info", "replication")
		return strings.Contains(info, "role:slave") && strings.Contains(info, "master_link_status:up")
	})
	if out := h.redisCLI(svc, "set", "probe", "1"); !strings.Contains(out, "READONLY") {
		h.t.Errorf("the old primary (%s) takes writes: %q", svc, out)
	}
}

// testComposeHA: --profile ha, the api and workers pointed at the
// sentinels by .env; the primary's container killed with SIGKILL under
// load, then the checks of TestSentinelFailover, over HTTP.
func testComposeHA(t *testing.T, c *compose) {
	c.output("--profile", "mysql", "--profile", "ha", "down", "-v", "--remove-orphans")
	root := writeScripts(t)
	h := composeHA{t: t, c: c, password: "ha-" + fmt.Sprint(c.port), killed: map[string]string{}}
	for k, v := range map[string]string{"REDIS_PASSWORD": h.password, "PYRUNNER_SCRIPTS_DIR": root,
		"PYRUNNER_REDIS_URL_FILE":               "/run/pyrunner-secrets/redis-sentinel.url",
		"PYRUNNER_REDIS_SENTINEL_PASSWORD_FILE": "/run/pyrunner-secrets/redis.pass",
		"PYRUNNER_READONLY_URI":                 ""} {
		c.env[k] = v
	}
	c.writeEnv()
	t0 := time.Now()
	c.run("--profile", "ha", "up", "-d", "--wait", "--scale", "worker=4")
	s := c.stack(t, "sqlite")
	var health struct {
		Redis struct {
			Primary          string
			MasterName       string `json:"master_name"`
			SentinelsReached int    `json:"sentinels_reached"`
		}
	}
	waitUntil(t, 60*time.Second, "/health to name the primary and reach 3 sentinels", func() bool {
		return s.getJSON("/health", &health) == 200 && health.Redis.SentinelsReached == 3 && health.Redis.MasterName == masterName
	})
	t.Logf("--profile ha: 4 workers through 3 sentinels (primary %s) after %s", health.Redis.Primary, time.Since(t0).Round(time.Second))
	waitUntil(t, 60*time.Second, "the replica to be in sync and known to every sentinel", func() bool {
		if !strings.Contains(h.redisCLI("redis-replica", "info", "replication"), "master_link_status:up") {
			return false
		}
		for _, sentinel := range []string{"sentinel-1", "sentinel-2", "sentinel-3"} {
			info := h.redisCLI(sentinel, "-p", "26379", "sentinel", "master", masterName)
			if !strings.Contains(info, "num-other-sentinels\n2") || !strings.Contains(info, "num-slaves\n1") {
				return false
			}
		}
		return true
	})
	testFailovers(t, s, h, "/scripts")
}
