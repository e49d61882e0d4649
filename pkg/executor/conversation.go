package executor

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/ztrade/pyrunner/pkg/frame"
)

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
	ans := newAnswers(ctx, conn, w, job)
	defer ans.close()
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
			if err := ans.ask(h); err != nil {
				return nil, fmt.Errorf("answer load_kline: %w", err)
			}
		default:
			return nil, fmt.Errorf("unexpected message %q from harness", kind.Type)
		}
	}
}

// loadParallel is how many of a run's load_kline requests are loaded at
// once (the harness may send many before it reads an answer: load_klines).
const loadParallel = 4

// answers serves a run's load_kline requests: each is loaded as soon as
// it is read, up to loadParallel at a time, and answered in the order
// asked, which is the order the harness reads them in.
type answers struct {
	ctx     context.Context
	conn    net.Conn
	w       *bufio.Writer
	job     Job
	slots   chan struct{}
	pending chan *answer // in the order asked
	failed  chan struct{}
	err     error // why writing failed; set before failed closes
	done    chan struct{}
}

// answer is one request's frame or error, once loaded is closed.
type answer struct {
	f      *frame.Frame
	err    error
	loaded chan struct{}
}

func newAnswers(ctx context.Context, conn net.Conn, w *bufio.Writer, job Job) *answers {
	a := &answers{ctx: ctx, conn: conn, w: w, job: job, slots: make(chan struct{}, loadParallel),
		pending: make(chan *answer, 1024), failed: make(chan struct{}), done: make(chan struct{})}
	go a.write()
	return a
}

// ask starts loading the request h; its answer is written in turn.
func (a *answers) ask(h []byte) error {
	an := &answer{loaded: make(chan struct{})}
	var req loadKlineMsg
	if an.err = decodeStrict(h, &req); an.err != nil {
		close(an.loaded)
	} else {
		go func() {
			defer close(an.loaded)
			select {
			case a.slots <- struct{}{}:
				defer func() { <-a.slots }()
				an.f, an.err = a.job.LoadKline(a.ctx, req.Market)
			case <-a.ctx.Done():
				an.err = a.ctx.Err()
			}
		}()
	}
	select {
	case a.pending <- an:
		return nil
	case <-a.failed:
		return a.err
	}
}

// write answers the requests in the order asked, until close.
func (a *answers) write() {
	defer close(a.done)
	for an := range a.pending {
		<-an.loaded
		var err error
		if an.err != nil {
			err = writeMsg(a.w, errorMsg{Type: msgError, Error: an.err.Error()}, 0, nil)
		} else {
			err = sendFrame(a.conn, a.w, &frameMsg{Type: msgFrame}, an.f)
		}
		if err != nil {
			a.err = err
			close(a.failed)
			for an := range a.pending { // let the loads end
				<-an.loaded
			}
			return
		}
	}
}

// close waits for the answers being written (none are, once the result
// came: the harness reads every answer before it sends its result).
func (a *answers) close() {
	close(a.pending)
	<-a.done
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
