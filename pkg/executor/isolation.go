package executor

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"

	"github.com/ztrade/pyrunner/python"
)

// Isolation of user code, in both executor modes:
//
//   - a minimal environment (childEnv) and no credentials anywhere in it;
//   - when the worker runs as root, user code runs as nobody (65534), so it
//     cannot read the worker's files or /proc entries, and RLIMIT_NPROC
//     (which root ignores) bounds its processes;
//   - rlimits for address space, file size, open files and processes, set
//     by the harness before user code starts (soft = hard);
//   - with bubblewrap: a read-only root, private /tmp and /dev/shm, no
//     network, the worker's config and database files masked, and only the
//     work dir writable.

// nobody is the uid and gid user code runs as when the worker is root.
const nobody = 65534

// runIdentity is the uid/gid to run user code as, when the worker can
// switch (it is root).
func runIdentity() (uid, gid int, ok bool) {
	if os.Geteuid() != 0 {
		return 0, 0, false
	}
	return nobody, nobody, true
}

// makeRunDir makes a fresh private working directory for one run, owned by
// the identity the run will have. The work dir itself is not listable by
// user code, so one run cannot find another's directory.
func makeRunDir(workDir, runID string) (string, error) {
	dir, err := os.MkdirTemp(workDir, "run-"+runID+"-")
	if err != nil {
		return "", fmt.Errorf("executor: make run dir: %w", err)
	}
	if uid, gid, ok := runIdentity(); ok {
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("executor: chown run dir: %w", err)
		}
	}
	return dir, nil
}

// prepareWorkDir makes the work dir (traversable, not listable, by others),
// writes the embedded Python side (harness.py, zygote.py) into pyDir, and
// makes the shared matplotlib config dir with its font cache built, so
// runs only ever read it.
func prepareWorkDir(opt Options) (pyDir, mplDir string, err error) {
	if err := os.MkdirAll(opt.WorkDir, 0o711); err != nil {
		return "", "", fmt.Errorf("executor: make work dir: %w", err)
	}
	os.Chmod(opt.WorkDir, 0o711)
	if _, _, ok := runIdentity(); ok {
		for p := filepath.Dir(opt.WorkDir); p != "/" && p != "."; p = filepath.Dir(p) {
			if fi, err := os.Stat(p); err == nil && fi.Mode().Perm()&0o001 == 0 {
				return "", "", fmt.Errorf("executor: work dir %s is out of reach of the user code runs as (uid %d): %s has mode %o; pick a PYRUNNER_WORK_DIR whose parents others may traverse", opt.WorkDir, nobody, p, fi.Mode().Perm())
			}
		}
	}
	pyDir = filepath.Join(opt.WorkDir, ".harness")
	if err := os.MkdirAll(pyDir, 0o755); err != nil {
		return "", "", fmt.Errorf("executor: make %s: %w", pyDir, err)
	}
	for name, src := range map[string][]byte{"harness.py": python.Harness, "zygote.py": python.Zygote} {
		p := filepath.Join(pyDir, name)
		tmp := p + "." + strconv.Itoa(os.Getpid()) // written whole, then renamed: workers may share the dir
		if err := os.WriteFile(tmp, src, 0o644); err == nil {
			err = os.Rename(tmp, p)
		}
		if err != nil {
			return "", "", fmt.Errorf("executor: write %s: %w", p, err)
		}
	}
	mplDir = filepath.Join(opt.WorkDir, ".mplconfig")
	if err := os.MkdirAll(mplDir, 0o755); err != nil {
		return "", "", fmt.Errorf("executor: make matplotlib dir: %w", err)
	}
	cmd := exec.Command(opt.Python, "-c", "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot")
	cmd.Env = childEnv(opt.WorkDir, mplDir, nil)
	if out, err := cmd.CombinedOutput(); err != nil {
		slog.Warn("matplotlib font cache not built", "err", err, "output", string(out))
	}
	filepath.Walk(mplDir, func(p string, info os.FileInfo, err error) error {
		if err == nil {
			os.Chmod(p, info.Mode()|0o444|(info.Mode()&0o100)>>2|(info.Mode()&0o100)>>4)
		}
		return nil
	})
	return pyDir, mplDir, nil
}

// ProbeSandbox resolves PYRUNNER_SANDBOX: "none" stays none, "bwrap"
// must work (or it is an error), "auto" is bwrap when it works here.
func ProbeSandbox(mode string) (string, error) {
	if mode == "none" {
		return "none", nil
	}
	err := exec.Command("bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-net",
		"--die-with-parent", "--", "/bin/true").Run()
	switch {
	case err == nil:
		return "bwrap", nil
	case mode == "bwrap":
		return "", fmt.Errorf("executor: PYRUNNER_SANDBOX=bwrap but bubblewrap does not work here: %w", err)
	default:
		slog.Warn("bubblewrap does not work here; running user code without a sandbox", "err", err)
		return "none", nil
	}
}

// sandboxArgs wraps argv in bubblewrap when the sandbox is on: read-only
// root, private /tmp and /dev/shm, no network, the hidden paths masked,
// readable bound read-only (they may sit under /tmp) and only writable
// bound read-write.
func sandboxArgs(opt Options, readable, writable []string, argv []string) []string {
	if opt.Sandbox != "bwrap" {
		return argv
	}
	a := []string{"bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
		"--perms", "1777", "--tmpfs", "/tmp", "--perms", "1777", "--tmpfs", "/dev/shm", "--unshare-net", "--unshare-ipc", "--unshare-uts",
		"--die-with-parent"}
	for _, r := range readable {
		a = append(a, "--ro-bind", r, r)
	}
	for _, w := range writable {
		a = append(a, "--bind", w, w)
	}
	for _, h := range opt.Hide {
		fi, err := os.Stat(h)
		switch {
		case err != nil:
		case fi.IsDir():
			a = append(a, "--tmpfs", h)
		default:
			a = append(a, "--ro-bind", "/dev/null", h)
		}
	}
	return append(append(a, "--"), argv...)
}

// prepareRun makes a run's directory and its channel: the parent's end
// and the child's end (to pass as fd 3). cleanup closes the channel and
// removes the directory.
func prepareRun(workDir, runID string) (dir string, conn net.Conn, child *os.File, cleanup func(), err error) {
	dir, err = makeRunDir(workDir, runID)
	if err != nil {
		return "", nil, nil, nil, err
	}
	conn, child, err = socketPair()
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, nil, nil, err
	}
	return dir, conn, child, func() { conn.Close(); os.RemoveAll(dir) }, nil
}
