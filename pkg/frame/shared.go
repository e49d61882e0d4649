package frame

import (
	"fmt"
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
			if err := writeColumn(w, p.column(c)); err != nil {
				return fail(err)
			}
		}
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_WRITE|unix.F_SEAL_SEAL); err != nil {
		return fail(err)
	}
	mem, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return fail(err)
	}
	sh := &shared{fd: fd, mem: mem, rows: n}
	runtime.SetFinalizer(sh, func(sh *shared) {
		unix.Munmap(sh.mem)
		unix.Close(sh.fd)
	})
	col := func(i int) unsafe.Pointer { return unsafe.Pointer(&mem[i*n*8]) }
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
