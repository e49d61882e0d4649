package executor

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/ztrade/pyrunner/pkg/frame"
)

// testBundle holds an executor on the machine's Python with pandas.
type testBundle struct {
	exec Executor
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	py, err := FindPython("")
	if err != nil {
		t.Fatalf("need a Python with numpy and pandas: %v", err)
	}
	e, err := NewCold(Options{Python: py, WorkDir: t.TempDir(), Limits: Limits{MaxOutputBytes: 1 << 20, MaxImages: 3, MaxImageBytes: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	return &testBundle{exec: e}
}

func sampleFrame(n int) *frame.Frame {
	f := &frame.Frame{}
	for i := 0; i < n; i++ {
		f.Append(int64(1735689600+60*i), 1, 2, 0.5, 1.5, 10, frame.NaN, int64(i))
	}
	return f
}

func (b *testBundle) run(t *testing.T, code string, timeout time.Duration) *Output {
	t.Helper()
	out, err := b.exec.Run(context.Background(), Job{RunID: "t", Code: code, Timeout: timeout, Frame: sampleFrame(5),
		LoadKline: func(ctx context.Context, r LoadRequest) (*frame.Frame, error) { return sampleFrame(int(r.Limit)), nil }})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestResultAndDataFrame(t *testing.T) {
	b := setup(t)
	out := b.run(t, `result = {"rows": len(df), "cols": list(df.columns), "dtypes": [str(d) for d in df.dtypes],
"other": len(load_kline("x", "y", "1m", 0, 1, limit=7)), "nan": float("nan"), "arr": np.arange(3), "t": df.time.iloc[0]}
print("hello")`, 10*time.Second)
	if !out.OK {
		t.Fatalf("not ok: %s\n%s", out.Error, out.Stderr)
	}
	var r map[string]any
	json.Unmarshal(out.Result, &r)
	if r["rows"].(float64) != 5 || r["other"].(float64) != 7 || r["nan"] != nil || r["t"] != "2025-01-01T00:00:00+00:00" {
		t.Errorf("result = %s", out.Result)
	}
	if got := strings.Join(toStrings(r["dtypes"]), ","); got != "int64,float64,float64,float64,float64,float64,float64,int64,datetime64[ns, UTC]" {
		t.Errorf("dtypes = %s", got)
	}
	if out.Stdout != "hello\n" {
		t.Errorf("stdout = %q", out.Stdout)
	}
}

func toStrings(v any) (s []string) {
	for _, x := range v.([]any) {
		s = append(s, x.(string))
	}
	return
}

func TestUserExceptionAndTimeout(t *testing.T) {
	b := setup(t)
	out := b.run(t, "x = 1\ny = x / 0\n", 10*time.Second)
	if out.OK || out.Error != "ZeroDivisionError: division by zero" || !strings.Contains(out.Stderr, `File "<user_code>", line 2`) {
		t.Errorf("ok=%v error=%q stderr=%q", out.OK, out.Error, out.Stderr)
	}
	out = b.run(t, "print('before', flush=True)\nwhile True: pass", 1*time.Second)
	if out.OK || !out.TimedOut || out.Error != "timeout after 1s" || out.Stdout != "before\n" {
		t.Errorf("timeout: %+v", out)
	}
	// stuck outside the interpreter loop: the hard kill still ends it
	out = b.run(t, "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nimport time\ntime.sleep(30)", 1*time.Second)
	if out.OK || !out.TimedOut || out.Error != "timeout after 1s" {
		t.Errorf("hard timeout: %+v", out)
	}
}

func TestOutputCapIsFlagged(t *testing.T) {
	b := setup(t)
	out := b.run(t, "import sys\nsys.stdout.write('é' * 2_000_000)", 20*time.Second)
	if !out.OK || !out.StdoutTruncated || len(out.Stdout) > 1<<20 || len(out.Stdout) < 1<<20-4 || !strings.HasSuffix(out.Stdout, "é") {
		t.Errorf("ok=%v truncated=%v len=%d", out.OK, out.StdoutTruncated, len(out.Stdout))
	}
}
