package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ztrade/pyrunner/pkg/demodata"
	"github.com/ztrade/pyrunner/pkg/frame"
	"github.com/ztrade/pyrunner/pkg/store"
)

// rowsIn counts the candles of f with start in [a, b].
func rowsIn(f *frame.Frame, a, b int64) int {
	n := 0
	for _, s := range f.Start {
		if s >= a && s <= b {
			n++
		}
	}
	return n
}

// TestResearch runs the research acceptance tests against a stack in each
// executor mode.
func TestResearch(t *testing.T) {
	for _, mode := range []string{"warm", "cold"} {
		t.Run(mode, func(t *testing.T) { testResearch(t, mode) })
	}
}

func testResearch(t *testing.T, mode string) {
	s := startStack(t, stackOpts{env: map[string]string{"PYRUNNER_EXECUTOR": mode}})
	_, written := demoSQLite(t, t.TempDir()) // the same deterministic data the stack serves
	t.Run("SeedExample", func(t *testing.T) { s.t = t; testSeedExample(t, s, written, "sqlite") })
	t.Run("DataFrameShape", func(t *testing.T) { s.t = t; testDataFrameShape(t, s) })
	t.Run("Resample", func(t *testing.T) { s.t = t; testResample(t, s) })
	t.Run("UnknownMarket", func(t *testing.T) { s.t = t; testUnknownMarket(t, s) })
	t.Run("Results", func(t *testing.T) { s.t = t; testResults(t, s) })
	t.Run("Images", func(t *testing.T) { s.t = t; testImages(t, s) })
	t.Run("ErrorsTimeoutFlood", func(t *testing.T) { s.t = t; testErrorsTimeoutFlood(t, s) })
	t.Run("AsyncAndPoll", func(t *testing.T) { s.t = t; testAsyncAndPoll(t, s) })
	t.Run("Cancel", func(t *testing.T) { s.t = t; testCancel(t, s) })
	t.Run("Validation", func(t *testing.T) { s.t = t; testValidation(t, s) })
	t.Run("Health", func(t *testing.T) { s.t = t; testHealth(t, s) })
}

func testSeedExample(t *testing.T, s *stack, written *frame.Frame, dbType string) {
	var r result
	st := s.do("POST", "/v1/research/run", seedBody, &r)
	if st != 200 || !r.ok() {
		t.Fatalf("status %d, ok %v, error %q", st, r.ok(), r.errText())
	}
	var res struct {
		Rows int `json:"rows"`
	}
	if err := json.Unmarshal(r.Result, &res); err != nil {
		t.Fatal(err)
	}
	want := rowsIn(written, seedStart, seedEnd)
	if want != 1441 || res.Rows != want {
		t.Errorf("result.rows = %d, want %d (inclusive range)", res.Rows, want)
	}
	for _, k := range []string{"exchange", "symbol", "binSize", "start", "end", "rows", "dbType", "dbReadonly",
		"runId", "worker", "source", "queueMs", "loadMs", "execMs", "totalMs", "warnings"} {
		if _, ok := r.Meta[k]; !ok {
			t.Errorf("meta lacks %q: %v", k, r.Meta)
		}
	}
	if r.Meta["dbType"] != dbType || r.Meta["dbReadonly"] != true || r.Meta["rows"].(float64) != float64(want) ||
		r.Meta["source"] != "binance_BTCUSDT_1m" || r.Meta["runId"] != r.ID || r.Status != "succeeded" {
		t.Errorf("meta = %v, status %s", r.Meta, r.Status)
	}
	if r.Error != nil || r.Images == nil || r.CreatedAt == nil || r.FinishedAt == nil ||
		!strings.HasSuffix(*r.CreatedAt, "+00:00") {
		t.Errorf("body fields: error=%v images=%v createdAt=%v", r.Error, r.Images, r.CreatedAt)
	}
}

func testDataFrameShape(t *testing.T, s *stack) {
	code := `
def shape(d):
    return {"columns": list(d.columns), "dtypes": [str(x) for x in d.dtypes], "rows": len(d)}
other = load_kline("binance", "ETHUSDT", "1m", 1735689600, 1735693200)
empty = load_kline("binance", "BTCUSDT", "1m", 1, 2)
pairs = [("binance", "ETHUSDT"), ("okx", "BTC-USDT-SWAP"), ("bitmex", "XBTUSD"), ("binance", "BTCUSDT")]
many = load_klines(pairs, "1m", 1735689600, 1735693200)
try:
    load_klines([("binance", "ETHUSDT"), ("nowhere", "NOPE")], "1m", 0, 1)
    bad = None
except ValueError as e:
    bad = str(e)
result = {"df": shape(df), "other": shape(other), "empty": shape(empty),
          "many": [[e, s, len(f), bool(f.equals(load_kline(e, s, "1m", 1735689600, 1735693200)))] for (e, s), f in many.items()],
          "many_bad": bad,
          "other_close": float(other.close.iloc[0]), "btc_close": float(df.close.iloc[0]),
          "first_time": df.time.iloc[0], "first_start": df.start.iloc[0]}
`
	var got struct {
		DF, Other, Empty struct {
			Columns []string
			Dtypes  []string
			Rows    int
		}
		OtherClose float64 `json:"other_close"`
		BTCClose   float64 `json:"btc_close"`
		FirstTime  string  `json:"first_time"`
		FirstStart int64   `json:"first_start"`
		Many       [][]any `json:"many"`
		ManyBad    string  `json:"many_bad"`
	}
	s.mustOK(code, &got)
	if fmt.Sprint(got.Many) != "[[binance ETHUSDT 61 true] [okx BTC-USDT-SWAP 61 true] [bitmex XBTUSD 61 true] [binance BTCUSDT 61 true]]" ||
		!strings.HasPrefix(got.ManyBad, "nowhere:NOPE: ") {
		t.Errorf("load_klines: %v, error %q", got.Many, got.ManyBad)
	}
	wantCols := "start,open,high,low,close,volume,turnover,trades,time"
	wantTypes := "int64,float64,float64,float64,float64,float64,float64,int64,datetime64[ns, UTC]"
	for name, sh := range map[string]struct {
		Columns []string
		Dtypes  []string
		Rows    int
	}{"df": got.DF, "other": got.Other, "empty": got.Empty} {
		if strings.Join(sh.Columns, ",") != wantCols || strings.Join(sh.Dtypes, ",") != wantTypes {
			t.Errorf("%s: columns %v dtypes %v", name, sh.Columns, sh.Dtypes)
		}
	}
	if got.DF.Rows != 1441 || got.Other.Rows != 61 || got.Empty.Rows != 0 {
		t.Errorf("rows: df %d other %d empty %d", got.DF.Rows, got.Other.Rows, got.Empty.Rows)
	}
	if got.OtherClose > 10000 || got.BTCClose < 10000 {
		t.Errorf("load_kline returned the wrong market: ETH close %v, BTC close %v", got.OtherClose, got.BTCClose)
	}
	if got.FirstTime != "2025-01-01T00:00:00+00:00" || got.FirstStart != seedStart {
		t.Errorf("first time %q start %d", got.FirstTime, got.FirstStart)
	}
	// An empty df still has every column, typed.
	var empty struct {
		Columns []string
		Dtypes  []string
		Rows    int
	}
	st, r := s.research(`result = {"columns": list(df.columns), "dtypes": [str(x) for x in df.dtypes], "rows": len(df)}`,
		map[string]any{"start": 1, "end": 2})
	if err := json.Unmarshal(r.Result, &empty); err != nil {
		t.Fatal(err)
	}
	if st != 200 || !r.ok() || empty.Rows != 0 || strings.Join(empty.Dtypes, ",") != wantTypes || strings.Join(empty.Columns, ",") != wantCols {
		t.Errorf("empty df: %d %s", st, r.Result)
	}
	// A market without the turnover column gives NaN turnover; a bad load_kline call is an error in user code.
	var tv struct {
		AllNaN bool `json:"all_nan"`
		Rows   int
	}
	s.mustOK(`x = load_kline("bitmex", "XBTUSD", "1m", 1735689600, 1735690200)
result = {"all_nan": bool(x.turnover.isna().all()), "rows": len(x)}`, &tv)
	if !tv.AllNaN || tv.Rows != 11 {
		t.Errorf("table without turnover: %+v", tv)
	}
	st, r = s.research(`load_kline("binance", "NOPE", "1m", 0, 1)`, nil)
	if st != 200 || r.ok() || !strings.Contains(r.errText(), "binance_NOPE_1m") {
		t.Errorf("load_kline of unknown market: %d %q", st, r.errText())
	}
}

func testResample(t *testing.T, s *stack) {
	var got struct {
		Rows   int
		Starts []int64
		Open0  float64 `json:"open0"`
		Vol0   float64 `json:"vol0"`
	}
	st, r := s.research(`result = {"rows": len(df), "starts": df.start.head(3).tolist(), "open0": df.open.iloc[0], "vol0": df.volume.iloc[0]}`,
		map[string]any{"binSize": "5m", "start": seedStart, "end": seedStart + 3600})
	if err := json.Unmarshal(r.Result, &got); err != nil {
		t.Fatal(err)
	}
	if st != 200 || !r.ok() || got.Rows != 12 || got.Starts[1] != seedStart+300 || r.Meta["source"] != "binance_BTCUSDT_1m resampled to 5m" {
		t.Fatalf("5m: %d %+v meta %v", st, got, r.Meta)
	}
	var one struct {
		Open0 float64 `json:"open0"`
		Vol   float64 `json:"vol"`
	}
	s.mustOK(`d = df[(df.start >= 1735689600) & (df.start < 1735689900)]
result = {"open0": d.open.iloc[0], "vol": d.volume.sum()}`, &one)
	if one.Open0 != got.Open0 || fmt.Sprintf("%.6f", one.Vol) != fmt.Sprintf("%.6f", got.Vol0) {
		t.Errorf("resampled bucket (open %v vol %v) differs from the 1m candles (open %v vol %v)", got.Open0, got.Vol0, one.Open0, one.Vol)
	}
}

func testUnknownMarket(t *testing.T, s *stack) {
	st, r := s.research("result = 1", map[string]any{"symbol": "DOGEUSDT"})
	if st != 200 || r.ok() || !strings.Contains(r.errText(), "binance_DOGEUSDT_1m") || r.Status != "failed" {
		t.Errorf("status %d ok %v error %q", st, r.ok(), r.errText())
	}
}

func testResults(t *testing.T, s *stack) {
	var got map[string]any
	s.mustOK(`import datetime
result = {"np_int": np.int64(7), "np_float": np.float32(1.5), "nan": float("nan"), "inf": np.inf,
          "arr": np.array([1.0, np.nan]), "series": df.close.head(2), "frame": df[["start", "close"]].head(2),
          "ts": pd.Timestamp("2025-01-01", tz="UTC"), "date": datetime.date(2025, 1, 2), "tuple": (1, 2)}`, &got)
	if got["np_int"] != 7.0 || got["np_float"] != 1.5 || got["nan"] != nil || got["inf"] != nil ||
		fmt.Sprint(got["arr"]) != "[1 <nil>]" || got["ts"] != "2025-01-01T00:00:00+00:00" || got["date"] != "2025-01-02" {
		t.Errorf("result = %v", got)
	}
	if fr, ok := got["frame"].([]any); !ok || len(fr) != 2 || fr[0].(map[string]any)["start"] != float64(seedStart) {
		t.Errorf("frame = %v", got["frame"])
	}
	st, r := s.research("result = object()", nil)
	if st != 200 || r.ok() || !strings.Contains(r.errText(), "cannot be converted to JSON") {
		t.Errorf("unconvertible result: %d %q", st, r.errText())
	}
}

// png is a valid 1x1 PNG.
var png = func() []byte {
	b, _ := base64.StdEncoding.DecodeString("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
	return b
}()

func isPNG(data string) bool {
	b, err := base64.StdEncoding.DecodeString(data)
	return err == nil && len(b) > 8 && string(b[1:4]) == "PNG"
}

func testImages(t *testing.T, s *stack) {
	b64 := base64.StdEncoding.EncodeToString(png)
	// Each form on its own comes back as a PNG.
	forms := map[string]string{
		"figure":       "import matplotlib.pyplot as plt\nplt.plot(df.close)\n",
		"images path":  "open('a.png','wb').write(base64.b64decode(B))\nimages = [{'path': 'a.png'}]",
		"images data":  "images = [{'data': B, 'mimeType': 'image/png'}]",
		"image_path":   "open('b.png','wb').write(base64.b64decode(B))\nimage_path = 'b.png'",
		"image_paths":  "open('c.png','wb').write(base64.b64decode(B))\nimage_paths = ['c.png']",
		"image_base64": "image_base64 = B",
	}
	for name, code := range forms {
		r := s.mustOK("import base64\nB = '"+b64+"'\n"+code, nil)
		if len(r.Images) != 1 || !isPNG(r.Images[0].Data) || r.Images[0].MimeType != "image/png" || r.Images[0].Name == "" {
			t.Errorf("%s: images = %+v", name, r.Images)
		}
	}
	r := s.mustOK("import matplotlib.pyplot as plt\nplt.plot(df.close)\n", nil)
	if r.Images[0].Name != "figure-1.png" {
		t.Errorf("figure name %q", r.Images[0].Name)
	}
	// Four images: three kept, the fourth named in a warning; an oversize one dropped.
	r = s.mustOK(`import base64, os
B = '`+b64+`'
big = base64.b64encode(os.urandom(1_200_000)).decode()
images = [{'data': B, 'mimeType': 'image/png', 'name': 'one.png'}, {'data': big, 'mimeType': 'image/png', 'name': 'huge.png'},
          {'data': B, 'mimeType': 'image/png', 'name': 'two.png'}, {'data': B, 'mimeType': 'image/png', 'name': 'three.png'},
          {'data': B, 'mimeType': 'image/png', 'name': 'four.png'}]`, nil)
	var names []string
	for _, im := range r.Images {
		names = append(names, im.Name)
	}
	warnings := fmt.Sprint(r.Meta["warnings"])
	if strings.Join(names, ",") != "one.png,two.png,three.png" || !strings.Contains(warnings, "huge.png dropped") ||
		!strings.Contains(warnings, "four.png dropped") {
		t.Errorf("kept %v, warnings %s", names, warnings)
	}
}

func testErrorsTimeoutFlood(t *testing.T, s *stack) {
	st, r := s.research("x = 1\ny = 2\nz = x / 0\n", nil)
	if st != 200 || r.ok() || r.errText() != "ZeroDivisionError: division by zero" || r.Status != "failed" {
		t.Errorf("1/0: %d ok=%v error=%q", st, r.ok(), r.errText())
	}
	if !strings.Contains(r.Stderr, `File "<user_code>", line 3`) || !strings.Contains(r.Stderr, "z = x / 0") || strings.Contains(r.Stderr, "harness.py") {
		t.Errorf("traceback does not point at the user's line:\n%s", r.Stderr)
	}
	st, r = s.research("print('spinning')\nwhile True: pass", map[string]any{"timeoutSec": 2})
	if st != 200 || r.ok() || r.errText() != "timeout after 2s" || r.Status != "timeout" || r.Stdout != "spinning\n" {
		t.Errorf("timeout: %d ok=%v error=%q status=%s stdout=%q", st, r.ok(), r.errText(), r.Status, r.Stdout)
	}
	s.mustOK("result = 'still serving'", nil)
	// 10 MB of print: cut at the 4 MiB cap, with the flag set.
	st, r = s.research("for i in range(100_000):\n    print('x' * 99)", nil)
	if st != 200 || !r.ok() || !r.StdoutTruncated || len(r.Stdout) != 4<<20 || r.StderrTruncated {
		t.Errorf("flood: %d ok=%v truncated=%v len=%d", st, r.ok(), r.StdoutTruncated, len(r.Stdout))
	}
}

func testAsyncAndPoll(t *testing.T, s *stack) {
	var acc result
	body := strings.Replace(seedBody, `"limit"`, `"wait":false,"limit"`, 1)
	if st := s.do("POST", "/v1/research/run", body, &acc); st != 202 || acc.ID == "" || acc.Poll != "/v1/research/runs/"+acc.ID || acc.ResearchResult != nil {
		t.Fatalf("wait:false → %d %+v", st, acc)
	}
	var polled result
	if st := s.do("GET", acc.Poll+"?wait=60", "", &polled); st != 200 || !polled.ok() || polled.Status != "succeeded" {
		t.Fatalf("poll: %d %+v", st, polled)
	}
	var sync result
	s.do("POST", "/v1/research/run", seedBody, &sync)
	if string(polled.Result) != string(sync.Result) || polled.Meta["rows"] != sync.Meta["rows"] {
		t.Errorf("polled body %s differs from the synchronous one %s", polled.Result, sync.Result)
	}
	// ?wait= as a query parameter works too.
	var q result
	if st := s.do("POST", "/v1/research/run?wait=false", seedBody, &q); st != 202 || q.ID == "" {
		t.Errorf("?wait=false → %d", st)
	}
	// A waiting request returns when the run ends, not on some polling tick.
	st, r := s.research("import time\ntime.sleep(1.5)\nresult = 1", nil)
	returned := time.Now()
	finished, err := time.Parse("2006-01-02T15:04:05.000000-07:00", *r.FinishedAt)
	if st != 200 || err != nil {
		t.Fatalf("%d %v", st, err)
	}
	if lag := returned.Sub(finished); lag > 400*time.Millisecond {
		t.Errorf("the response came %s after the run finished", lag)
	}
	// A long-poll on a run that does not end in time answers 202 with the run so far.
	var long result
	s.do("POST", "/v1/research/run?wait=false", strings.Replace(seedBody, `result = {\"rows\": len(df)}`, `import time; time.sleep(3)`, 1), &long)
	var mid result
	if st := s.do("GET", "/v1/research/runs/"+long.ID+"?wait=0.5", "", &mid); st != 202 || mid.ResearchResult != nil || mid.Status == "succeeded" {
		t.Errorf("long-poll before the end: %d %+v", st, mid)
	}
	if st := s.do("GET", "/v1/research/runs/"+long.ID+"?wait=30", "", &mid); st != 200 || !mid.ok() {
		t.Errorf("long-poll to the end: %d %+v", st, mid)
	}
}

func testCancel(t *testing.T, s *stack) {
	// A running run is killed and ends stopped.
	var run result
	s.do("POST", "/v1/research/run?wait=false", strings.Replace(seedBody, `result = {\"rows\": len(df)}`, `import time; print('started', flush=True); time.sleep(60)`, 1), &run)
	waitUntil(t, 20*time.Second, "the run to start", func() bool {
		var r result
		s.do("GET", "/v1/research/runs/"+run.ID, "", &r)
		return r.Status == "running"
	})
	// A research run's output is seen only at its end, so its print has
	// no event to wait on: give a cold interpreter on a loaded machine
	// time to import pandas and print (the run sleeps 60 s).
	time.Sleep(3 * time.Second)
	var stopped result
	if st := s.do("POST", "/v1/research/runs/"+run.ID+"/cancel", "", &stopped); st != 200 || stopped.Status != "stopped" || stopped.ok() {
		t.Errorf("cancel running: %d status %s error %q", st, stopped.Status, stopped.errText())
	}
	if stopped.Stdout != "started\n" {
		t.Errorf("output so far is kept: %q", stopped.Stdout)
	}
	// A queued run is dropped: fill both workers' slots, then queue one more.
	var blockers []string
	for i := 0; i < 4; i++ {
		var b result
		s.do("POST", "/v1/research/run?wait=false", strings.Replace(seedBody, `result = {\"rows\": len(df)}`, `import time; time.sleep(4)`, 1), &b)
		blockers = append(blockers, b.ID)
	}
	var queued result
	s.do("POST", "/v1/research/run?wait=false", seedBody, &queued)
	var q result
	if st := s.do("POST", "/v1/research/runs/"+queued.ID+"/cancel", "", &q); st != 200 || q.Status != "stopped" || q.StartedAt != nil {
		t.Errorf("cancel queued: %d status %s started %v", st, q.Status, q.StartedAt)
	}
	for _, id := range blockers {
		var b result
		s.do("GET", "/v1/research/runs/"+id+"?wait=30", "", &b)
		if !b.ok() {
			t.Errorf("blocker %s: %s %q", id, b.Status, b.errText())
		}
	}
	if st := s.do("POST", "/v1/research/runs/00000000-0000-4000-8000-000000000000/cancel", "", nil); st != 404 {
		t.Errorf("cancel of an unknown run: %d", st)
	}
}

func testValidation(t *testing.T, s *stack) {
	before := s.runKeys()
	big := strings.Repeat("x", 300_000)
	cases := []struct {
		body   string
		status int
		detail string
	}{
		{`{"start":1,"end":2,"symbol":"BTCUSDT","binSize":"1m","code":"1"}`, 400, "exchange is required"},
		{`{"start":1,"end":2,"exchange":"binance","binSize":"1m","code":"1"}`, 400, "symbol is required"},
		{`{"start":1,"end":2,"exchange":"binance","symbol":"BTCUSDT","binSize":"","code":"1"}`, 400, "binSize is required"},
		{`{"exchange":"binance","symbol":"BTCUSDT","code":"1","end":2}`, 400, "start is required"},
		{`{"start":1,"end":2,"exchange":"binance","symbol":"BTCUSDT","binSize":"1m"}`, 400, "code is required"},
		{`{"exchange":"binance","symbol":"BTCUSDT","binSize":"1m","code":"1","start":20,"end":10}`, 400, "start (20) is after end (10)"},
		{`{"start":1,"end":2,"exchange":"binance","symbol":"BTCUSDT","binSize":"1y","code":"1"}`, 400, "binSize \"1y\""},
		{`{"start":1,"end":2,"exchange":"bin ance","symbol":"BTCUSDT","binSize":"1m","code":"1"}`, 400, "exchange \"bin ance\" must match"},
		{`{"start":1,"end":2,"exchange":"binance","symbol":"BTC/USDT","binSize":"1m","code":"1"}`, 400, "symbol \"BTC/USDT\" must match"},
		{`{"start":1,"end":2,"exchange":"binance","symbol":"x;drop","binSize":"1m","code":"1"}`, 400, "must match"},
		{`{"start":1,"end":2,"exchange":"binance","symbol":"BTCUSDT","binSize":"1m","code":"1","limit":-1}`, 400, "limit must not be negative"},
		{`{"start":1,"end":2,"exchange":"binance","symbol":"BTCUSDT","binSize":"1m","code":"1","timeoutSec":-5}`, 400, "timeoutSec must not be negative"},
		{`{"start":1,"end":2,"exchange":"binance","symbol":"BTCUSDT","binSize":"1m","code":"` + big + `"}`, 413, "over the limit of 262144 bytes"},
		{`{"exchange":`, 400, "invalid JSON body"},
	}
	for _, c := range cases {
		var e struct {
			Detail string `json:"detail"`
		}
		st := s.do("POST", "/v1/research/run", c.body, &e)
		if st != c.status || !strings.Contains(e.Detail, c.detail) {
			t.Errorf("%.80s → %d %q; want %d %q", c.body, st, e.Detail, c.status, c.detail)
		}
	}
	if st := s.do("GET", "/v1/research/runs/nope", "", nil); st != 404 {
		t.Errorf("unknown id → %d", st)
	}
	if after := s.runKeys(); after != before {
		t.Errorf("bad input created runs: %d run keys before, %d after", before, after)
	}
	// A too-large timeout is capped, with a warning.
	st, r := s.research("result = 1", map[string]any{"timeoutSec": 100000})
	if st != 200 || !r.ok() || !strings.Contains(fmt.Sprint(r.Meta["warnings"]), "timeoutSec lowered to the server maximum of 600") {
		t.Errorf("big timeout: %d ok=%v error=%q warnings=%v", st, r.ok(), r.errText(), r.Meta["warnings"])
	}
}

func testHealth(t *testing.T, s *stack) {
	for _, p := range []string{"/health", "/v1/health"} {
		var h struct {
			Status string `json:"status"`
			Redis  struct {
				Status string `json:"status"`
			} `json:"redis"`
			Workers []struct {
				ID       string `json:"id"`
				Executor string `json:"executor"`
				Sandbox  string `json:"sandbox"`
			} `json:"workers"`
			Queues map[string]map[string]int `json:"queues"`
		}
		if st := s.getJSON(p, &h); st != 200 || h.Status != "ok" || h.Redis.Status != "ok" || len(h.Workers) != 2 || h.Queues["research"] == nil {
			t.Errorf("%s: %d %+v", p, st, h)
		}
		for _, w := range h.Workers {
			if w.Executor != s.mode || (w.Sandbox != "bwrap" && w.Sandbox != "none") {
				t.Errorf("%s: worker %s reports executor %q sandbox %q, want %q", p, w.ID, w.Executor, w.Sandbox, s.mode)
			}
		}
	}
}

// TestWorkerKilledMidRun: SIGKILL the worker running a run; the run must
// not stay running, and the other worker keeps serving.
func TestWorkerKilledMidRun(t *testing.T) {
	s := startStack(t, stackOpts{})
	var acc result
	s.do("POST", "/v1/research/run?wait=false", strings.Replace(seedBody, `result = {\"rows\": len(df)}`, `import time; time.sleep(120)`, 1), &acc)
	var running result
	waitUntil(t, 20*time.Second, "the run to start", func() bool {
		s.do("GET", "/v1/research/runs/"+acc.ID, "", &running)
		return running.Status == "running"
	})
	pid := workerPID(t, s, acc.ID)
	var victim *proc
	for _, w := range s.workers {
		if w.cmd.Process.Pid == pid {
			victim = w
		}
	}
	if victim == nil {
		t.Fatalf("run is on pid %d, not one of the stack's workers", pid)
	}
	killed := time.Now()
	victim.signal(syscall.SIGKILL)
	var end result
	if st := s.do("GET", "/v1/research/runs/"+acc.ID+"?wait=30", "", &end); st != 200 {
		t.Fatalf("run still %q 30 s after its worker was killed", end.Status)
	}
	if end.Status != "terminated" || end.ok() || !strings.Contains(end.errText(), "lost") {
		t.Errorf("status %s error %q", end.Status, end.errText())
	}
	t.Logf("run ended %s %s after SIGKILL", end.Status, time.Since(killed).Round(time.Millisecond))
	s.mustOK("result = 2", nil) // the other worker serves
}

// workerPID reads the pid of the worker that holds a run from /health.
func workerPID(t *testing.T, s *stack, id string) int {
	var h struct {
		Workers []struct {
			PID        int   `json:"pid"`
			ActiveRuns int64 `json:"active_runs"`
		} `json:"workers"`
	}
	var pid int
	waitUntil(t, 10*time.Second, "a worker to report the run", func() bool {
		s.getJSON("/health", &h)
		for _, w := range h.Workers {
			if w.ActiveRuns > 0 {
				pid = w.PID
				return true
			}
		}
		return false
	})
	return pid
}

// TestSecretsStayOut: user code sees none of the worker's secrets.
func TestSecretsStayOut(t *testing.T) {
	dir := t.TempDir()
	path, _ := demoSQLite(t, dir)
	s := startStack(t, stackOpts{dbEnv: map[string]string{
		"PYRUNNER_READONLY_TYPE": "sqlite", "PYRUNNER_READONLY_URI": path,
		"PYRUNNER_READONLY_PASSWORD": "db-pass-s3cret", "SCRIPT_JWT_SECRET": "jwt-s3cret", "SCRIPT_JWT_ADMIN_SECRET": "admin-s3cret",
		"PYRUNNER_TOKEN": "tok-s3cret",
	}, env: map[string]string{"PYRUNNER_ENV_PASSTHROUGH": "VISIBLE_TO_USER", "VISIBLE_TO_USER": "yes"}})
	s.authz = "Bearer tok-s3cret" // PYRUNNER_TOKEN guards research
	var env map[string]string
	s.mustOK("import os\nresult = dict(os.environ)", &env)
	all := fmt.Sprint(env)
	for _, secret := range []string{"db-pass-s3cret", "jwt-s3cret", "admin-s3cret", "tok-s3cret", strconv.Itoa(s.redisPort), path} {
		if strings.Contains(all, secret) {
			t.Errorf("user code sees %q in its environment: %v", secret, env)
		}
	}
	if env["VISIBLE_TO_USER"] != "yes" {
		t.Errorf("passthrough variable missing: %v", env)
	}
	// The logs do not carry the secrets either.
	for _, p := range append(s.workers, s.api) {
		b, _ := readFile(p.log)
		for _, secret := range []string{"db-pass-s3cret", "jwt-s3cret", "admin-s3cret", "tok-s3cret"} {
			if strings.Contains(b, secret) {
				t.Errorf("%s log contains %q", p.name, secret)
			}
		}
	}
}

// TestKlineCache: a repeated range is a cache hit, and a candle written to
// the database after it was cached is in the next run's frame.
func TestKlineCache(t *testing.T) {
	dir := reachableTempDir(t)
	db, _ := demoSQLite(t, dir)
	s := startStack(t, stackOpts{workers: 1, dbEnv: map[string]string{"PYRUNNER_READONLY_TYPE": "sqlite", "PYRUNNER_READONLY_URI": db}})
	code := "result = {'rows': len(df), 'last': int(df.start.iloc[-1]), 'close': float(df.close.iloc[-1]), 'prev': float(df.close.iloc[-2])}"
	extra := map[string]any{"start": seedStart, "end": seedStart + 10*86400}
	run := func() (map[string]any, string) {
		st, r := s.research(code, extra)
		var got map[string]any
		if st != 200 || !r.ok() || json.Unmarshal(r.Result, &got) != nil {
			t.Fatalf("research: %d %q", st, r.errText())
		}
		return got, fmt.Sprint(r.Meta["klineCache"])
	}
	first, c1 := run()
	second, c2 := run()
	if c1 != "miss" || c2 != "hit" || fmt.Sprint(first) != fmt.Sprint(second) {
		t.Fatalf("repeat: %s %v then %s %v", c1, first, c2, second)
	}
	w, err := demodata.OpenWriter("sqlite", db)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	last := int64(first["last"].(float64))
	if err := w.Exec(context.Background(), "UPDATE `binance_BTCUSDT_1m` SET close = 12345 WHERE start = ?", last); err != nil {
		t.Fatal(err)
	}
	nf := &frame.Frame{}
	nf.Append(last+60, 1, 2, 0.5, 54321, 1, 10, 1)
	if err := w.Insert(context.Background(), "binance_BTCUSDT_1m", nf, true); err != nil {
		t.Fatal(err)
	}
	third, c3 := run()
	// The appended candle is there, and so is the update of the one that
	// was newest when the range was cached.
	if c3 != "hit" || third["rows"] != first["rows"].(float64)+1 || int64(third["last"].(float64)) != last+60 ||
		third["close"] != 54321.0 || third["prev"] != 12345.0 {
		t.Errorf("after new candles: %s %v (first %v)", c3, third, first)
	}
}

// TestLargeFrameShared: a frame of frame.ShareRows rows or more reaches
// user code as a memory file mapped copy-on-write: the values are right,
// user code may write to its DataFrame, and what it writes never reaches
// the worker's cached copy (the next run sees the table as it is), warm
// and cold.
func TestLargeFrameShared(t *testing.T) {
	dir := reachableTempDir(t)
	db := filepath.Join(dir, "big.db")
	w, err := demodata.OpenWriter("sqlite", db)
	if err != nil {
		t.Fatal(err)
	}
	const rows = 150_000
	f := demodata.Generate(demodata.DemoMarkets[0], seedStart, rows, 3)
	err = w.CreateTable(context.Background(), "binance_BTCUSDT_1m", true)
	if err == nil {
		err = w.Insert(context.Background(), "binance_BTCUSDT_1m", f, true)
	}
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	want := 0.0
	for _, c := range f.Close {
		want += c
	}
	for _, mode := range []string{"warm", "cold"} {
		t.Run(mode, func(t *testing.T) {
			s := startStack(t, stackOpts{workers: 1, env: map[string]string{"PYRUNNER_EXECUTOR": mode},
				dbEnv: map[string]string{"PYRUNNER_READONLY_TYPE": "sqlite", "PYRUNNER_READONLY_URI": db}})
			extra := map[string]any{"start": seedStart, "end": seedStart + rows*60, "limit": rows}
			for i := 0; i < 3; i++ {
				st, r := s.research(`import pandas as pd
s = float(df.close.sum())
mapped = any("memfd:pyrunner-frame" in line for line in open("/proc/self/maps"))
def times_ok(d):
    return float(len(d) > 0 and (d.time == pd.to_datetime(d.start, unit="s", utc=True)).all())
mid = load_kline("binance", "BTCUSDT", "1m", `+fmt.Sprint(seedStart+1000*60)+`, `+fmt.Sprint(seedStart+rows*60)+`)
times = times_ok(df) + times_ok(mid) + float(mid.start.iloc[0] == `+fmt.Sprint(seedStart+1000*60)+`)
df.loc[:, "close"] = 0.0
df["open"] *= 2
result = {"rows": len(df), "sum": s, "after": float(df.close.sum()), "mapped": float(mapped), "times": times,
          "other": float(load_kline("binance", "BTCUSDT", "1m", `+fmt.Sprint(seedStart)+`, `+fmt.Sprint(seedStart+rows*60)+`).close.sum())}`, extra)
				var got map[string]float64
				if st != 200 || !r.ok() || json.Unmarshal(r.Result, &got) != nil {
					t.Fatalf("run %d: %d %q", i, st, r.errText())
				}
				if got["rows"] != rows || math.Abs(got["sum"]-want) > 1e-6*want || got["after"] != 0 || math.Abs(got["other"]-want) > 1e-6*want {
					t.Errorf("run %d: %v (want sum %.2f)", i, got, want)
				}
				if got["mapped"] != 1 {
					t.Errorf("run %d: the frame is not a mapped memory file in the run", i)
				}
				if got["times"] != 3 {
					t.Errorf("run %d: df.time or a later range's time is not start as UTC datetimes (%v of 3 checks)", i, got["times"])
				}
				if cache := fmt.Sprint(r.Meta["klineCache"]); i > 0 && cache != "hit" {
					t.Errorf("run %d: klineCache %s", i, cache)
				}
			}
		})
	}
}

// TestReadyChildrenKilled: the warm zygote's ready children (forked ahead
// of the runs, waiting for one) are SIGKILLed; the next run over HTTP
// succeeds at once on a replacement, and the zygote lives on.
func TestReadyChildrenKilled(t *testing.T) {
	s := startStack(t, stackOpts{workers: 1})
	if s.mode != "warm" {
		t.Skip("only the warm executor forks children ahead")
	}
	zygote := 0
	waitUntil(t, 30*time.Second, "the zygote and its ready children", func() bool {
		zygote = descendant(s.workers[0].cmd.Process.Pid, "zygote.py")
		return zygote != 0 && len(childrenOf(zygote)) >= 2
	})
	ready := childrenOf(zygote)
	for _, pid := range ready {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	var n int
	s.mustOK("result = len(df)", &n)
	if n != 1441 {
		t.Errorf("rows %d, want 1441", n)
	}
	waitUntil(t, 30*time.Second, "new ready children", func() bool {
		now := childrenOf(zygote)
		return len(now) >= 2 && !slices.ContainsFunc(now, func(p int) bool { return slices.Contains(ready, p) })
	})
	if now := descendant(s.workers[0].cmd.Process.Pid, "zygote.py"); now != zygote {
		t.Errorf("the zygote is now %d, was %d: it should have lived on", now, zygote)
	}
}

// TestWorkerNotReadyTakesNoRuns: a worker whose zygote dies starts a new
// one at once, not when a run arrives; until it is up, /health says the
// worker is not ready and the worker takes no research run: the other
// worker runs them all. The new zygote is frozen (SIGSTOP) before it is
// ready, so "until it is up" lasts as long as the test needs.
func TestWorkerNotReadyTakesNoRuns(t *testing.T) {
	s := startStack(t, stackOpts{workers: 2})
	if s.mode != "warm" {
		t.Skip("only the warm executor has a zygote to wait for")
	}
	a, b := s.workers[0].cmd.Process.Pid, s.workers[1].cmd.Process.Pid
	// ready is worker a's "ready" in /health, and whether /health lists a.
	ready := func() (bool, bool) {
		var h struct {
			Workers []store.WorkerInfo `json:"workers"`
		}
		s.getJSON("/health", &h)
		for _, w := range h.Workers {
			if w.PID == a {
				return w.Ready, true
			}
		}
		return false, false
	}
	waitUntil(t, 30*time.Second, "/health saying worker a is ready", func() bool { r, _ := ready(); return r })
	frozen := 0
	defer func() {
		if frozen != 0 {
			syscall.Kill(frozen, syscall.SIGCONT)
		}
	}()
	// Kill a's zygote and freeze the one that replaces it before it gets
	// ready; should it get ready first (a very fast start), kill that one.
	for try := 0; frozen == 0; try++ {
		if try == 3 {
			t.Fatal("each new zygote got ready before it could be frozen")
		}
		old := descendant(a, "zygote.py")
		if old == 0 {
			t.Fatal("worker a has no zygote")
		}
		if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		next := 0
		waitUntil(t, 30*time.Second, "a new zygote, started with no run asking for it", func() bool {
			next = descendant(a, "zygote.py")
			return next != 0 && next != old
		})
		if err := syscall.Kill(next, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if r, listed := ready(); listed && !r {
				frozen = next
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if frozen == 0 {
			syscall.Kill(next, syscall.SIGCONT)
		}
	}
	// Worker a is not ready: every run goes to b, none waits on a.
	for i := 0; i < 6; i++ {
		r := s.mustOK("result = len(df)", nil)
		if w := fmt.Sprint(r.Meta["worker"]); !strings.HasSuffix(w, ":"+strconv.Itoa(b)) {
			t.Errorf("run %d ran on %s while worker a (pid %d) was not ready; want worker b (pid %d)", i, w, a, b)
		}
	}
	if r, listed := ready(); !listed || r {
		t.Errorf("/health: worker a listed %v, ready %v; want listed and not ready while its zygote is frozen", listed, r)
	}
	// Thawed, the zygote gets ready and a is ready again.
	syscall.Kill(frozen, syscall.SIGCONT)
	frozen = 0
	waitUntil(t, 30*time.Second, "/health saying worker a is ready again", func() bool { r, _ := ready(); return r })
}

// childrenOf lists a process's children (those of all its threads).
func childrenOf(pid int) []int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, task := range tasks {
		b, _ := os.ReadFile(task)
		for _, f := range strings.Fields(string(b)) {
			if p, err := strconv.Atoi(f); err == nil {
				out = append(out, p)
			}
		}
	}
	return out
}

// descendant is the first python process under pid (depth first) whose
// command line contains marker, or 0.
func descendant(pid int, marker string) int {
	for _, c := range childrenOf(pid) {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c))
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", c)); strings.HasPrefix(string(comm), "python") && strings.Contains(string(b), marker) {
			return c
		}
		if d := descendant(c, marker); d != 0 {
			return d
		}
	}
	return 0
}
