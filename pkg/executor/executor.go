// Package executor runs research code in Python. An Executor takes a Job
// (code, the df frame, limits, and a callback serving load_kline) and
// returns what the run produced. The Python side is python/harness.py; Go
// and Python talk over a socketpair on the child's file descriptor 3.
package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/ztrade/pyrunner/pkg/frame"
	"github.com/ztrade/pyrunner/pkg/proc"
	"github.com/ztrade/pyrunner/pkg/wire"
)

// Job is one research run.
type Job struct {
	RunID   string
	Code    string
	Timeout time.Duration
	Frame   *frame.Frame
	// LoadKline serves load_kline calls from user code.
	LoadKline func(ctx context.Context, m wire.Market) (*frame.Frame, error)
}

// Output is what a run produced.
type Output struct {
	OK              bool
	Error           string
	TimedOut        bool
	Result          json.RawMessage
	Images          []wire.Image
	Warnings        []string
	Stdout          string
	StdoutTruncated bool
	Stderr          string
	StderrTruncated bool
	// ExitCode is the process's exit code, negative for a signal.
	ExitCode int
}

// Executor runs research jobs. Run returns an error only when the run
// could not be attempted at all; failures of the user's code are Outputs.
type Executor interface {
	Run(ctx context.Context, job Job) (*Output, error)
	// Mode names the executor ("cold" or "warm") for health and logs.
	Mode() string
	// Sandbox is the sandbox in force ("bwrap" or "none") and, when
	// PYRUNNER_SANDBOX=auto fell back to none, a note saying why.
	Sandbox() (mode, note string)
	// Ready reports whether a run given now starts at once (the warm
	// executor's zygote is up).
	Ready() bool
	// Prepare returns once a run given now would start at once, making
	// the executor ready if it is not (starting a zygote that died).
	Prepare(ctx context.Context) error
	Close() error
}

// Limits bound every run.
type Limits struct {
	MaxOutputBytes int
	MaxImages      int
	MaxImageBytes  int
	MemoryBytes    int64
	FileBytes      int64
	OpenFiles      int
	Processes      int
	// DiskBytes bounds all an isolated run writes: its directory, /tmp
	// and /dev/shm together (one tmpfs).
	DiskBytes int64
	// MaxResultBytes bounds the JSON of a run's result.
	MaxResultBytes int
}

// DefaultDiskBytes bounds what an isolated run writes when Limits gives
// no DiskBytes (PYRUNNER_DISK_MB's default).
const DefaultDiskBytes = 512 << 20

// maxMessage is the largest message a harness may send under lim: the
// result, the images in base64, and room for the rest.
func (lim Limits) maxMessage() int64 {
	if lim.MaxResultBytes <= 0 {
		return 1 << 30
	}
	return int64(lim.MaxResultBytes) + int64(lim.MaxImages)*(int64(lim.MaxImageBytes)*4/3+1024) + 1<<20
}

// Options configure an executor.
type Options struct {
	Python  string
	WorkDir string
	Limits  Limits
	// Passthrough names (or globs of) worker environment variables user
	// code may see.
	Passthrough []string
	// Sandbox is PYRUNNER_SANDBOX: "auto", "bwrap" or "none" (see
	// resolveSandbox); the executor reports what it resolved to.
	Sandbox string
	// Hide lists files and folders masked inside the sandbox: the worker's
	// config, its SQLite database, its state.
	Hide []string
	// Preload is a comma-separated list of modules the warm zygote imports
	// besides numpy, pandas and matplotlib.
	Preload string
}

// ErrCancelled marks a run whose context was cancelled (stop or shutdown).
var ErrCancelled = errors.New("run cancelled")

// childEnv is the whole environment user code gets: a minimal base, the
// passthrough names, and nothing else of the worker's (no DB credentials,
// Redis URL or JWT secret).
func childEnv(home, mplDir string, passthrough []string) []string {
	env := []string{
		"PATH=/usr/local/bin:/usr/bin:/bin",
		"HOME=" + home,
		"TMPDIR=" + home,
		"LANG=C.UTF-8",
		"TZ=UTC",
		"PYTHONUNBUFFERED=1",
		"PYTHONDONTWRITEBYTECODE=1",
		"MPLBACKEND=Agg",
		"MPLCONFIGDIR=" + mplDir,
		"OPENBLAS_NUM_THREADS=1",
		"OMP_NUM_THREADS=1",
		"MKL_NUM_THREADS=1",
	}
	// OpenBLAS needs these on some CPUs to pick a kernel that works.
	return append(env, proc.PassedEnv(append([]string{"OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"}, passthrough...), os.Environ())...)
}

// FindPython returns explicit when set (checking it works), or else the
// first python3 on PATH, then /usr/bin/python3, that imports numpy and
// pandas. The error says what is missing.
func FindPython(explicit string) (string, error) {
	var candidates []string
	if explicit != "" {
		candidates = []string{explicit}
	} else {
		for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
			candidates = append(candidates, filepath.Join(dir, "python3"))
		}
		candidates = append(candidates, "/usr/bin/python3", "/usr/local/bin/python3", "/opt/conda/envs/pyrunner/bin/python")
	}
	var problems []string
	seen := map[string]bool{}
	for _, c := range candidates {
		if seen[c] {
			continue
		}
		seen[c] = true
		if _, err := os.Stat(c); err != nil {
			continue
		}
		out, err := exec.Command(c, "-c", "import numpy, pandas").CombinedOutput()
		if err == nil {
			return c, nil
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		problems = append(problems, c+": "+lines[len(lines)-1])
	}
	if len(problems) == 0 {
		return "", fmt.Errorf("no Python interpreter found (set PYRUNNER_PYTHON to one with numpy and pandas)")
	}
	return "", fmt.Errorf("no Python interpreter with numpy and pandas (set PYRUNNER_PYTHON): %s", strings.Join(problems, "; "))
}

func logKill(runID string, pid int, why string) {
	slog.Info("killing run process group", "run_id", runID, "pid", pid, "reason", why)
}

var _ io.Writer = (*capBuffer)(nil)
