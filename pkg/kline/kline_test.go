package kline_test

import (
	"context"
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ztrade/pyrunner/pkg/demodata"
	"github.com/ztrade/pyrunner/pkg/frame"
	"github.com/ztrade/pyrunner/pkg/kline"
	"github.com/ztrade/pyrunner/pkg/run"
)

// testBundle is a SQLite file with known tables and a read-only kline.DB on it.
type testBundle struct {
	path string
	w    *demodata.Writer
	db   *kline.DB
}

const t0 = 1735689600 // 2025-01-01T00:00:00Z

func setup(t *testing.T) *testBundle {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "exchange.db")
	w, err := demodata.OpenWriter("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	f := &frame.Frame{}
	for i := int64(0); i < 30; i++ { // 30 one-minute candles, turnover NULL on odd ones
		to := float64(i) * 10
		if i%2 == 1 {
			to = math.NaN()
		}
		f.Append(t0+i*60, float64(100+i), float64(110+i), float64(90+i), float64(101+i), 1, to, i)
	}
	must(t, w.CreateTable(ctx, "binance_BTCUSDT_1m", true))
	must(t, w.Insert(ctx, "binance_BTCUSDT_1m", f, true))
	must(t, w.CreateTable(ctx, "okx_BTC-USDT-SWAP_1m", false))
	must(t, w.Insert(ctx, "okx_BTC-USDT-SWAP_1m", f.Head(5), false))
	db, err := kline.Open(kline.Config{Type: "sqlite", URI: path}, 200000)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return &testBundle{path: path, w: w, db: db}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestLoadInclusiveRangeAndLimit(t *testing.T) {
	b := setup(t)
	f, src, err := b.db.Load(context.Background(), kline.Query{Exchange: "binance", Symbol: "BTCUSDT", BinSize: "1m", Start: t0 + 60, End: t0 + 600})
	must(t, err)
	if f.Len() != 10 || f.Start[0] != t0+60 || f.Start[9] != t0+600 || src != "binance_BTCUSDT_1m" {
		t.Fatalf("got %d rows [%v..], source %q; want 10 rows from t0+60 to t0+600 inclusive", f.Len(), f.Start, src)
	}
	if !math.IsNaN(f.Turnover[0]) || f.Turnover[1] != 20 {
		t.Errorf("turnover = %v, want NULL→NaN then 20", f.Turnover[:2])
	}
	f, _, err = b.db.Load(context.Background(), kline.Query{Exchange: "binance", Symbol: "BTCUSDT", BinSize: "1m", Start: t0, End: t0 + 6000, Limit: 3})
	must(t, err)
	if f.Len() != 3 {
		t.Errorf("limit 3 gave %d rows", f.Len())
	}
}

func TestLoadTableWithoutTurnoverAndDashSymbol(t *testing.T) {
	b := setup(t)
	f, _, err := b.db.Load(context.Background(), kline.Query{Exchange: "okx", Symbol: "BTC-USDT-SWAP", BinSize: "1m", Start: 0, End: t0 + 6000})
	must(t, err)
	if f.Len() != 5 || !math.IsNaN(f.Turnover[4]) {
		t.Fatalf("got %d rows, turnover %v", f.Len(), f.Turnover)
	}
}

func TestLoadResamplesFromFinerTable(t *testing.T) {
	b := setup(t)
	f, src, err := b.db.Load(context.Background(), kline.Query{Exchange: "binance", Symbol: "BTCUSDT", BinSize: "5m", Start: t0 + 60, End: t0 + 3600})
	must(t, err)
	if src != "binance_BTCUSDT_1m resampled to 5m" {
		t.Errorf("source %q", src)
	}
	// buckets t0+300 .. t0+1500 (the first bucket starting ≥ start; 30 candles end at t0+1740)
	if f.Len() != 5 || f.Start[0] != t0+300 {
		t.Fatalf("got %d candles starting %v", f.Len(), f.Start)
	}
	// bucket t0+300 holds minutes 5..9
	if f.Open[0] != 105 || f.Close[0] != 110 || f.High[0] != 119 || f.Low[0] != 95 || f.Volume[0] != 5 || f.Trades[0] != 5+6+7+8+9 {
		t.Errorf("bucket 0 = o%v h%v l%v c%v v%v n%v", f.Open[0], f.High[0], f.Low[0], f.Close[0], f.Volume[0], f.Trades[0])
	}
	if f.Turnover[0] != 60+80 { // minutes 6 and 8 have turnover; 5, 7, 9 are NULL
		t.Errorf("turnover = %v", f.Turnover[0])
	}
	f, _, err = b.db.Load(context.Background(), kline.Query{Exchange: "binance", Symbol: "BTCUSDT", BinSize: "5m", Start: t0, End: t0 + 3600, Limit: 2})
	must(t, err)
	if f.Len() != 2 || f.Close[1] != 110 {
		t.Errorf("limit 2 resampled: %d candles, closes %v", f.Len(), f.Close)
	}
}

func TestUnknownMarketNamesTheTable(t *testing.T) {
	b := setup(t)
	_, _, err := b.db.Load(context.Background(), kline.Query{Exchange: "binance", Symbol: "NOPE", BinSize: "1m", End: t0})
	if run.ErrorCode(err) != run.ECodeNotFound || !strings.Contains(err.Error(), "binance_NOPE_1m") {
		t.Fatalf("err = %v", err)
	}
}

func TestSQLiteConnectionRefusesWrites(t *testing.T) {
	b := setup(t)
	for _, q := range []string{
		"INSERT INTO `binance_BTCUSDT_1m` (start, open, high, low, close, volume, trades) VALUES (1,1,1,1,1,1,1)",
		"DELETE FROM `binance_BTCUSDT_1m`",
		"CREATE TABLE x (a INT)",
	} {
		if err := kline.ExecForTest(b.db, q); err == nil {
			t.Errorf("%s succeeded through the read-only connection", q)
		}
	}
}

func TestMissingConfigSaysWhat(t *testing.T) {
	_, err := kline.Open(kline.Config{}, 0)
	if err == nil || !strings.Contains(err.Error(), "PYRUNNER_READONLY_URI") {
		t.Fatalf("err = %v", err)
	}
}

// BenchmarkLoad reads a whole table of 1M rows (parallel slices) and of
// 100k (one reader, as a market of load_klines is).
func BenchmarkLoad(b *testing.B) {
	for _, rows := range []int{100_000, 1_000_000} {
		// Written once, not for each of b.Run's rounds.
		ctx := context.Background()
		path := filepath.Join(b.TempDir(), "big.db")
		w, err := demodata.OpenWriter("sqlite", path)
		if err != nil {
			b.Fatal(err)
		}
		must2(b, w.CreateTable(ctx, "x_Y_1m", true))
		must2(b, w.Insert(ctx, "x_Y_1m", demodata.Generate(demodata.DemoMarkets[0], t0, rows, 1), true))
		w.Close()
		db, err := kline.Open(kline.Config{Type: "sqlite", URI: path}, 2_000_000)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(strconv.Itoa(rows), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				f, _, err := db.Load(ctx, kline.Query{Exchange: "x", Symbol: "Y", BinSize: "1m", End: t0 + int64(rows)*60, Limit: int64(rows)})
				if err != nil || f.Len() != rows {
					b.Fatal(err, f.Len())
				}
			}
		})
	}
}

func must2(b *testing.B, err error) {
	if err != nil {
		b.Fatal(err)
	}
}

// TestSQLiteFastPathIsTaken: the range read finds the sqlite3 handle of
// mattn/go-sqlite3's connection (an unexported field, so a new version of
// the driver could hide it and silently fall back to the slow path).
func TestSQLiteFastPathIsTaken(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	w, err := demodata.OpenWriter("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	db, err := kline.Open(kline.Config{Type: "sqlite", URI: path}, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	sqlDB, _ := kline.Gorm(db).DB()
	conn, err := sqlDB.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	err = conn.Raw(func(dc any) error {
		if kline.SQLiteHandle(dc) == nil {
			t.Errorf("no sqlite3 handle in %T: the range read takes the slow path", dc)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestLargeSQLiteReads: a range over most of a large table is read in
// table order (rowid slices), and one over part of it through the index;
// a table whose rows are not stored in start order still comes back
// sorted and whole. Every way gives the same frame as the rows written.
func TestLargeSQLiteReads(t *testing.T) {
	const n = 200_000
	want := demodata.Generate(demodata.DemoMarkets[0], 1_000_020, n, 5) // starts aligned to the minute
	// Stored order: the row of want each stored row is. "halves" and
	// "blocks" are in order within each half or 4 096-row block (a read's
	// batch), and out of order only where one meets the next.
	stored := map[string]func(i int) int{
		"appended": func(i int) int { return i },
		"reversed": func(i int) int { return n - 1 - i },
		"halves":   func(i int) int { return (i + n/2) % n },
		"blocks": func(i int) int {
			if j := i ^ 4096; j < n {
				return j
			}
			return i // the last, short block
		},
	}
	for _, order := range []string{"appended", "reversed", "halves", "blocks"} {
		t.Run(order, func(t *testing.T) {
			rows := &frame.Frame{}
			for k := range n {
				i := stored[order](k)
				rows.Append(want.Start[i], want.Open[i], want.High[i], want.Low[i], want.Close[i], want.Volume[i], want.Turnover[i], want.Trades[i])
			}
			db := sqliteWith(t, rows)
			// The last cases ask for the whole table with a limit of 4/5 of
			// its rows (enough to be read in parallel) and of 11/20 (one
			// reader, into a memory file): those come back. 11/20 of the
			// table is read by one reader into a memory file as well.
			for _, c := range []struct{ from, to, limit int }{{0, n, 0}, {0, n * 9 / 10, 0}, {n / 4, n / 2, 0}, {0, n * 11 / 20, 0},
				{0, n * 4 / 5, n * 4 / 5}, {0, n * 11 / 20, n * 11 / 20}} {
				end := want.Start[c.to-1]
				if c.limit > 0 {
					end = want.Start[n-1]
				}
				f, _, err := db.Load(context.Background(), kline.Query{Exchange: "binance", Symbol: "BTCUSDT", BinSize: "1m",
					Start: want.Start[c.from], End: end, Limit: int64(c.limit)})
				if err != nil {
					t.Fatal(err)
				}
				sameAs(t, f, want, c.from, c.to)
				if _, shared := f.SharedFile(); shared != (c.to-c.from >= frame.ShareRows) {
					t.Errorf("rows %d..%d: in a memory file: %v", c.from, c.to, shared)
				}
			}
		})
	}
}

// TestWholeMidSizeTable: a table of fewer rows than are read in parallel
// (one reader), read whole: in table order, into a memory file.
func TestWholeMidSizeTable(t *testing.T) {
	const n = 120_000
	want := demodata.Generate(demodata.DemoMarkets[0], 1_000_020, n, 6)
	db := sqliteWith(t, want)
	f, _, err := db.Load(context.Background(), kline.Query{Exchange: "binance", Symbol: "BTCUSDT", BinSize: "1m",
		Start: want.Start[0], End: want.Start[n-1]})
	if err != nil {
		t.Fatal(err)
	}
	sameAs(t, f, want, 0, n)
	if _, shared := f.SharedFile(); !shared {
		t.Error("not in a memory file")
	}
}

// TestLargeReadOutgrowingItsRoom: a 1m table whose candles are 30 s apart
// (twice the candles its binSize allows) read in parallel slices through
// the index: the slices outgrow the room the binSize gives them, and the
// read is done again on the heap, whole and in order.
func TestLargeReadOutgrowingItsRoom(t *testing.T) {
	const n = 800_000
	want := demodata.Generate(demodata.DemoMarkets[0], 1_000_020, n, 9)
	for i := range want.Start {
		want.Start[i] = 1_000_020 + int64(i)*30
	}
	db := sqliteWith(t, want)
	// Half the table (through the index, not a scan, in parallel slices),
	// and 110 000 minutes of it (one reader: 220 000 candles, twice its
	// room).
	for _, r := range [][2]int{{n / 4, n * 3 / 4}, {n / 4, n/4 + 220_000}} {
		from, to := r[0], r[1]
		f, _, err := db.Load(context.Background(), kline.Query{Exchange: "binance", Symbol: "BTCUSDT", BinSize: "1m",
			Start: want.Start[from], End: want.Start[to-1]})
		if err != nil {
			t.Fatal(err)
		}
		sameAs(t, f, want, from, to)
	}
}

// sqliteWith is a SQLite file with rows as binance_BTCUSDT_1m, opened
// read-only as the worker does.
func sqliteWith(t *testing.T, rows *frame.Frame) *kline.DB {
	t.Helper()
	path := filepath.Join(t.TempDir(), "klines.db")
	w, err := demodata.OpenWriter("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.CreateTable(context.Background(), "binance_BTCUSDT_1m", true); err != nil {
		t.Fatal(err)
	}
	if err := w.Insert(context.Background(), "binance_BTCUSDT_1m", rows, true); err != nil {
		t.Fatal(err)
	}
	w.Close()
	db, err := kline.Open(kline.Config{Type: "sqlite", URI: path}, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// sameAs fails unless f holds want's rows from..to-1, in order.
func sameAs(t *testing.T, f, want *frame.Frame, from, to int) {
	t.Helper()
	if f.Len() != to-from {
		t.Fatalf("rows %d..%d: got %d rows", from, to, f.Len())
	}
	for i := 0; i < f.Len(); i++ {
		if j := from + i; f.Start[i] != want.Start[j] || f.Close[i] != want.Close[j] || f.Trades[i] != want.Trades[j] {
			t.Fatalf("rows %d..%d: row %d is %d/%v, want %d/%v", from, to, i, f.Start[i], f.Close[i], want.Start[j], want.Close[j])
		}
	}
}
