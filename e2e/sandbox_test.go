package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// TestSandbox: with bubblewrap, user code has no network, cannot write
// outside its run dir, and cannot read the worker's config or database;
// with the sandbox off, runs still work.
func TestSandbox(t *testing.T) {
	for _, mode := range []string{"warm", "cold", "none"} {
		t.Run(mode, func(t *testing.T) {
			// Everything here is open to every user, so only the sandbox stands in the way.
			dir, err := os.MkdirTemp("", "pyrunner-open-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			if err := os.Chmod(dir, 0o777); err != nil {
				t.Fatal(err)
			}
			db, _ := demoSQLite(t, dir)
			if err := os.Chmod(db, 0o666); err != nil {
				t.Fatal(err)
			}
			cfgPath := filepath.Join(dir, "ztrade.yaml")
			if err := os.WriteFile(cfgPath, []byte("db:\n  readonly:\n    type: sqlite\n    uri: "+db+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			env := map[string]string{"PYRUNNER_SANDBOX": "bwrap", "PYRUNNER_EXECUTOR": mode}
			if mode == "none" {
				env = map[string]string{"PYRUNNER_SANDBOX": "none"}
			}
			s := startStack(t, stackOpts{dbEnv: map[string]string{"PYRUNNER_ZTRADE_CONFIG": cfgPath}, env: env})
			code := `import os, socket
def attempt(f):
    try:
        f()
        return "allowed"
    except Exception as e:
        return type(e).__name__
def connect():
    socket.create_connection(("127.0.0.1", ` + strconv.Itoa(s.redisPort) + `), timeout=2).close()
def write_outside():
    open("` + filepath.Join(dir, "escaped.txt") + `", "w").write("x")
def read_config():
    open("` + cfgPath + `").read()
def write_db():
    open("` + db + `", "ab").write(b"x")
def write_here():
    open("mine.txt", "w").write("x")
result = {"connect": attempt(connect), "write_outside": attempt(write_outside), "read_config": attempt(read_config),
          "write_db": attempt(write_db), "write_here": attempt(write_here), "rows": len(df)}`
			var got map[string]any
			s.mustOK(code, &got)
			for _, k := range []string{"connect", "write_outside", "read_config", "write_db"} {
				if mode != "none" && got[k] == "allowed" {
					t.Errorf("%s was allowed inside the sandbox: %v", k, got)
				}
				if mode == "none" && got[k] != "allowed" {
					t.Errorf("without the sandbox %s should work (or this test proves nothing): %v", k, got)
				}
			}
			if got["write_here"] != "allowed" || got["rows"] != 1441.0 {
				t.Errorf("the run dir must stay writable and df loaded: %v", got)
			}
			if _, err := os.Stat(filepath.Join(dir, "escaped.txt")); mode != "none" && err == nil {
				t.Errorf("a file escaped the sandbox")
			}
		})
	}
}
