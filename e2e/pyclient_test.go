package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ztrade/pyrunner/pkg/auth"
)

// TestPythonClient installs clients/python into a fresh virtualenv
// (offline: Debian's requests through --system-site-packages), gives it a
// Jupyter kernel, and runs its pytest tests against two real stacks: one
// open, one with JWT auth and PYRUNNER_TOKEN.
func TestPythonClient(t *testing.T) {
	venv := filepath.Join(t.TempDir(), "venv")
	src, err := filepath.Abs("../clients/python")
	if err != nil {
		t.Fatal(err)
	}
	// Built and installed from a copy: the build leaves nothing in the tree.
	pkg := filepath.Join(t.TempDir(), "pyrunner-client")
	for _, c := range [][]string{
		{"cp", "-r", src, pkg},
		{"/usr/bin/python3", "-m", "venv", "--system-site-packages", venv},
		{filepath.Join(venv, "bin/pip"), "install", "--no-index", "--no-build-isolation", "--quiet", pkg},
		{filepath.Join(venv, "bin/python"), "-m", "ipykernel", "install", "--prefix", venv, "--name", "pyrunner-e2e"},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(c, " "), err, out)
		}
	}

	open := startStack(t, stackOpts{scripts: writeScripts(t)})
	secured := startStack(t, stackOpts{workers: 1, env: map[string]string{
		"SCRIPT_JWT_AUTH": "true", "SCRIPT_JWT_SECRET": jwtSecret, "SCRIPT_JWT_ISS": jwtIss, "SCRIPT_JWT_AUD": jwtAud,
		"PYRUNNER_TOKEN": staticToken}})
	minter := &auth.Minter{Secret: []byte(jwtSecret), Issuer: jwtIss, Audience: jwtAud}
	tokens := map[string]string{"static": staticToken}
	for name, scope := range map[string]string{"all": "*", "research": auth.ScopeResearchRun} {
		if tokens[name], err = minter.Mint("notebook", []string{scope}, time.Hour, nil); err != nil {
			t.Fatal(err)
		}
	}
	tj, _ := json.Marshal(tokens)
	open.waitRecovered()
	secured.waitRecovered()

	cmd := exec.Command(filepath.Join(venv, "bin/python"), "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
		filepath.Join(src, "tests"))
	cmd.Dir = t.TempDir() // not the source tree: the installed package is imported
	cmd.Env = append(os.Environ(), "PYRUNNER_TEST_URL="+open.base, "PYRUNNER_TEST_AUTH_URL="+secured.base,
		"PYRUNNER_TEST_TOKENS="+string(tj), "PYRUNNER_TEST_KERNEL=pyrunner-e2e", "PYRUNNER_TEST_INSTALLED=1",
		"PYTHONDONTWRITEBYTECODE=1", "JUPYTER_PLATFORM_DIRS=1", "PYDEVD_DISABLE_FILE_VALIDATION=1")
	out, err := cmd.CombinedOutput()
	t.Logf("pytest:\n%s", out)
	if err != nil {
		t.Fatalf("the Python client's tests failed: %v", err)
	}
	if strings.Contains(string(out), "skipped") {
		t.Errorf("a Python client test was skipped:\n%s", out)
	}
}
