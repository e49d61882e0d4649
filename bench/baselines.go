package main

// What pyrunner is measured against, in the same run on the same machine:
// the fork floor of a warm interpreter, the original python-runner's way
// (a fresh interpreter and pandas.read_sql per request), a warm Jupyter
// kernel, pandas.read_sql on MariaDB, and a backlog drained from the queue.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ztrade/pyrunner/pkg/demodata"
)

// forkFloorScript forks a warm interpreter (numpy and pandas imported)
// and builds a 1 000-row DataFrame in the child, until the parent has
// reaped it, once per line read: the least a fork-per-request design can
// cost, measured in turn with pyrunner's call (see stepper).
const forkFloorScript = `
import os, sys, time, gc
import numpy as np, pandas as pd
cols = {c: np.random.default_rng(1).random(1000) for c in ("open", "high", "low", "close", "volume", "turnover")}
cols["start"] = np.arange(1000, dtype=np.int64) * 60
gc.freeze()
print("ready", flush=True)
for line in sys.stdin:
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        df = pd.DataFrame(cols)
        df["time"] = pd.to_datetime(df["start"], unit="s", utc=True)
        os._exit(0 if len(df) == 1000 else 1)
    _, status = os.waitpid(pid, 0)
    print(time.perf_counter() - t if status == 0 else "error", flush=True)`

func seconds(out []byte) (time.Duration, error) {
	f, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
	return time.Duration(f * float64(time.Second)), err
}

// thousandRows is the SELECT both baselines run: the seed's market, 1 000
// candles, as python-runner reads them.
const thousandRows = "SELECT start, open, high, low, close, volume, turnover, trades FROM binance_BTCUSDT_1m WHERE start >= 1735689600 ORDER BY start LIMIT 1000"

// originalStyle is one request the way python-runner serves it: a fresh
// /usr/bin/python3 that imports pandas, reads the rows with
// pandas.read_sql and runs the snippet.
func originalStyle(py, db string) (time.Duration, error) {
	t := time.Now()
	out, err := exec.Command(py, "-c", `
import sqlite3, sys, pandas as pd
con = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
df = pd.read_sql(sys.argv[2], con)
df["time"] = pd.to_datetime(df["start"], unit="s", utc=True)
result = {"rows": len(df)}
print(result["rows"])`, db, thousandRows).Output()
	d := time.Since(t)
	if err != nil || strings.TrimSpace(string(out)) != "1000" {
		return 0, fmt.Errorf("original-style request: %v %s", err, out)
	}
	return d, nil
}

// kernelScript is a warm Jupyter kernel driven by jupyter_client: per
// line read, it reloads the 1 000 rows from SQLite and runs the snippet.
const kernelScript = `
import sys, time
from jupyter_client.manager import start_new_kernel
km, kc = start_new_kernel(kernel_name="python3")
try:
    kc.execute_interactive("import sqlite3, pandas as pd", timeout=120)
    cell = ("con = sqlite3.connect('file:%s?mode=ro', uri=True)\n"
            "df = pd.read_sql(%r, con)\n"
            "df['time'] = pd.to_datetime(df['start'], unit='s', utc=True)\n"
            "con.close()\n"
            "result = {'rows': len(df)}\n") % (sys.argv[1], sys.argv[2])
    print("ready", flush=True)
    for line in sys.stdin:
        t = time.perf_counter()
        r = kc.execute_interactive(cell, timeout=60, output_hook=lambda m: None)
        d = time.perf_counter() - t
        print(d if r["content"]["status"] == "ok" else "error", flush=True)
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=True)`

// stepper is a Python process that does one measured step per line it
// reads and prints how long it took, in seconds (or "error"): a baseline
// called in turn with pyrunner, so both see the same machine.
type stepper struct {
	name string
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
}

// startStepper runs script with py and waits for it to print "ready".
func startStepper(name, py, script string, args ...string) (*stepper, error) {
	cmd := exec.Command(py, append([]string{"-c", script}, args...)...)
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	k := &stepper{name: name, cmd: cmd, in: in, out: bufio.NewScanner(out)}
	if !k.out.Scan() || k.out.Text() != "ready" {
		k.close()
		return nil, fmt.Errorf("%s did not start", name)
	}
	return k, nil
}

// call does one step and returns how long it took.
func (k *stepper) call() (time.Duration, error) {
	if _, err := io.WriteString(k.in, "go\n"); err != nil {
		return 0, err
	}
	if !k.out.Scan() {
		return 0, fmt.Errorf("%s: no answer", k.name)
	}
	d, err := seconds(k.out.Bytes())
	if err != nil {
		return 0, fmt.Errorf("%s: %s", k.name, k.out.Text())
	}
	return d, nil
}

func (k *stepper) close() {
	k.in.Close()
	k.cmd.Wait()
}

// mysqlBig writes the 1M-row table into a fresh MariaDB database with a
// SELECT-only user and returns that user's DSN, its pymysql arguments and
// a clean-up. MariaDB is the root of PYRUNNER_BENCH_MYSQL (default the
// local server, root, no password).
func mysqlBig(ctx context.Context) (dsn string, pyArgs []string, cleanup func(), err error) {
	return mysqlWith(ctx, func(w *demodata.Writer) error {
		if err := w.CreateTable(ctx, "bench_BIG_1m", true); err != nil {
			return err
		}
		return w.Insert(ctx, "bench_BIG_1m", demodata.Generate(demodata.DemoMarkets[0], t0, bigRows, 7), true)
	})
}

// mysqlDemo is a MariaDB database with the demo markets (two days from t0).
func mysqlDemo(ctx context.Context) (dsn string, cleanup func(), err error) {
	dsn, _, cleanup, err = mysqlWith(ctx, func(w *demodata.Writer) error { return w.WriteDemo(ctx, t0, 2) })
	return dsn, cleanup, err
}

// mysqlWith makes the bench's MariaDB database, has fill write its
// tables, and grants a read-only user: its DSN, the arguments a Python
// connect takes, and how to drop it all.
func mysqlWith(ctx context.Context, fill func(*demodata.Writer) error) (dsn string, pyArgs []string, cleanup func(), err error) {
	root := envOr("PYRUNNER_BENCH_MYSQL", "root:@tcp(127.0.0.1:3306)/")
	const db, user = "pyrunner_bench", "pyrunner_bench_ro"
	w, err := demodata.OpenWriter("mysql", root)
	if err != nil {
		return "", nil, nil, err
	}
	defer w.Close()
	if err := w.Exec(ctx, "DROP DATABASE IF EXISTS "+db); err != nil {
		return "", nil, nil, fmt.Errorf("mysql: %w", err)
	}
	if err := w.Exec(ctx, "CREATE DATABASE "+db); err != nil {
		return "", nil, nil, fmt.Errorf("mysql: %w", err)
	}
	cleanup = func() {
		if w, err := demodata.OpenWriter("mysql", root); err == nil {
			for _, q := range []string{"DROP DATABASE IF EXISTS " + db, "DROP USER IF EXISTS '" + user + "'@'%'"} {
				if err := w.Exec(context.Background(), q); err != nil {
					fmt.Fprintln(os.Stderr, "bench: mysql cleanup:", err)
				}
			}
			w.Close()
		}
	}
	dbw, err := demodata.OpenWriter("mysql", strings.TrimSuffix(root, "/")+"/"+db)
	if err != nil {
		cleanup()
		return "", nil, nil, err
	}
	defer dbw.Close()
	err = fill(dbw)
	b := make([]byte, 12)
	rand.Read(b)
	pw := hex.EncodeToString(b)
	if err == nil {
		_, err = dbw.GrantReadOnly(ctx, user, pw)
	}
	if err != nil {
		cleanup()
		return "", nil, nil, err
	}
	dsn = fmt.Sprintf("%s:%s@tcp(127.0.0.1:3306)/%s?charset=utf8mb4&parseTime=True&loc=Local", user, pw, db)
	return dsn, []string{"127.0.0.1", user, pw, db}, cleanup, nil
}

// readSQL is pandas.read_sql of the 1M-row table, best of 3, on a
// connection that the Python statement connect makes (from sys.argv) for
// each try, with the driver's placeholder ph.
func readSQL(py, connect, ph string, args ...string) (time.Duration, error) {
	q := strings.ReplaceAll("SELECT start, open, high, low, close, volume, turnover, trades FROM bench_BIG_1m WHERE start >= ? AND start <= ? ORDER BY start LIMIT ?", "?", ph)
	out, err := exec.Command(py, append([]string{"-c", fmt.Sprintf(`
import sys, time, pandas as pd
best = None
for _ in range(3):
    t = time.perf_counter()
    %s
    df = pd.read_sql(%q, con, params=(0, %d, %d))
    df["time"] = pd.to_datetime(df["start"], unit="s", utc=True)
    d = time.perf_counter() - t
    con.close()
    assert len(df) == %d
    best = d if best is None else min(best, d)
print(best)`, connect, q, t0+bigRows*60, bigRows, bigRows)}, args...)...).Output()
	if err != nil {
		return 0, fmt.Errorf("pandas.read_sql: %w", err)
	}
	return seconds(out)
}

// drain queues n trivial runs without waiting (from 8 clients) and returns
// how many finished per second, from the first submit until none is
// queued or running.
func drain(s *stack, n int) (float64, error) {
	body := `{"exchange":"binance","symbol":"BTCUSDT","binSize":"1m","start":1735689600,"end":1735776000,"wait":false,"code":"result = len(df)"}`
	t := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for c := 0; c < 8; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for i := c; i < n; i += 8 {
				resp, err := client.Post(s.base+"/v1/research/run", "application/json", strings.NewReader(body))
				if err != nil {
					errs <- err
					return
				}
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err != nil {
					errs <- err
					return
				}
				if resp.StatusCode != 202 {
					errs <- fmt.Errorf("submit: status %d", resp.StatusCode)
					return
				}
			}
		}(c)
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	for {
		var h struct {
			Queues map[string]struct {
				Pending int `json:"pending"`
				Active  int `json:"active"`
			} `json:"queues"`
		}
		if err := getJSON(s.base+"/health", &h); err != nil {
			return 0, err
		}
		if q := h.Queues["research"]; q.Pending == 0 && q.Active == 0 {
			break
		}
		if time.Since(t) > 5*time.Minute {
			return 0, fmt.Errorf("backlog of %d not drained in 5 minutes", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return float64(n) / time.Since(t).Seconds(), nil
}

func getJSON(url string, out any) error {
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(out)
}
