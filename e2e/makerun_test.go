package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// TestMakeRun: `make run` starts the stack and the curl it prints works;
// `make stop` stops it.
func TestMakeRun(t *testing.T) {
	port, redisPort := freePort(t), freePort(t)
	env := append(os.Environ(), "PYRUNNER_RUN_DIR="+t.TempDir(), fmt.Sprintf("PYRUNNER_PORT=%d", port),
		fmt.Sprintf("PYRUNNER_REDIS_PORT=%d", redisPort))
	makeStop := func() ([]byte, error) {
		stop := exec.Command("make", "stop")
		stop.Dir, stop.Env = "..", env
		return stop.CombinedOutput()
	}
	t.Cleanup(func() { // a second stop (after the test's own) finds nothing to stop
		if out, err := makeStop(); err != nil {
			t.Errorf("make stop: %v\n%s", err, out)
		}
	})
	cmd := exec.Command("make", "run")
	cmd.Dir, cmd.Env = "..", env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make run: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`(?s)(curl -sS -X POST .*?}'\n)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("make run printed no curl:\n%s", out)
	}
	res, err := exec.Command("bash", "-c", string(m[1])).Output()
	if err != nil {
		t.Fatalf("the printed curl failed: %v\n%s", err, m[1])
	}
	var body struct {
		OK     bool `json:"ok"`
		Result struct {
			Rows int `json:"rows"`
		} `json:"result"`
	}
	if err := json.Unmarshal(res, &body); err != nil || !body.OK || body.Result.Rows != 1441 {
		t.Fatalf("printed curl answered %s", res)
	}
	if out, err := makeStop(); err != nil || !strings.Contains(string(out), "stopped") {
		t.Errorf("make stop: %v %s", err, out)
	}
	work := fmt.Sprintf("%s/pyrunner-stack-%d", os.TempDir(), port)
	if _, err := os.Stat(work); err == nil {
		t.Errorf("make stop left %s behind", work)
	}
}

// TestMakeRunTakenPort: `make run` on a port something else holds fails
// loudly and says how to pick other ports, instead of joining that stack.
func TestMakeRunTakenPort(t *testing.T) {
	for _, which := range []string{"PYRUNNER_PORT", "PYRUNNER_REDIS_PORT"} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports := map[string]int{"PYRUNNER_PORT": freePort(t), "PYRUNNER_REDIS_PORT": freePort(t)}
		ports[which] = l.Addr().(*net.TCPAddr).Port
		env := append(os.Environ(), "PYRUNNER_RUN_DIR="+t.TempDir())
		for k, v := range ports {
			env = append(env, fmt.Sprintf("%s=%d", k, v))
		}
		cmd := exec.Command("make", "run")
		cmd.Dir, cmd.Env = "..", env
		out, err := cmd.CombinedOutput()
		l.Close()
		if err == nil || !strings.Contains(string(out), "already in use") || !strings.Contains(string(out), "PYRUNNER_PORT=") {
			t.Errorf("make run with %s taken: err %v\n%s", which, err, out)
		}
		stop := exec.Command("make", "stop")
		stop.Dir, stop.Env = "..", env
		if err := stop.Run(); err != nil {
			t.Fatal(err)
		}
	}
}
