package kline_test

import (
	"context"
	"strings"
	"testing"

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
