package kline_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/ztrade/pyrunner/pkg/demodata"
	"github.com/ztrade/pyrunner/pkg/frame"
	"github.com/ztrade/pyrunner/pkg/kline"
)

// cacheBundle is a SQLite file of one market and a cached read-only kline.DB.
func cacheBundle(t *testing.T, rows int, cacheBytes int64) (*demodata.Writer, *kline.DB, *kline.Cache) {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "exchange.db")
	w, err := demodata.OpenWriter("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	f := &frame.Frame{}
	for i := 0; i < rows; i++ {
		f.Append(t0+int64(i)*60, 100, 101, 99, 100+float64(i), 1, 10, 1)
	}
	must(t, w.CreateTable(ctx, "c_X_1m", true))
	must(t, w.Insert(ctx, "c_X_1m", f, true))
	db, err := kline.Open(kline.Config{Type: "sqlite", URI: path}, 1_000_000)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	c := kline.NewCache(cacheBytes)
	db.UseCache(c)
	return w, db, c
}

// TestCacheIsNeverStale: a repeated range comes from memory, and a candle
// written after caching (the newest one updated, a new one appended) is in
// the next load.
func TestCacheIsNeverStale(t *testing.T) {
	w, db, c := cacheBundle(t, 100, 1<<20)
	ctx := context.Background()
	q := kline.Query{Exchange: "c", Symbol: "X", BinSize: "1m", Start: t0, End: t0 + 10_000*60}
	f, _, hit, err := db.LoadCached(ctx, q)
	if err != nil || hit || f.Len() != 100 {
		t.Fatalf("first load: %d rows hit=%v %v", f.Len(), hit, err)
	}
	f, _, hit, _ = db.LoadCached(ctx, q)
	if !hit || f.Len() != 100 || f.Close[99] != 199 {
		t.Fatalf("second load: %d rows hit=%v", f.Len(), hit)
	}
	// The newest candle changes and a new one is appended.
	must(t, w.Exec(ctx, "UPDATE `c_X_1m` SET close = 500 WHERE start = ?", t0+99*60))
	nf := &frame.Frame{}
	nf.Append(t0+100*60, 1, 2, 0.5, 600, 1, 10, 1)
	must(t, w.Insert(ctx, "c_X_1m", nf, true))
	f, _, hit, _ = db.LoadCached(ctx, q)
	if !hit || f.Len() != 101 || f.Close[99] != 500 || f.Close[100] != 600 {
		t.Fatalf("after writes: %d rows, closes %v, hit=%v", f.Len(), f.Close[98:], hit)
	}
	// A sub-range and a limit are served from the grown entry.
	f, _, hit, _ = db.LoadCached(ctx, kline.Query{Exchange: "c", Symbol: "X", BinSize: "1m", Start: t0 + 10*60, End: t0 + 19*60})
	if !hit || f.Len() != 10 || f.Start[0] != t0+10*60 {
		t.Errorf("sub-range: %d rows from %v hit=%v", f.Len(), f.Start, hit)
	}
	f, _, _, _ = db.LoadCached(ctx, kline.Query{Exchange: "c", Symbol: "X", BinSize: "1m", Start: t0, End: t0 + 10_000*60, Limit: 5})
	if f.Len() != 5 || f.Start[4] != t0+4*60 {
		t.Errorf("limit: %d rows", f.Len())
	}
	// A resampled load goes through the cache of its finer table.
	f, src, hit, _ := db.LoadCached(ctx, kline.Query{Exchange: "c", Symbol: "X", BinSize: "5m", Start: t0, End: t0 + 10_000*60})
	if !hit || f.Len() != 20 || src != "c_X_1m resampled to 5m" {
		t.Errorf("resampled: %d rows hit=%v %s", f.Len(), hit, src)
	}
	// What came from memory is not disturbed by what a caller does with it.
	f, _, _, _ = db.LoadCached(ctx, kline.Query{Exchange: "c", Symbol: "X", BinSize: "1m", Start: t0, End: t0 + 49*60})
	f.AppendFrame(nf)
	f, _, _, _ = db.LoadCached(ctx, q)
	if f.Len() != 101 || f.Start[50] != t0+50*60 {
		t.Errorf("the cache was written through a returned frame: row 50 starts %d", f.Start[50])
	}
	hits, misses, _ := c.Stats()
	if misses != 1 || hits < 6 {
		t.Errorf("hits %d misses %d", hits, misses)
	}
}

// TestCacheStaysWithinItsBound: loading many markets keeps the cache
// under its size, dropping the least recently used.
func TestCacheStaysWithinItsBound(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "many.db")
	w, err := demodata.OpenWriter("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	f := &frame.Frame{}
	for i := 0; i < 1000; i++ { // 64 KB a market
		f.Append(t0+int64(i)*60, 1, 1, 1, 1, 1, 1, 1)
	}
	for m := 0; m < 40; m++ {
		must(t, w.CreateTable(ctx, fmt.Sprintf("m_S%d_1m", m), true))
		must(t, w.Insert(ctx, fmt.Sprintf("m_S%d_1m", m), f, true))
	}
	db, err := kline.Open(kline.Config{Type: "sqlite", URI: path}, 1_000_000)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	c := kline.NewCache(512 << 10) // room for 8 markets
	db.UseCache(c)
	for m := 0; m < 40; m++ {
		if _, _, _, err := db.LoadCached(ctx, kline.Query{Exchange: "m", Symbol: fmt.Sprintf("S%d", m), BinSize: "1m", Start: t0, End: t0 + 1000*60}); err != nil {
			t.Fatal(err)
		}
		if _, _, used := c.Stats(); used > 512<<10 {
			t.Fatalf("after %d markets the cache holds %d bytes, over its 512 KiB", m+1, used)
		}
	}
	if _, _, hit, _ := db.LoadCached(ctx, kline.Query{Exchange: "m", Symbol: "S39", BinSize: "1m", Start: t0, End: t0 + 1000*60}); !hit {
		t.Error("the most recent market was evicted")
	}
	if _, _, hit, _ := db.LoadCached(ctx, kline.Query{Exchange: "m", Symbol: "S0", BinSize: "1m", Start: t0, End: t0 + 1000*60}); hit {
		t.Error("the least recent market is still cached")
	}
}
