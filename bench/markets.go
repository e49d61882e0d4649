package main

// A cross-sectional study: one run that loads 20 markets of 100 000
// candles with load_klines, next to 20 runs that each load one of them.

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/ztrade/pyrunner/pkg/demodata"
)

const (
	crossMarkets = 20
	crossRows    = 100_000
)

// writeCrossMarkets writes the 20 tables bench_M0_1m … bench_M19_1m.
func writeCrossMarkets(ctx context.Context, db string) error {
	w, err := demodata.OpenWriter("sqlite", db)
	if err != nil {
		return err
	}
	defer w.Close()
	for i := 0; i < crossMarkets; i++ {
		m := demodata.Market{Exchange: "bench", Symbol: fmt.Sprintf("M%d", i), Price: 100 + float64(i)}
		table := fmt.Sprintf("bench_M%d_1m", i)
		if err := w.CreateTable(ctx, table, true); err != nil {
			return err
		}
		if err := w.Insert(ctx, table, demodata.Generate(m, t0, crossRows, uint64(i)+1), true); err != nil {
			return err
		}
	}
	return nil
}

// crossSection measures, on one stack without the K-line cache (every
// load reads the database), in three rounds: the sum of the load times
// (meta loadMs) of 20 runs that each load one market as df, and the time
// load_klines takes inside one run to hand all 20 to user code as
// DataFrames, and the same markets loaded by load_kline one after
// another in that run. It adds the medians.
func crossSection(dir, db string, add func(k, v string)) error {
	s, err := start(dir, db, 1, "PYRUNNER_KLINE_CACHE_MB=0")
	if err != nil {
		return err
	}
	defer s.stop()
	end := t0 + crossRows*60
	var pairs []string
	for i := 0; i < crossMarkets; i++ {
		pairs = append(pairs, fmt.Sprintf(`("bench", "M%d")`, i))
	}
	code := fmt.Sprintf(`import time
t = time.perf_counter()
d = load_klines([%s], "1m", %d, %d, limit=%d)
many = time.perf_counter() - t
t = time.perf_counter()
for e, s in d:
    load_kline(e, s, "1m", %d, %d, limit=%d)
result = [many, sum(len(f) for f in d.values()), time.perf_counter() - t]`, strings.Join(pairs, ", "), t0, end, crossRows, t0, end, crossRows)
	body, _ := json.Marshal(map[string]any{"exchange": "binance", "symbol": "BTCUSDT", "binSize": "1m",
		"start": t0, "end": t0 + 60, "code": code, "timeoutSec": 120})
	var sums, multis, loops []time.Duration
	for round := 0; round < 3; round++ {
		var sum time.Duration
		for i := 0; i < crossMarkets; i++ {
			r, _, err := s.research(fmt.Sprintf(`{"exchange":"bench","symbol":"M%d","binSize":"1m","start":%d,"end":%d,"limit":%d,"code":"result = len(df)","timeoutSec":120}`,
				i, t0, end, crossRows))
			if err != nil {
				return err
			}
			if r.Meta.Rows != crossRows {
				return fmt.Errorf("market M%d: %d rows, want %d", i, r.Meta.Rows, crossRows)
			}
			sum += time.Duration(r.Meta.LoadMs) * time.Millisecond
		}
		r, _, err := s.research(string(body))
		if err != nil {
			return err
		}
		var got [3]float64
		if err := json.Unmarshal(r.Result, &got); err != nil || got[1] != crossMarkets*crossRows {
			return fmt.Errorf("load_klines of %d markets: %s (%v)", crossMarkets, r.Result, err)
		}
		sums, multis = append(sums, sum), append(multis, time.Duration(got[0]*float64(time.Second)))
		loops = append(loops, time.Duration(got[2]*float64(time.Second)))
	}
	sum, multi, loop := median(sums), median(multis), median(loops)
	add(fmt.Sprintf("(m) %d markets × %dk rows (SQLite, no K-line cache): one run's load_klines, to DataFrames in user code / the sum of %d single-market runs' loadMs, median of 3 rounds",
		crossMarkets, crossRows/1000, crossMarkets),
		fmt.Sprintf("%s / %s (%.2f×; the same 20 load_kline calls one after another in the run: %s)", ms(multi), ms(sum), float64(multi)/float64(sum), ms(loop)))
	return nil
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
