package frame

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"testing"

	"golang.org/x/sys/unix"
)

func TestWriteBodyIsLittleEndianColumns(t *testing.T) {
	var f Frame
	f.Append(60, 1.5, 2, 1, 1.75, 10, NaN, 7)
	f.Append(120, 1.75, 3, 1.5, 2.5, 20, 40, 9)
	var buf bytes.Buffer
	if err := f.WriteBody(&buf); err != nil {
		t.Fatal(err)
	}
	if int64(buf.Len()) != f.ByteLen() {
		t.Fatalf("body is %d bytes, ByteLen says %d", buf.Len(), f.ByteLen())
	}
	b := buf.Bytes()
	u := func(i int) uint64 { return binary.LittleEndian.Uint64(b[i*8:]) }
	if int64(u(0)) != 60 || int64(u(1)) != 120 {
		t.Errorf("start column = %d,%d", u(0), u(1))
	}
	if math.Float64frombits(u(2)) != 1.5 {
		t.Errorf("open[0] = %v", math.Float64frombits(u(2)))
	}
	if !math.IsNaN(math.Float64frombits(u(12))) || math.Float64frombits(u(13)) != 40 {
		t.Errorf("turnover column wrong")
	}
	if int64(u(15)) != 9 {
		t.Errorf("trades[1] = %d", u(15))
	}
	// time: start in nanoseconds.
	if int64(u(16)) != 60e9 || int64(u(17)) != 120e9 {
		t.Errorf("time column = %d,%d", u(16), u(17))
	}
}

// TestWriteBodyTimeColumnPastOneChunk: the time column is written in
// chunks; a frame longer than one has every row's nanoseconds.
func TestWriteBodyTimeColumnPastOneChunk(t *testing.T) {
	f := &Frame{}
	const n = 20_000
	for i := 0; i < n; i++ {
		f.Append(int64(1_700_000_000+i*60), 1, 1, 1, 1, 1, 1, 1)
	}
	var buf bytes.Buffer
	if err := f.WriteBody(&buf); err != nil {
		t.Fatal(err)
	}
	times := buf.Bytes()[timeColumn*n*8:]
	for i := 0; i < n; i++ {
		if got := int64(binary.LittleEndian.Uint64(times[i*8:])); got != f.Start[i]*1e9 {
			t.Fatalf("time[%d] = %d, want %d", i, got, f.Start[i]*1e9)
		}
	}
}

// TestShare: a shared frame holds the same rows in a sealed memory file
// that can be neither written nor resized, and its slices point into it.
func TestShare(t *testing.T) {
	f := &Frame{}
	for i := 0; i < 1000; i++ {
		f.Append(int64(i*60), float64(i), float64(i)+1, float64(i)-1, float64(i)+0.5, 10, math.NaN(), int64(i))
	}
	g, err := Share(f)
	if err != nil {
		t.Fatal(err)
	}
	fd, ok := g.SharedFile()
	if !ok || g.Len() != 1000 || g.Close[999] != 999.5 || g.Trades[500] != 500 || !math.IsNaN(g.Turnover[3]) {
		t.Fatalf("shared frame: ok %v len %d", ok, g.Len())
	}
	if _, err := unix.Pwrite(fd, []byte{1}, 0); err == nil {
		t.Error("the shared file could be written")
	}
	if err := unix.Ftruncate(fd, 1); err == nil {
		t.Error("the shared file could be shrunk")
	}
	if _, err := unix.Mmap(fd, 0, 8, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err == nil {
		t.Error("the shared file could be mapped writable")
	}
	s := g.Slice(10, 20)
	h := s.Header()
	if h.Shm != 1000*8*int64(len(Columns)) || len(h.Offsets) != len(Columns) || h.Offsets[0] != 10*8 || h.Offsets[4] != (4*1000+10)*8 || s.BodyLen() != 0 {
		t.Errorf("slice header %+v, body %d", h, s.BodyLen())
	}
	// Appending copies out of the file: the result is an ordinary frame.
	c := &Frame{}
	c.AppendFrame(s)
	if _, ok := c.SharedFile(); ok || c.BodyLen() != 10*8*int64(len(Columns)) || c.Open[0] != 10 {
		t.Errorf("a frame built from a shared one: shared %v body %d", ok, c.BodyLen())
	}
}

// TestBlock: parts filled at once, in batches flushed into the file, some
// short of their room, come out of Seal as one shared frame with every row
// in part order; a part past its room fails with ErrRoom.
func TestBlock(t *testing.T) {
	const room = 20_000 // more than two batches
	for _, tc := range []struct {
		name   string
		counts []int // rows each part gets
	}{
		{"full", []int{room, room, room}},
		{"short parts move down", []int{room, 15_000, 0, 3}},
		{"one part", []int{7}},
		{"empty", []int{0, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rooms := make([]int, len(tc.counts))
			for i := range rooms {
				rooms[i] = room
			}
			b, err := NewBlock(rooms)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for i, k := range tc.counts {
				if err := fillPart(b, i, n, k); err != nil {
					t.Fatal(err)
				}
				n += k
			}
			g, err := b.Seal()
			if err != nil {
				t.Fatal(err)
			}
			if g.Len() != n {
				t.Fatalf("sealed %d rows, want %d", g.Len(), n)
			}
			for i := 0; i < n; i++ {
				if g.Start[i] != int64(i*60) || g.Close[i] != float64(i)+0.5 || g.Trades[i] != int64(i) || !math.IsNaN(g.Turnover[i]) {
					t.Fatalf("row %d: start %d close %v trades %d", i, g.Start[i], g.Close[i], g.Trades[i])
				}
			}
			if n == 0 {
				return
			}
			fd, ok := g.SharedFile()
			if !ok {
				t.Fatal("a sealed block is not a shared frame")
			}
			if _, err := unix.Pwrite(fd, []byte{1}, 0); err == nil {
				t.Error("the sealed file could be written")
			}
			// The header says where each column starts in the file.
			h := g.Slice(1, n).Header()
			if want := int64(len(rooms) * room * 8 * len(Columns)); h.Shm != want {
				t.Errorf("the frame's file is %d bytes, want the block's %d", h.Shm, want)
			}
			body := make([]byte, h.Shm)
			if _, err := unix.Pread(fd, body, 0); err != nil {
				t.Fatal(err)
			}
			for c, off := range h.Offsets {
				got := math.Float64frombits(binary.LittleEndian.Uint64(body[off:]))
				want := [...]float64{60, 1, 2, 0, 1.5, 10, math.NaN(), 1, 60e9}[c]
				if c == 0 || c == 7 || c == timeColumn {
					got = float64(int64(binary.LittleEndian.Uint64(body[off:])))
				}
				if got != want && !(math.IsNaN(got) && math.IsNaN(want)) {
					t.Errorf("column %d of row 1 reads %v in the file, want %v", c, got, want)
				}
			}
			// Every row's time, moved down with its part as the others.
			for i := 1; i < n; i++ {
				if got := int64(binary.LittleEndian.Uint64(body[h.Offsets[timeColumn]+int64(i-1)*8:])); got != int64(i*60)*1e9 {
					t.Fatalf("time of row %d reads %d in the file", i, got)
				}
			}
		})
	}
	t.Run("past its room", func(t *testing.T) {
		b, err := NewBlock([]int{room, room})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		err = fillPart(b, 0, 0, room+1)
		if err == nil {
			_, err = b.Seal()
		}
		if !errors.Is(err, ErrRoom) {
			t.Errorf("a part past its room: %v, want ErrRoom", err)
		}
	})
}

// fillPart appends k rows, numbered from `from`, to part i of b as a
// reader does: flushing each full batch, the last one left to Seal.
func fillPart(b *Block, i, from, k int) error {
	f := b.Part(i)
	for r := from; r < from+k; r++ {
		if f.Len() == cap(f.Start) {
			if err := b.Flush(i); err != nil {
				return err
			}
		}
		f.Append(int64(r*60), float64(r), float64(r)+1, float64(r)-1, float64(r)+0.5, 10, math.NaN(), int64(r))
	}
	if k > 0 && f.Len() == cap(f.Start) {
		return b.Flush(i)
	}
	return nil
}
