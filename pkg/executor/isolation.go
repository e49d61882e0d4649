package executor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ztrade/pyrunner/python"
)

// Isolation of user code, in both executor modes:
//
//   - a minimal environment (childEnv) and no credentials anywhere in it;
//   - when the worker runs as root, each run gets a uid of its own (see
//     newIdentity), so runs cannot signal each other or share RLIMIT_NPROC,
//     and cannot read the worker's files or /proc entries;
//   - rlimits for address space, file size, open files and processes, set
//     by the harness before user code starts (soft = hard);
//   - with bubblewrap: a read-only root, no network, the worker's config and
//     database files masked; and per run (python/isolation.py) its own
//     mount, PID and IPC namespaces, one tmpfs of PYRUNNER_DISK_MB for its
//     directory, /tmp and /dev/shm together, and a seccomp filter against
//     namespaces, mounts and ptrace. When the run's first process ends, the
//     kernel kills everything else it started.

// identity is the uid/gid a run's user code has, when the worker can
// switch (it is root).
type identity struct {
	uid, gid int
	ok       bool
}

// uidBase and uidSpan place run uids far above any system or login user.
// A run's uid is drawn at random, so runs of different workers on one host
// practically never share one (one in 16M per pair of concurrent runs), and
// nothing on the host's disk belongs to it.
const (
	uidBase = 1 << 24
	uidSpan = 1 << 24
)

// newIdentity picks the identity of one run.
func newIdentity() identity {
	if os.Geteuid() != 0 {
		return identity{}
	}
	id := uidBase + rand.IntN(uidSpan)
	return identity{uid: id, gid: id, ok: true}
}

// makeRunDir makes a fresh private working directory for one run. An
// isolated run mounts its own tmpfs on it, so on the host it stays an
// empty folder only root may enter; otherwise it is owned by the run's
// identity. The work dir itself is not listable by user code.
func makeRunDir(workDir, runID string, id identity, isolated bool) (string, error) {
	dir, err := os.MkdirTemp(workDir, "run-"+runID+"-")
	if err != nil {
		return "", fmt.Errorf("executor: make run dir: %w", err)
	}
	if id.ok && !isolated {
		if err := os.Chown(dir, id.uid, id.gid); err != nil {
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
	if err := os.Chmod(opt.WorkDir, 0o711); err != nil {
		return "", "", fmt.Errorf("executor: work dir: %w", err)
	}
	if os.Geteuid() == 0 {
		for p := filepath.Dir(opt.WorkDir); p != "/" && p != "."; p = filepath.Dir(p) {
			if fi, err := os.Stat(p); err == nil && fi.Mode().Perm()&0o001 == 0 {
				return "", "", fmt.Errorf("executor: work dir %s is out of reach of the users code runs as: %s has mode %o; pick a PYRUNNER_WORK_DIR whose parents others may traverse", opt.WorkDir, p, fi.Mode().Perm())
			}
		}
	}
	pyDir = filepath.Join(opt.WorkDir, ".harness")
	if err := os.MkdirAll(pyDir, 0o755); err != nil {
		return "", "", fmt.Errorf("executor: make %s: %w", pyDir, err)
	}
	for name, src := range python.Files {
		p := filepath.Join(pyDir, name)
		tmp := p + "." + strconv.Itoa(os.Getpid()) // written whole, then renamed: workers may share the dir
		if err := os.WriteFile(tmp, src, 0o644); err != nil {
			return "", "", fmt.Errorf("executor: write %s: %w", tmp, err)
		}
		if err := os.Rename(tmp, p); err != nil {
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
	// Readable by the users runs are (and the folders traversable).
	err = filepath.Walk(mplDir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chmod(p, info.Mode()|0o444|(info.Mode()&0o100)>>2|(info.Mode()&0o100)>>4)
	})
	if err != nil {
		return "", "", fmt.Errorf("executor: matplotlib dir: %w", err)
	}
	return pyDir, mplDir, nil
}

// resolveSandbox turns PYRUNNER_SANDBOX into what runs here. "none"
// stays none. "bwrap" must give full isolation (bubblewrap, and inside it
// the per-run namespaces and seccomp filter of python/isolation.py, which
// need the worker to be root) or it is an error. "auto" is bwrap when that
// works, and otherwise none with a note saying why (logged at start and
// shown by /health).
func resolveSandbox(opt Options, pyDir string) (mode, note string, err error) {
	if opt.Sandbox == "none" {
		return "none", "", nil
	}
	// "" is auto.
	problem := probeIsolation(opt, pyDir)
	switch {
	case problem == nil:
		return "bwrap", "", nil
	case opt.Sandbox == "bwrap":
		return "", "", fmt.Errorf("executor: PYRUNNER_SANDBOX=bwrap but the sandbox does not work here: %w", problem)
	}
	note = "sandbox off: " + problem.Error() + "; user code runs without bubblewrap or per-run namespaces"
	slog.Warn("PYRUNNER_SANDBOX=auto fell back to none: research code is NOT isolated", "reason", problem.Error())
	return "none", note, nil
}

// probeIsolation runs, inside bubblewrap, a throwaway process that sets up
// a run's namespaces and seccomp filter and checks that a user namespace
// is then refused.
func probeIsolation(opt Options, pyDir string) error {
	if os.Geteuid() != 0 {
		return errors.New("per-run isolation needs the worker to run as root (or with CAP_SYS_ADMIN, as in the worker container)")
	}
	if _, err := exec.LookPath("bwrap"); err != nil {
		return errors.New("bubblewrap (bwrap) is not installed")
	}
	probe := "import sys; sys.path.insert(0, sys.argv[1]); import isolation; isolation.probe()"
	argv := sandboxArgs(Options{Sandbox: "bwrap", Hide: opt.Hide}, []string{pyDir}, nil, []string{opt.Python, "-I", "-c", probe, pyDir})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("isolation probe failed (%v): %s", err, strings.TrimSpace(string(out)))
	}
	return nil
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
		"--perms", "1777", "--tmpfs", "/tmp", "--perms", "1777", "--tmpfs", "/dev/shm",
		// /run holds the host's Unix sockets (a database's, Docker's), which
		// no network namespace shuts off.
		"--tmpfs", "/run", "--unshare-net", "--unshare-ipc", "--unshare-uts",
		// No --new-session: a session of its own is an autogroup of its
		// own to the scheduler, and the warm zygote's (its forks, its
		// children's exits) then took the CPU from the run in progress
		// as a whole group, nice values or not: an isolated warm call cost
		// 60-85% more than an unisolated one. What --new-session guards
		// against, user code pushing input into a controlling terminal
		// (TIOCSTI), the run's seccomp filter refuses.
		"--die-with-parent"}
	for _, r := range readable {
		a = append(a, "--ro-bind", r, r)
	}
	for _, w := range writable {
		a = append(a, "--bind", w, w)
	}
	for _, h := range opt.Hide {
		h, err := filepath.Abs(h) // a relative path (SCRIPT_STATE_DIR's default) is the worker's, not the sandbox root's
		if err != nil {
			continue
		}
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

// runSetup is what one run needs before its process starts: its
// directory, its identity and its channel (the parent's end, and the
// child's end to pass as fd 3).
type runSetup struct {
	dir   string
	id    identity
	conn  net.Conn
	child *os.File
}

// newRunSetup makes a run's directory, identity and channel; the caller
// closes rs.conn and removes rs.dir.
func newRunSetup(workDir, runID string, isolated bool) (*runSetup, error) {
	id := newIdentity()
	dir, err := makeRunDir(workDir, runID, id, isolated)
	if err != nil {
		return nil, err
	}
	conn, child, err := socketPair()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return &runSetup{dir: dir, id: id, conn: conn, child: child}, nil
}
