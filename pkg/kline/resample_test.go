package kline_test

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"testing"

	"github.com/ztrade/pyrunner/pkg/demodata"
	"github.com/ztrade/pyrunner/pkg/frame"
	"github.com/ztrade/pyrunner/pkg/kline"
	"github.com/ztrade/pyrunner/pkg/kline/mysqltest"
)

// minutes builds 1m candles at the given minute offsets from start, shaped
// as ztrade-mcp's build1mCandles: open 100+i, high open+2, low open-1,
// close open+1, volume i+1 (i the offset), turnover i, trades 1.
func minutes(start int64, offsets ...int) *frame.Frame {
	f := &frame.Frame{}
	for _, i := range offsets {
		op := 100 + float64(i)
		f.Append(start+int64(i)*60, op, op+2, op-1, op+1, float64(i+1), float64(i), 1)
	}
	return f
}

func span(a, b int) []int {
	var s []int
	for i := a; i < b; i++ {
		s = append(s, i)
	}
	return s
}

// candle is one merged candle as the tests expect it.
type candle struct {
	start                               int64
	open, high, low, close, vol, turnov float64
	trades                              int64
}

func candles(f *frame.Frame) []candle {
	var out []candle
	for i := 0; i < f.Len(); i++ {
		out = append(out, candle{f.Start[i], f.Open[i], f.High[i], f.Low[i], f.Close[i], f.Volume[i], f.Turnover[i], f.Trades[i]})
	}
	return out
}

const day = 1704067200 // 2024-01-01T00:00:00Z, ztrade-mcp's test start

// TestResampleLikeKlineMerge: the cases of ztrade-mcp's
// tools/kline_merge_test.go, and gaps, with what ztrade's KlineMerge
// (base common/merge.go) gives for each.
func TestResampleLikeKlineMerge(t *testing.T) {
	b0 := candle{day, 100, 106, 99, 105, 15, 10, 5}        // minutes 0..4
	b1 := candle{day + 300, 105, 111, 104, 110, 40, 35, 5} // minutes 5..9
	b2 := candle{day + 600, 110, 116, 109, 115, 65, 60, 5} // minutes 10..14
	cases := []struct {
		name    string
		offsets []int
		want    []candle
	}{
		{"ztrade TestMergeCandles5m: 10 candles", span(0, 10), []candle{b0, b1}},
		{"a last bucket not complete is dropped", span(0, 13), []candle{b0, b1}},
		{"leading candles before the first aligned one are skipped", span(3, 15), []candle{b1, b2}},
		{"a bucket with a gap inside is dropped", append([]int{0, 1, 3, 4}, span(5, 15)...), []candle{b1, b2}},
		{"a bucket missing its last candle takes the next one with it", append([]int{0, 1, 2, 3}, span(5, 15)...), []candle{b2}},
		{"a bucket missing its first candle is dropped", append(span(0, 5), span(6, 15)...), []candle{b0, b2}},
		{"a whole bucket missing", append(span(0, 5), span(10, 15)...), []candle{b0, b2}},
		// KlineMerge gathers across buckets until a bucket's last minute:
		// 0,1 then 7,8,9 are five candles, and come out as one.
		{"two broken buckets that add up to one", []int{0, 1, 7, 8, 9}, []candle{{day, 100, 111, 99, 110, 1 + 2 + 8 + 9 + 10, 0 + 1 + 7 + 8 + 9, 5}}},
		{"no aligned candle at all", []int{1, 2, 3}, nil},
	}
	for _, c := range cases {
		got := candles(kline.Resample(minutes(day, c.offsets...), 60, 300))
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("%s:\n got %v\nwant %v", c.name, got, c.want)
		}
	}
	// Repeated and out-of-order candles are skipped.
	f := minutes(day, 0, 1, 1, 2, 3, 2, 4)
	if got := candles(kline.Resample(f, 60, 300)); fmt.Sprint(got) != fmt.Sprint([]candle{b0}) {
		t.Errorf("repeats: %v", got)
	}
	// Turnover: NaN only when the whole bucket lacks it.
	f = minutes(day, span(0, 10)...)
	for i := 0; i < 5; i++ {
		f.Turnover[i] = math.NaN()
	}
	f.Turnover[7] = math.NaN()
	got := kline.Resample(f, 60, 300)
	if !math.IsNaN(got.Turnover[0]) || got.Turnover[1] != 5+6+8+9 {
		t.Errorf("turnover: %v", got.Turnover)
	}
}

// TestLoadResamplesLikeKlineMerge: a 1m table with gaps, resampled by Load
// to 5m on SQLite and on MySQL, with end inside a bucket.
func TestLoadResamplesLikeKlineMerge(t *testing.T) {
	offsets := append(append(append(span(0, 5), 5, 6, 8, 9), span(10, 20)...), span(21, 33)...)
	data := minutes(day, offsets...)
	// Buckets: 0 ok, 5 gap (dropped), 10 ok, 15 ok, 20 missing its first
	// (dropped), 25 ok, 30 incomplete by the end (dropped, though the
	// table has minute 32 after end).
	want := []int64{day, day + 600, day + 900, day + 1500}
	q := kline.Query{Exchange: "gaps", Symbol: "X", BinSize: "5m", Start: day, End: day + 31*60}
	check := func(t *testing.T, db *kline.DB) {
		f, src, err := db.Load(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(f.Start) != fmt.Sprint(want) || src != "gaps_X_1m resampled to 5m" {
			t.Errorf("starts %v (want %v), source %q", f.Start, want, src)
		}
		if fmt.Sprint(candles(f)) != fmt.Sprint(candles(kline.Resample(data.Head(len(offsets)-1), 60, 300))) {
			t.Errorf("Load and Resample of the same rows differ: %v", candles(f))
		}
		lim := q
		lim.Limit = 2
		if f, _, _ := db.Load(context.Background(), lim); fmt.Sprint(f.Start) != fmt.Sprint(want[:2]) {
			t.Errorf("limit 2: %v", f.Start)
		}
	}
	t.Run("sqlite", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "gaps.db")
		w, err := demodata.OpenWriter("sqlite", path)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		writeGaps(t, w, data)
		db, err := kline.Open(kline.Config{Type: "sqlite", URI: path}, 200000)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		check(t, db)
	})
	t.Run("mysql", func(t *testing.T) {
		d := mysqltest.New(t)
		writeGaps(t, d.Admin, data)
		db, err := kline.Open(d.Config(), 200000)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		check(t, db)
	})
}

func writeGaps(t *testing.T, w *demodata.Writer, f *frame.Frame) {
	t.Helper()
	ctx := context.Background()
	if err := w.CreateTable(ctx, "gaps_X_1m", true); err != nil {
		t.Fatal(err)
	}
	if err := w.Insert(ctx, "gaps_X_1m", f, true); err != nil {
		t.Fatal(err)
	}
}
