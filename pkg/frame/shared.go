package frame

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ShareRows is the size from which a frame is worth handing over in a
// memory file rather than through the channel: below it, the copy is
// cheaper than the file.
const ShareRows = 100_000

// shared is a block of columns in a sealed memory file (memfd): written
// once, then sealed against any write, growth or shrinking, and mapped
// read-only here. The harness maps the same file copy-on-write, so a 1M-row
// frame reaches user code without a byte copied, as often as it is asked
// for; user code that writes to its DataFrame writes to private pages. The
// file and the mapping go when no Frame refers to the block any more.
type shared struct {
	fd   int
	mem  []byte
	rows int // rows per column in the block
}

// Share returns a frame with f's rows whose columns live in a sealed
// memory file; f is left as it is. Slices of the result share the file.
// The returned frame's columns are read-only memory: they may be read,
// sliced and appended to another frame, never written in place.
func Share(f *Frame) (*Frame, error) {
	if _, ok := f.SharedFile(); ok {
		return f, nil
	}
	return ShareParts([]*Frame{f})
}

// ShareParts is Share of the frames' rows one after the other, written
// into the file straight from the parts (no concatenation first).
func ShareParts(parts []*Frame) (*Frame, error) {
	n := 0
	for _, p := range parts {
		n += p.Len()
	}
	size := int64(n) * 8 * int64(len(Columns))
	if n == 0 {
		return &Frame{}, nil
	}
	fd, err := unix.MemfdCreate("pyrunner-frame", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("frame: memfd: %w", err)
	}
	fail := func(err error) (*Frame, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("frame: share %d rows: %w", n, err)
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		return fail(err)
	}
	w := &fdWriter{fd: fd}
	for c := range Columns {
		for _, p := range parts {
			if err := p.writeCol(w, c); err != nil {
				return fail(err)
			}
		}
	}
	f, err := sealed(fd, int(size), n, n)
	if err != nil {
		return fail(err)
	}
	return f, nil
}

// sealed seals the memory file fd of size bytes against any change, maps
// it read-only and returns the frame of its first n rows, each column
// starting rows rows after the one before.
func sealed(fd, size, rows, n int) (*Frame, error) {
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_WRITE|unix.F_SEAL_SEAL); err != nil {
		return nil, err
	}
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, err
	}
	sh := &shared{fd: fd, mem: mem, rows: rows}
	runtime.SetFinalizer(sh, func(sh *shared) {
		unix.Munmap(sh.mem)
		unix.Close(sh.fd)
	})
	col := func(i int) unsafe.Pointer { return unsafe.Pointer(&mem[i*rows*8]) }
	ints := func(i int) []int64 { return unsafe.Slice((*int64)(col(i)), n) }
	floats := func(i int) []float64 { return unsafe.Slice((*float64)(col(i)), n) }
	return &Frame{Start: ints(0), Open: floats(1), High: floats(2), Low: floats(3), Close: floats(4),
		Volume: floats(5), Turnover: floats(6), Trades: ints(7), shm: sh}, nil
}

// fdWriter writes at the file's current offset.
type fdWriter struct{ fd int }

func (w *fdWriter) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		k, err := unix.Write(w.fd, p[done:])
		if err != nil {
			return done, err
		}
		done += k
	}
	return done, nil
}

// SharedFile is the memory file f's columns live in, if they do (see
// Share), for passing to the harness; it stays open while f is reachable.
func (f *Frame) SharedFile() (fd int, ok bool) {
	if f.shm == nil {
		return 0, false
	}
	return f.shm.fd, true
}

// KeepAlive keeps f's memory file open until this call (after it was
// passed on).
func (f *Frame) KeepAlive() { runtime.KeepAlive(f.shm) }

// ShareLarge is Share for a frame of ShareRows rows or more that is not
// shared yet; any other frame comes back as it is. When sharing fails, f
// comes back with the error (it can still be sent in the stream).
func ShareLarge(f *Frame) (*Frame, error) {
	if _, ok := f.SharedFile(); ok || f.Len() < ShareRows {
		return f, nil
	}
	g, err := Share(f)
	if err != nil {
		return f, err
	}
	return g, nil
}

// Join returns the parts' rows one after the other: a large result
// straight in a memory file (ShareParts, without joining them first), a
// small one, or one that cannot be shared, as an ordinary frame.
func Join(parts []*Frame) *Frame {
	total := 0
	for _, p := range parts {
		total += p.Len()
	}
	if total >= ShareRows {
		if f, err := ShareParts(parts); err == nil {
			return f
		}
	}
	out := &Frame{}
	out.Grow(total)
	for _, p := range parts {
		out.AppendFrame(p)
	}
	return out
}

// Block is a memory file that several readers fill at once, each reader
// its own rows of every column (a part), and that Seal turns into a
// shared frame without the rows ever being held anywhere else: a large
// load holds its rows once, in the file, never also on the Go heap.
//
// A reader appends to its part's batch (Part), a small frame that Flush
// writes into the file (pwrite, at the part's next rows of each column)
// and empties. Writing through a mapping instead would fault in every
// page of the file one at a time, which on a virtual machine costs more
// than the copy (15× more for 256 MB on the CI machines).
//
// Each part has room for a number of rows, fixed up front; the file is
// sparse, so room never filled costs no memory. A part that holds fewer
// rows than its room is moved down its column at Seal (the parts of a
// column must follow each other); a Flush past a part's room fails with
// ErrRoom, and the reader then reads into an ordinary frame instead.
type Block struct {
	fd      int
	rows    int   // room per column: the sum of the parts' rooms
	first   []int // each part's first row in a column
	rooms   []int
	written []int // rows each part has in the file
	batches []*Frame
}

// ErrRoom is Flush's error when a part's rows outgrow its room.
var ErrRoom = errors.New("frame: a part of a block outgrew its room")

// blockBatch is the rows a part's batch holds before Flush.
const blockBatch = 8192

// NewBlock makes a block with the given room, in rows, for each part.
func NewBlock(rooms []int) (*Block, error) {
	b := &Block{first: make([]int, len(rooms)), rooms: rooms, written: make([]int, len(rooms)), batches: make([]*Frame, len(rooms))}
	for i, r := range rooms {
		b.first[i] = b.rows
		b.rows += r
		b.batches[i] = &Frame{}
		b.batches[i].Grow(blockBatch)
	}
	size := int64(b.rows) * 8 * int64(len(Columns))
	fd, err := unix.MemfdCreate("pyrunner-frame", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("frame: memfd: %w", err)
	}
	if err := unix.Ftruncate(fd, max(size, 1)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("frame: block of %d rows: %w", b.rows, err)
	}
	b.fd = fd
	return b, nil
}

// Part is the batch part i appends its rows to, at most its capacity
// before Flush(i).
func (b *Block) Part(i int) *Frame { return b.batches[i] }

// Flush writes part i's batch into the file after the part's rows so far
// and empties it.
func (b *Block) Flush(i int) error {
	f := b.batches[i]
	k := f.Len()
	if k == 0 {
		return nil
	}
	if b.written[i]+k > b.rooms[i] {
		return ErrRoom
	}
	for c := range Columns {
		off := int64(c*b.rows+b.first[i]+b.written[i]) * 8
		if err := f.writeCol(&fdWriterAt{fd: b.fd, off: off}, c); err != nil {
			return fmt.Errorf("frame: write a block: %w", err)
		}
	}
	b.written[i] += k
	f.Start, f.Open, f.High, f.Low = f.Start[:0], f.Open[:0], f.High[:0], f.Low[:0]
	f.Close, f.Volume, f.Turnover, f.Trades = f.Close[:0], f.Volume[:0], f.Turnover[:0], f.Trades[:0]
	return nil
}

// fdWriterAt writes at off and moves on.
type fdWriterAt struct {
	fd  int
	off int64
}

func (w *fdWriterAt) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		k, err := unix.Pwrite(w.fd, p[done:], w.off)
		if err != nil {
			return done, err
		}
		done += k
		w.off += int64(k)
	}
	return done, nil
}

// Seal flushes the parts and returns their rows one after the other as a
// shared frame (see Share). The block is used up either way.
func (b *Block) Seal() (*Frame, error) {
	fail := func(err error) (*Frame, error) {
		b.Close()
		return nil, fmt.Errorf("frame: seal a block: %w", err)
	}
	n := 0
	for i := range b.batches {
		if err := b.Flush(i); err != nil {
			return fail(err)
		}
		n += b.written[i]
	}
	if n == 0 {
		b.Close()
		return &Frame{}, nil
	}
	var buf []byte // made when a part must move: one part never does
	for c := range Columns {
		dst := c * b.rows
		for i := range b.batches {
			src, k := c*b.rows+b.first[i], b.written[i]
			if src != dst {
				if buf == nil {
					buf = make([]byte, 1<<20)
				}
				// Down the file in ascending chunks: a chunk is read
				// before anything is written over it (dst < src).
				if err := moveDown(b.fd, int64(dst)*8, int64(src)*8, int64(k)*8, buf); err != nil {
					return fail(err)
				}
			}
			dst += k
		}
		// The room left at the column's end holds what was moved from it:
		// give those pages back.
		if free := c*b.rows + b.rows - dst; free > 0 {
			if err := unix.Fallocate(b.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(dst)*8, int64(free)*8); err != nil {
				return fail(err)
			}
		}
	}
	f, err := sealed(b.fd, b.rows*8*len(Columns), b.rows, n)
	if err != nil {
		return fail(err)
	}
	b.fd = -1 // the frame's now
	return f, nil
}

// moveDown copies n bytes of fd from src to dst < src.
func moveDown(fd int, dst, src, n int64, buf []byte) error {
	for done := int64(0); done < n; {
		k := min(int64(len(buf)), n-done)
		if m, err := unix.Pread(fd, buf[:k], src+done); err != nil {
			return err
		} else if int64(m) != k {
			return io.ErrUnexpectedEOF
		}
		if _, err := (&fdWriterAt{fd: fd, off: dst + done}).Write(buf[:k]); err != nil {
			return err
		}
		done += k
	}
	return nil
}

// Close gives the block back unsealed (when a read failed).
func (b *Block) Close() {
	if b.fd >= 0 {
		unix.Close(b.fd)
		b.fd = -1
	}
}
