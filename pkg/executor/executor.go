// Package executor runs research code in Python. An Executor takes a Job
// (code, the df frame, limits, and a callback serving load_kline) and
// returns what the run produced. The Python side is python/harness.py; Go
// and Python talk over a socketpair on the child's file descriptor 3.
package executor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ztrade/pyrunner/pkg/frame"
	"github.com/ztrade/pyrunner/pkg/proc"
	"github.com/ztrade/pyrunner/pkg/research"
)

// LoadRequest is what user code passed to load_kline.
type LoadRequest struct {
	Exchange string `json:"exchange"`
	Symbol   string `json:"symbol"`
	BinSize  string `json:"binSize"`
	Start    int64  `json:"start"`
	End      int64  `json:"end"`
	Limit    int64  `json:"limit"`
}

// Job is one research run.
type Job struct {
	RunID   string
	Code    string
	Timeout time.Duration
	Frame   *frame.Frame
	// LoadKline serves load_kline calls from user code.
	LoadKline func(ctx context.Context, r LoadRequest) (*frame.Frame, error)
}

// Output is what a run produced.
type Output struct {
	OK              bool
	Error           string
	TimedOut        bool
	Result          json.RawMessage
	Images          []research.Image
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

// convResult is how a conversation ended: the harness's result, or why
// there is none.
type convResult struct {
	res *resultMsg
	err error
}

// talk starts the conversation on rs's channel and returns where it ends.
// It may start before the process that answers exists: the job waits in
// the socket, so a forked child finds it there at once.
func talk(ctx context.Context, rs *runSetup, job Job, lim Limits, isolated bool) <-chan convResult {
	done := make(chan convResult, 1)
	go func() {
		res, err := conversation(ctx, rs, job, lim, isolated)
		done <- convResult{res, err}
	}()
	return done
}

// The buffers of conversations, kept for the next (a run should not cost
// the worker a garbage collection).
var (
	writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 64<<10) }}
	readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}
)

// conversation runs the job over an open channel: send the job, serve
// load_kline requests, and return the harness's result message.
func conversation(ctx context.Context, rs *runSetup, job Job, lim Limits, isolated bool) (*resultMsg, error) {
	conn := rs.conn
	w, r := writers.Get().(*bufio.Writer), readers.Get().(*bufio.Reader)
	w.Reset(conn)
	r.Reset(conn)
	defer func() {
		w.Reset(nil)
		r.Reset(nil)
		writers.Put(w)
		readers.Put(r)
	}()
	if err := sendFrame(conn, w, newJobMsg(job, lim, rs, isolated), job.Frame); err != nil {
		return nil, fmt.Errorf("send job: %w", err)
	}
	for {
		h, err := readMsg(r, lim.maxMessage())
		if err != nil {
			return nil, err
		}
		var kind struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(h, &kind); err != nil {
			return nil, fmt.Errorf("bad message from harness: %w", err)
		}
		switch kind.Type {
		case msgResult:
			var res resultMsg
			if err := decodeStrict(h, &res); err != nil {
				return nil, fmt.Errorf("bad result from harness: %w", err)
			}
			return &res, nil
		case msgLoadKline:
			if err := serveLoadKline(ctx, conn, w, job, h); err != nil {
				return nil, fmt.Errorf("answer load_kline: %w", err)
			}
		default:
			return nil, fmt.Errorf("unexpected message %q from harness", kind.Type)
		}
	}
}

// newJobMsg is the job message that starts job under lim.
func newJobMsg(job Job, lim Limits, rs *runSetup, isolated bool) *jobMsg {
	m := &jobMsg{
		Type: msgJob, Code: job.Code, TimeoutSec: int(job.Timeout / time.Second),
		MaxImages: lim.MaxImages, MaxImageBytes: lim.MaxImageBytes, MaxResultBytes: lim.MaxResultBytes,
		MemoryBytes: lim.MemoryBytes, FileBytes: lim.FileBytes, OpenFiles: lim.OpenFiles,
	}
	if rs.id.ok {
		// RLIMIT_NPROC counts every process of the uid, so it is only set
		// for the run's own identity (when the worker is root).
		uid, gid := rs.id.uid, rs.id.gid
		m.UID, m.GID, m.Processes = &uid, &gid, lim.Processes
		if isolated {
			m.Isolate = isolateParams(rs, lim)
		}
	}
	return m
}

// serveLoadKline answers the load_kline request h with a frame or an error.
func serveLoadKline(ctx context.Context, conn net.Conn, w *bufio.Writer, job Job, h []byte) error {
	var req loadKlineMsg
	f, err := (*frame.Frame)(nil), decodeStrict(h, &req)
	if err == nil {
		f, err = job.LoadKline(ctx, req.LoadRequest)
	}
	if err != nil {
		return writeMsg(w, errorMsg{Type: msgError, Error: err.Error()}, 0, nil)
	}
	return sendFrame(conn, w, &frameMsg{Type: msgFrame}, f)
}

// sendFrame sends msg carrying f (as its "frame"): a small
// frame as its body; one of frame.ShareRows rows or more as a sealed
// memory file passed beside the stream (SCM_RIGHTS), which the harness
// maps without a copy. A frame the K-line cache keeps is shared already,
// so asking for it again copies nothing at all.
func sendFrame(conn net.Conn, w *bufio.Writer, msg carriesFrame, f *frame.Frame) error {
	uc, unixConn := conn.(*net.UnixConn)
	if unixConn {
		var err error
		if f, err = frame.ShareLarge(f); err != nil {
			slog.Warn("could not share a frame; sending it in the stream", "rows", f.Len(), "err", err)
		}
	}
	msg.setFrame(f.Header())
	if err := writeMsg(w, msg, f.BodyLen(), f.WriteWire); err != nil {
		return err
	}
	fd, shared := f.SharedFile()
	if !shared {
		return nil
	}
	if !unixConn {
		return fmt.Errorf("a shared frame needs a unix socket, not %T", conn)
	}
	_, _, err := uc.WriteMsgUnix([]byte{'F'}, syscall.UnixRights(fd), nil)
	f.KeepAlive()
	if err != nil {
		return fmt.Errorf("pass the frame's memory file: %w", err)
	}
	return nil
}

// isolateParams is what python/isolation.py needs of a run.
func isolateParams(rs *runSetup, lim Limits) *isolateMsg {
	disk := lim.DiskBytes
	if disk <= 0 {
		disk = DefaultDiskBytes
	}
	return &isolateMsg{UID: rs.id.uid, GID: rs.id.gid, DiskBytes: disk}
}

// socketPair returns the parent's end as a net.Conn and the child's as a file.
func socketPair() (net.Conn, *os.File, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("executor: socketpair: %w", err)
	}
	parent := os.NewFile(uintptr(fds[0]), "pyrunner-channel")
	child := os.NewFile(uintptr(fds[1]), "pyrunner-channel-child")
	conn, err := net.FileConn(parent)
	parent.Close()
	if err != nil {
		child.Close()
		return nil, nil, fmt.Errorf("executor: channel: %w", err)
	}
	return conn, child, nil
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
