// Package frame is the columnar K-line frame and its binary hand-off to
// Python. A Frame holds one slice per column; Encode writes a small JSON
// header followed by each column's raw little-endian bytes, which the
// Python harness maps with numpy.frombuffer: a copy, never a parse.
package frame

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"sync"
	"unsafe"
)

// Frame is a K-line table, one slice per column, all of the same length.
// Turnover is NaN where the database holds NULL or lacks the column.
type Frame struct {
	Start    []int64
	Open     []float64
	High     []float64
	Low      []float64
	Close    []float64
	Volume   []float64
	Turnover []float64
	Trades   []int64

	// shm is set when the columns live in a shared memory file (Share),
	// starting at row row of its block.
	shm *shared
	row int
}

// Len is the number of rows.
func (f *Frame) Len() int { return len(f.Start) }

// Grow reserves room for n more rows.
func (f *Frame) Grow(n int) {
	f.shm = nil // a shared frame has no room: its columns are copied out
	f.Start = growI(f.Start, n)
	f.Trades = growI(f.Trades, n)
	for _, c := range []*[]float64{&f.Open, &f.High, &f.Low, &f.Close, &f.Volume, &f.Turnover} {
		*c = growF(*c, n)
	}
}

func growI(s []int64, n int) []int64 {
	if cap(s)-len(s) >= n {
		return s
	}
	out := make([]int64, len(s), len(s)+n)
	copy(out, s)
	return out
}

func growF(s []float64, n int) []float64 {
	if cap(s)-len(s) >= n {
		return s
	}
	out := make([]float64, len(s), len(s)+n)
	copy(out, s)
	return out
}

// Append adds one row.
func (f *Frame) Append(start int64, open, high, low, close, volume, turnover float64, trades int64) {
	f.shm = nil
	f.Start = append(f.Start, start)
	f.Open = append(f.Open, open)
	f.High = append(f.High, high)
	f.Low = append(f.Low, low)
	f.Close = append(f.Close, close)
	f.Volume = append(f.Volume, volume)
	f.Turnover = append(f.Turnover, turnover)
	f.Trades = append(f.Trades, trades)
}

// NaN is the value of a missing turnover.
var NaN = math.NaN()

// Column names a wire column and its numpy dtype.
type Column struct {
	Name  string `json:"name"`
	DType string `json:"dtype"` // numpy dtype string: "<i8", "<f8" or "<M8[ns]"
}

// Columns is the wire order of the columns, df's order. The last, "time",
// is no field of Frame: it is Start in nanoseconds (datetime64[ns], UTC),
// written when the frame is (WriteBody, Share, Block), so that a frame
// kept in a memory file carries it and a run that maps the file again
// does not compute it again (10M rows: 80 MB written in each run).
// python/protocol.py's FRAME_COLUMNS mirrors it (TestProtocolMirror).
var Columns = []Column{
	{"start", "<i8"}, {"open", "<f8"}, {"high", "<f8"}, {"low", "<f8"},
	{"close", "<f8"}, {"volume", "<f8"}, {"turnover", "<f8"}, {"trades", "<i8"},
	{"time", "<M8[ns]"},
}

// timeColumn is the index of "time" in Columns.
const timeColumn = 8

// Header describes an encoded frame; it travels as JSON ahead of the bytes.
type Header struct {
	Rows    int      `json:"rows"`
	Columns []Column `json:"columns"`
	// A shared frame (see Share) has no body: the harness maps Shm bytes
	// of the memory file that follows the header, and column i's first
	// row is at Offsets[i].
	Shm     int64   `json:"shm,omitempty"`
	Offsets []int64 `json:"offsets,omitempty"`
}

// Header returns f's header.
func (f *Frame) Header() Header {
	h := Header{Rows: f.Len(), Columns: Columns}
	if f.shm != nil {
		h.Shm = int64(len(f.shm.mem))
		for i := range Columns {
			h.Offsets = append(h.Offsets, int64(i*f.shm.rows+f.row)*8)
		}
	}
	return h
}

// BodyLen is the number of bytes that follow the header on the wire:
// ByteLen, or 0 for a shared frame.
func (f *Frame) BodyLen() int64 {
	if f.shm != nil {
		return 0
	}
	return f.ByteLen()
}

// WriteWire writes what follows the header on the wire: the body, or
// nothing for a shared frame (its file is passed beside the stream).
func (f *Frame) WriteWire(w io.Writer) error {
	if f.shm != nil {
		return nil
	}
	return f.WriteBody(w)
}

// ByteLen is the size of the encoded body: 8 bytes per cell.
func (f *Frame) ByteLen() int64 { return int64(f.Len()) * 8 * int64(len(Columns)) }

// WriteBody writes each column's raw bytes in Columns order. On a
// little-endian machine the slices are written as they sit in memory.
func (f *Frame) WriteBody(w io.Writer) error {
	for c := range Columns {
		if err := f.writeCol(w, c); err != nil {
			return fmt.Errorf("write frame column: %w", err)
		}
	}
	return nil
}

// writeCol writes column c (in Columns order) of f.
func (f *Frame) writeCol(w io.Writer, c int) error {
	if c == timeColumn {
		return writeNanos(w, f.Start)
	}
	return writeColumn(w, [...]any{f.Start, f.Open, f.High, f.Low, f.Close, f.Volume, f.Turnover, f.Trades}[c])
}

// nanosBufs are writeNanos's buffers, 64 KiB each.
var nanosBufs = sync.Pool{New: func() any { return new([8192 * 8]byte) }}

// writeNanos writes the time column of start (unix seconds): each
// second × 10⁹, little-endian, in chunks of 8 192 rows.
func writeNanos(w io.Writer, start []int64) error {
	buf := nanosBufs.Get().(*[8192 * 8]byte)
	defer nanosBufs.Put(buf)
	for len(start) > 0 {
		k := min(len(start), len(buf)/8)
		for i, s := range start[:k] {
			binary.LittleEndian.PutUint64(buf[i*8:], uint64(s*1_000_000_000))
		}
		if _, err := w.Write(buf[:k*8]); err != nil {
			return err
		}
		start = start[k:]
	}
	return nil
}

var littleEndian = func() bool { x := uint16(1); return *(*byte)(unsafe.Pointer(&x)) == 1 }()

func writeColumn(w io.Writer, c any) error {
	if littleEndian {
		var b []byte
		switch s := c.(type) {
		case []int64:
			if len(s) == 0 {
				return nil
			}
			b = unsafe.Slice((*byte)(unsafe.Pointer(&s[0])), len(s)*8)
		case []float64:
			if len(s) == 0 {
				return nil
			}
			b = unsafe.Slice((*byte)(unsafe.Pointer(&s[0])), len(s)*8)
		}
		_, err := w.Write(b)
		return err
	}
	return binary.Write(w, binary.LittleEndian, c)
}

// Head returns a frame of the first n rows, sharing f's memory.
func (f *Frame) Head(n int) *Frame {
	if n >= f.Len() {
		return f
	}
	return &Frame{Start: f.Start[:n:n], Open: f.Open[:n:n], High: f.High[:n:n], Low: f.Low[:n:n],
		Close: f.Close[:n:n], Volume: f.Volume[:n:n], Turnover: f.Turnover[:n:n], Trades: f.Trades[:n:n], shm: f.shm, row: f.row}
}

// AppendFrame adds all of g's rows.
func (f *Frame) AppendFrame(g *Frame) {
	f.shm = nil
	f.Start = append(f.Start, g.Start...)
	f.Open = append(f.Open, g.Open...)
	f.High = append(f.High, g.High...)
	f.Low = append(f.Low, g.Low...)
	f.Close = append(f.Close, g.Close...)
	f.Volume = append(f.Volume, g.Volume...)
	f.Turnover = append(f.Turnover, g.Turnover...)
	f.Trades = append(f.Trades, g.Trades...)
}

// Slice returns rows [i, j) sharing f's memory, with no room to grow into
// it: appending to the result copies instead of writing over f.
func (f *Frame) Slice(i, j int) *Frame {
	return &Frame{Start: f.Start[i:j:j], Open: f.Open[i:j:j], High: f.High[i:j:j], Low: f.Low[i:j:j],
		Close: f.Close[i:j:j], Volume: f.Volume[i:j:j], Turnover: f.Turnover[i:j:j], Trades: f.Trades[i:j:j], shm: f.shm, row: f.row + i}
}
