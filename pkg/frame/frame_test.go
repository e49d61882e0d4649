package frame

import (
	"bytes"
	"encoding/binary"
	"math"
	"testing"
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
}
