package executor

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
)

// The channel to the harness carries framed messages:
//
//	u32 big-endian header length | header JSON | u64 big-endian body length | body
//
// (see python/harness.py for the conversation).

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
	w.Write(n[:4])
	w.Write(h)
	binary.BigEndian.PutUint64(n[:], uint64(bodyLen))
	w.Write(n[:])
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
