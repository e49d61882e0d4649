package scripts

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ztrade/pyrunner/pkg/run"
)

func setup(t *testing.T) (*Folder, string) {
	root := t.TempDir()
	outside := t.TempDir()
	w := func(p string) {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte("print(1)\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"hello.py", "sub/b.py", "_private.py", "notes.txt", "__pycache__/c.py", ".git/d.py",
		"venv/e.py", ".hidden/f.py", "node_modules/g.py", "env/h.py", ".i.py"} {
		w(p)
	}
	if err := os.WriteFile(filepath.Join(outside, "evil.py"), []byte("print(2)"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "evil.py"), filepath.Join(root, "link.py")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "outdir")); err != nil {
		t.Fatal(err)
	}
	f, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	return f, root
}

func TestScanRules(t *testing.T) {
	f, _ := setup(t)
	list, err := f.Rescan()
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, s := range list {
		paths = append(paths, s.Path)
	}
	if strings.Join(paths, ",") != "hello.py,sub/b.py" || list[0].SizeBytes != 9 || list[0].MTime == 0 {
		t.Fatalf("scanned %v", list)
	}
}

func TestResolve(t *testing.T) {
	f, root := setup(t)
	if rel, abs, err := f.Resolve("./sub/../hello.py"); err != nil || rel != "hello.py" || abs != filepath.Join(root, "hello.py") {
		t.Fatalf("%s %s %v", rel, abs, err)
	}
	// Named explicitly, any .py file inside the root runs (as in
	// quant-script-api), absolute paths inside the root included.
	for in, want := range map[string]string{"_private.py": "_private.py", ".hidden/f.py": ".hidden/f.py", "venv/e.py": "venv/e.py",
		filepath.Join(root, "sub", "b.py"): "sub/b.py"} {
		if rel, abs, err := f.Resolve(in); err != nil || rel != want || abs != filepath.Join(root, filepath.FromSlash(want)) {
			t.Errorf("Resolve(%q) = %q %q %v", in, rel, abs, err)
		}
	}
	for in, code := range map[string]run.Code{
		"../../etc/passwd": run.ECodeInvalid, "/etc/passwd": run.ECodeInvalid, "link.py": run.ECodeInvalid,
		"notes.txt": run.ECodeInvalid, "missing.py": run.ECodeNotFound, root + "/../x.py": run.ECodeInvalid,
		"": run.ECodeInvalid, "outdir/evil.py": run.ECodeInvalid,
	} {
		if _, _, err := f.Resolve(in); run.ErrorCode(err) != code {
			t.Errorf("Resolve(%q) = %v, want %s", in, err, code)
		}
	}
	if d, err := f.ResolveDir("sub"); err != nil || d != filepath.Join(root, "sub") {
		t.Errorf("cwd sub: %s %v", d, err)
	}
	if d, err := f.ResolveDir(filepath.Join(root, "sub")); err != nil || d != filepath.Join(root, "sub") {
		t.Errorf("absolute cwd inside the root: %s %v", d, err)
	}
	for _, in := range []string{"..", "/tmp", "outdir", "nope"} {
		if _, err := f.ResolveDir(in); run.ErrorCode(err) != run.ECodeInvalid {
			t.Errorf("ResolveDir(%q) = %v", in, err)
		}
	}
}
