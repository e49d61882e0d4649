package demodata_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ztrade/pyrunner/pkg/demodata"
	"github.com/ztrade/pyrunner/pkg/kline"
)

// Write a day of demo candles into a SQLite file, then read them back
// through pkg/kline, read-only, as a worker does.
func Example() {
	dir, err := os.MkdirTemp("", "demodata-example-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "exchange.db")
	w, err := demodata.OpenWriter("sqlite", path)
	if err != nil {
		panic(err)
	}
	if err := w.WriteDemo(context.Background(), 1735689600, 1); err != nil {
		panic(err)
	}
	w.Close()

	db, err := kline.Open(kline.Config{Type: "sqlite", URI: path}, 0)
	if err != nil {
		panic(err)
	}
	defer db.Close()
	f, source, err := db.Load(context.Background(), kline.Query{Exchange: "binance", Symbol: "BTCUSDT", BinSize: "1h",
		Start: 1735689600, End: 1735689600 + 86400 - 1})
	if err != nil {
		panic(err)
	}
	fmt.Println(f.Len(), "hourly candles from", source)
	// Output: 24 hourly candles from binance_BTCUSDT_1m resampled to 1h
}
