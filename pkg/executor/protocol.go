package executor

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"

	"github.com/ztrade/pyrunner/pkg/frame"
	"github.com/ztrade/pyrunner/pkg/wire"
)

// This file is the one Go side of the protocol between the worker and
// its Python (python/protocol.py is the one Python side; TestProtocolMirror
// fails when the two disagree on a name or a field).
//
// A run's channel (python/harness.py) carries framed messages:
//
//	u32 big-endian header length | header JSON | u64 big-endian body length | body
//
//  1. worker → harness: jobMsg, body = the df frame
//  2. harness → worker: loadKlineMsg whenever user code calls load_kline;
//     the worker answers frameMsg (the frame as body) or errorMsg
//  3. harness → worker: resultMsg, once
//
// The zygote's control socket (python/zygote.py) carries one JSON object
// per packet: readyMsg, standbyMsg, forkFailedMsg and exitMsg from the
// zygote, tookMsg to it; runMsg goes once
// to a ready child over its own socket.

// Message types on a run's channel (the "type" field).
const (
	msgJob       = "job"
	msgLoadKline = "load_kline"
	msgFrame     = "frame"
	msgError     = "error"
	msgResult    = "result"
)

// Ops on the zygote's sockets (the "op" field).
const (
	opReady      = "ready"       // zygote → worker, once it has preloaded
	opStandby    = "standby"     // zygote → worker: a ready child, its socket attached
	opForkFailed = "fork_failed" // zygote → worker: no child could be forked
	opExit       = "exit"        // zygote → worker: a child ended
	opTook       = "took"        // worker → zygote: that child has a run, fork another
	opRun        = "run"         // worker → child: the run, with its descriptors attached
)

// jobMsg starts a run. Every limit is Go's (pkg/config owns the
// defaults): the harness defaults none of them.
type jobMsg struct {
	Type           string `json:"type"`
	Code           string `json:"code"`
	TimeoutSec     int    `json:"timeoutSec"`
	MaxImages      int    `json:"maxImages"`
	MaxImageBytes  int    `json:"maxImageBytes"`
	MaxResultBytes int    `json:"maxResultBytes"`
	MemoryBytes    int64  `json:"memoryBytes"`
	FileBytes      int64  `json:"fileBytes"`
	OpenFiles      int    `json:"openFiles"`
	// The run's own identity, sent only when the worker is root (then
	// RLIMIT_NPROC, which counts every process of a uid, is safe to set).
	UID       *int        `json:"uid,omitempty"`
	GID       *int        `json:"gid,omitempty"`
	Processes int         `json:"processes,omitempty"`
	Isolate   *isolateMsg `json:"isolate,omitempty"`
	framed
}

// isolateMsg is what python/isolation.py needs of a run.
type isolateMsg struct {
	UID       int   `json:"uid"`
	GID       int   `json:"gid"`
	DiskBytes int64 `json:"diskBytes"`
}

// loadKlineMsg is user code's load_kline call: the market and range it
// asked for, in the research request's names.
type loadKlineMsg struct {
	Type string `json:"type"`
	wire.Market
}

// frameMsg answers load_kline with a frame.
type frameMsg struct {
	Type string `json:"type"`
	framed
}

// errorMsg answers load_kline with why there is no frame.
type errorMsg struct {
	Type  string `json:"type"`
	Error string `json:"error"`
}

// resultMsg is how the run ended, as the harness saw it.
type resultMsg struct {
	Type     string          `json:"type"`
	OK       bool            `json:"ok"`
	Error    *string         `json:"error"`
	TimedOut bool            `json:"timedOut"`
	Result   json.RawMessage `json:"result"`
	Images   []wire.Image    `json:"images"`
	Warnings []string        `json:"warnings"`
}

// framed is the frame header of a message whose body is a frame.
type framed struct {
	Frame frame.Header `json:"frame"`
}

func (m *framed) setFrame(h frame.Header) { m.Frame = h }

// carriesFrame is a message sendFrame can attach a frame to.
type carriesFrame interface{ setFrame(frame.Header) }

// opOnly is the part of a zygote message read first, to pick its type.
type opOnly struct {
	Op string `json:"op"`
}

// readyMsg: the zygote has preloaded; pid is its own (not bubblewrap's).
type readyMsg struct {
	Op  string `json:"op"`
	PID int    `json:"pid"`
}

// standbyMsg: a ready child, its socket attached.
type standbyMsg struct {
	Op  string `json:"op"`
	PID int    `json:"pid"`
}

// forkFailedMsg: the zygote could not fork a child.
type forkFailedMsg struct {
	Op    string `json:"op"`
	Error string `json:"error"`
}

// exitMsg: a child ended; code is minus the signal when it was killed.
type exitMsg struct {
	Op   string `json:"op"`
	PID  int    `json:"pid"`
	Code int    `json:"code"`
}

// tookMsg tells the zygote a ready child has its run.
type tookMsg struct {
	Op  string `json:"op"`
	PID int    `json:"pid"`
}

// runMsg gives a ready child its run; the run's channel, stdout and
// stderr are attached (SCM_RIGHTS).
type runMsg struct {
	Op      string            `json:"op"`
	Run     string            `json:"run"`
	Dir     string            `json:"dir"`
	Env     map[string]string `json:"env"`
	Isolate *isolateMsg       `json:"isolate,omitempty"`
}

// messages is every message by its type or op: what python/protocol.py
// must mirror, field for field.
var messages = map[string]any{
	msgJob: jobMsg{}, msgLoadKline: loadKlineMsg{}, msgFrame: frameMsg{}, msgError: errorMsg{}, msgResult: resultMsg{},
	opReady: readyMsg{}, opStandby: standbyMsg{}, opForkFailed: forkFailedMsg{}, opExit: exitMsg{},
	opTook: tookMsg{}, opRun: runMsg{},
}

// decodeStrict decodes one message, refusing fields this side does not
// know: Go and Python ship together, so an unknown field is a protocol
// change made on one side only.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// errTooLarge is a message from the harness over the size it may have.
type errTooLarge struct{ size, limit int64 }

func (e *errTooLarge) Error() string {
	return fmt.Sprintf("message of %d bytes from the harness is over the limit of %d", e.size, e.limit)
}

// writeMsg sends one message; body may be nil.
func writeMsg(w *bufio.Writer, header any, bodyLen int64, body func(io.Writer) error) error {
	h, err := json.Marshal(header)
	if err != nil {
		return fmt.Errorf("encode message header: %w", err)
	}
	var n [8]byte
	binary.BigEndian.PutUint32(n[:4], uint32(len(h)))
	// A bufio.Writer keeps its first error and returns it from Flush.
	_, _ = w.Write(n[:4])
	_, _ = w.Write(h)
	binary.BigEndian.PutUint64(n[:], uint64(bodyLen))
	_, _ = w.Write(n[:])
	if body != nil {
		if err := body(w); err != nil {
			return err
		}
	}
	return w.Flush()
}

// readMsg reads one message header of at most max bytes (and skips any
// body: the harness sends none).
func readMsg(r *bufio.Reader, max int64) (json.RawMessage, error) {
	var n [8]byte
	if _, err := io.ReadFull(r, n[:4]); err != nil {
		return nil, err
	}
	hl := binary.BigEndian.Uint32(n[:4])
	if int64(hl) > max {
		return nil, &errTooLarge{int64(hl), max}
	}
	h := make([]byte, hl)
	if _, err := io.ReadFull(r, h); err != nil {
		return nil, err
	}
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, err
	}
	if bl := binary.BigEndian.Uint64(n[:]); bl > 0 {
		if _, err := io.CopyN(io.Discard, r, int64(bl)); err != nil {
			return nil, err
		}
	}
	return h, nil
}
