package main

// (n) Ten times the data: 10M one-minute candles (ten years of two
// markets) from SQLite and from MariaDB, next to the 1M first call on the
// same stack, with the worker's memory sampled while it loads and the
// repeated call served from a cache sized for it.

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ztrade/pyrunner/pkg/demodata"
	"github.com/ztrade/pyrunner/pkg/frame"
)

const hugeRows = 10 * bigRows

// hugeBody asks for the 10M-row table.
var hugeBody = fmt.Sprintf(`{"exchange":"bench","symbol":"HUGE","binSize":"1m","start":0,"end":%d,"limit":%d,"timeout_sec":300,"code":"result = [len(df), float(df.close.sum())]"}`,
	t0+hugeRows*60, hugeRows)

// writeHuge makes bench_HUGE_1m from bench_BIG_1m: its 1M candles ten
// times over, each copy the next 1M minutes, written in start order.
func writeHuge(ctx context.Context, w *demodata.Writer) error {
	if err := w.CreateTable(ctx, "bench_HUGE_1m", true); err != nil {
		return err
	}
	cols := "open, high, low, close, volume, turnover, trades"
	for k := 0; k < hugeRows/bigRows; k++ {
		q := fmt.Sprintf("INSERT INTO bench_HUGE_1m (start, %s) SELECT start + %d, %s FROM bench_BIG_1m ORDER BY start", cols, k*bigRows*60, cols)
		if err := w.Exec(ctx, q); err != nil {
			return fmt.Errorf("10M rows: %w", err)
		}
	}
	return nil
}

// largeFrames adds the (n) lines for SQLite (db, which holds
// bench_BIG_1m) and for MariaDB.
func largeFrames(ctx context.Context, dir, db string, add func(k, v string)) error {
	fmt.Fprintln(os.Stderr, "bench: writing 10M rows to SQLite…")
	w, err := demodata.OpenWriter("sqlite", db)
	if err != nil {
		return err
	}
	err = writeHuge(ctx, w)
	w.Close()
	if err != nil {
		return err
	}
	if err := hugeFrame(dir, db, "SQLite", add); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "bench: writing 1M and 10M rows to MariaDB…")
	dsn, _, cleanup, err := mysqlWith(ctx, func(w *demodata.Writer) error {
		if err := w.CreateTable(ctx, "bench_BIG_1m", true); err != nil {
			return err
		}
		if err := w.Insert(ctx, "bench_BIG_1m", demodata.Generate(demodata.DemoMarkets[0], t0, bigRows, 7), true); err != nil {
			return err
		}
		return writeHuge(ctx, w)
	})
	if err != nil {
		add("(n) 10M rows from MariaDB", "not measured: "+err.Error())
		return nil
	}
	defer cleanup()
	return hugeFrame(dir, db, "MariaDB", add, "PYRUNNER_READONLY_TYPE=mysql", "PYRUNNER_READONLY_URI="+dsn)
}

// hugeFrame measures one backend: the 1M first call, the 10M first call
// with the worker's memory sampled throughout, and the 10M call repeated.
func hugeFrame(dir, db, name string, add func(k, v string), env ...string) error {
	env = append(env, "PYRUNNER_EXECUTOR=warm", fmt.Sprintf("PYRUNNER_MAX_ROWS=%d", hugeRows), "PYRUNNER_KLINE_CACHE_MB=1024")
	s, err := start(dir, db, 1, env...)
	if err != nil {
		return err
	}
	defer s.stop()
	one, _, err := s.research(bigBody)
	if err != nil {
		return err
	}
	time.Sleep(time.Second) // the 1M frame cached, the child gone: at rest
	rest := s.memory()
	stop := make(chan struct{})
	var peak int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			peak = max(peak, s.memory())
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	ten, tenD, err := s.research(hugeBody)
	close(stop)
	wg.Wait()
	if err != nil {
		return err
	}
	bestR, best, err := s.bestOf(3, hugeBody)
	if err != nil {
		return err
	}
	first1 := time.Duration(one.Meta.LoadMs+one.Meta.ExecMs) * time.Millisecond
	first10 := time.Duration(ten.Meta.LoadMs+ten.Meta.ExecMs) * time.Millisecond
	frameBytes := int64(hugeRows) * 8 * int64(len(frame.Columns))
	add(fmt.Sprintf("(n) %s: 10M-row frame to user code, first call (meta loadMs+execMs) / the 1M first call, same stack", name),
		fmt.Sprintf("%s / %s (%.1f×; 10M: load %d ms, hand-off+df+code %d ms, whole call %s)", ms(first10), ms(first1),
			float64(first10)/float64(first1), ten.Meta.LoadMs, ten.Meta.ExecMs, ms(tenD)))
	add(fmt.Sprintf("(n) %s: worker memory (PSS of worker, zygote and children + memory files) at rest / peak during the 10M first call", name),
		fmt.Sprintf("%s / %s (peak − rest = %.2f× the frame's %s)", mib(rest), mib(peak), float64(peak-rest)/float64(frameBytes), mib(frameBytes)))
	add(fmt.Sprintf("(n) %s: the 10M call repeated (K-line cache of 1 GiB), best of 3", name),
		fmt.Sprintf("%s (load %d ms, cache %s; %.0f× faster than the first)", ms(best), bestR.Meta.LoadMs, bestR.Meta.Cache, float64(tenD)/float64(best)))
	return nil
}

// memory is what the stack's workers hold: the PSS of each worker's
// process tree outside shared memory, plus the machine's shared memory
// (memory files, tmpfs) beyond what it was when the stack started, which
// counts a frame's memory file once whether or not a process maps it.
func (s *stack) memory() int64 {
	var own int64
	s.walk(func(pid int) {
		f := smaps(pid)
		own += f["Pss:"] - f["Pss_Shmem:"]
	})
	return own + meminfo("Shmem:") - s.shmem0
}

// smaps is the kB fields of /proc/pid/smaps_rollup ("Pss:" → bytes).
func smaps(pid int) map[string]int64 {
	out := map[string]int64{}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			out[f[0]] = kb << 10
		}
	}
	return out
}

// meminfo is a kB field of /proc/meminfo, in bytes.
func meminfo(field string) int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, field) {
			kb, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}
