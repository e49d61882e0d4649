package kline_test

import (
	"context"
	"strings"
	"testing"

	"github.com/ztrade/pyrunner/pkg/demodata"
	"github.com/ztrade/pyrunner/pkg/kline"
	"github.com/ztrade/pyrunner/pkg/kline/mysqltest"
)

func TestMySQLReadOnly(t *testing.T) {
	d := mysqltest.New(t)
	ctx := context.Background()
	if err := d.Admin.WriteDemo(ctx, 1735689600, 1); err != nil {
		t.Fatal(err)
	}
	db, err := kline.Open(d.Config(), 200000)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	f, src, err := db.Load(ctx, kline.Query{Exchange: "okx", Symbol: "BTC-USDT-SWAP", BinSize: "1m", Start: 1735689600, End: 1735693200})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if f.Len() != 61 || src != "okx_BTC-USDT-SWAP_1m" {
		t.Fatalf("load: %v rows=%d src=%s", err, f.Len(), src)
	}
	f, src, err = db.Load(ctx, kline.Query{Exchange: "bitmex", Symbol: "XBTUSD", BinSize: "15m", Start: 1735689600, End: 1735693200})
	if err != nil {
		t.Fatalf("resample: %v", err)
	}
	if f.Len() != 4 || !strings.Contains(src, "resampled") { // 00:00..00:45; 01:00 is not complete by end
		t.Fatalf("resample: %v rows=%d src=%s", err, f.Len(), src)
	}
	// Even a user allowed to write cannot write through the read-only session.
	rootRO, err := kline.Open(kline.Config{Type: "mysql", URI: d.RootURI()}, 10)
	if err != nil {
		t.Fatal(err)
	}
	defer rootRO.Close()
	for _, c := range []*kline.DB{db, rootRO} {
		if err := kline.ExecForTest(c, "INSERT INTO `binance_BTCUSDT_1m` (start,open,high,low,close,volume,trades) VALUES (1,1,1,1,1,1,1)"); err == nil {
			t.Errorf("insert through a read-only connection succeeded")
		} else if c == rootRO && !strings.Contains(err.Error(), "READ ONLY") && !strings.Contains(err.Error(), "read only") && !strings.Contains(err.Error(), "read-only") {
			t.Errorf("root insert failed, but not for read-only: %v", err)
		}
	}
}

// TestMySQLLargeRead: a range large enough to be read in parallel slices
// comes back whole and in order, and a limit cuts it at the right row.
func TestMySQLLargeRead(t *testing.T) {
	d := mysqltest.New(t)
	ctx := context.Background()
	const n = 160_000
	want := demodata.Generate(demodata.DemoMarkets[0], 1_000_020, n, 3)
	if err := d.Admin.CreateTable(ctx, "binance_BTCUSDT_1m", true); err != nil {
		t.Fatal(err)
	}
	if err := d.Admin.Insert(ctx, "binance_BTCUSDT_1m", want, true); err != nil {
		t.Fatal(err)
	}
	db, err := kline.Open(d.Config(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, limit := range []int{0, n - 1000} {
		f, _, err := db.Load(ctx, kline.Query{Exchange: "binance", Symbol: "BTCUSDT", BinSize: "1m",
			Start: want.Start[0] - 3600, End: want.Start[n-1] + 3600, Limit: int64(limit)})
		if err != nil {
			t.Fatal(err)
		}
		rows := n
		if limit > 0 {
			rows = limit
		}
		if f.Len() != rows {
			t.Fatalf("limit %d: %d rows, want %d", limit, f.Len(), rows)
		}
		for i := 0; i < rows; i++ {
			if f.Start[i] != want.Start[i] || f.Close[i] != want.Close[i] || f.Trades[i] != want.Trades[i] {
				t.Fatalf("limit %d: row %d is %d/%v, want %d/%v", limit, i, f.Start[i], f.Close[i], want.Start[i], want.Close[i])
			}
		}
	}
}
