package research

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ztrade/pyrunner/pkg/run"
	"github.com/ztrade/pyrunner/pkg/wire"
)

func TestNormalizeDefaultsAndCaps(t *testing.T) {
	l := Limits{MaxCodeBytes: 10, DefaultTimeoutSec: 60, MaxTimeoutSec: 600, MaxRows: 1000}
	r := Request{ResearchRequest: wire.ResearchRequest{Market: wire.Market{Exchange: "okx", Symbol: "BTC-USDT-SWAP", BinSize: "1m",
		Start: 5, Limit: 5000}, Code: "x=1", TimeoutSec: 9999}}
	w, err := r.Normalize(l, time.Unix(100, 0))
	if err != nil || r.End != 100 || r.TimeoutSec != 600 || r.Limit != 1000 || len(w) != 2 {
		t.Fatalf("%+v %v %v", r, w, err)
	}
	r = Request{ResearchRequest: wire.ResearchRequest{Market: wire.Market{Exchange: "okx", Symbol: "X", BinSize: "5m"}, Code: "01234567890"}}
	if _, err := r.Normalize(l, time.Now()); run.ErrorCode(err) != run.ECodeTooLarge {
		t.Errorf("long code: %v", err)
	}
}

func TestValidateMarket(t *testing.T) {
	if err := ValidateMarket("okx", "BTC-USDT_1", "1h"); err != nil {
		t.Error(err)
	}
	for _, c := range [][3]string{{"a b", "X", "1m"}, {"a", "X;", "1m"}, {"a", "X", "1y"}, {"a`", "X", "1m"}} {
		if err := ValidateMarket(c[0], c[1], c[2]); run.ErrorCode(err) != run.ECodeInvalid {
			t.Errorf("%v accepted", c)
		}
	}
}

// TestLenientBody: python-runner's pydantic model takes numbers as numeric
// strings or integral floats and binSize may be left out; start and end
// may not.
func TestLenientBody(t *testing.T) {
	l := Limits{DefaultTimeoutSec: 60, MaxTimeoutSec: 600, MaxRows: 1000}
	var r Request
	if err := json.Unmarshal([]byte(`{"exchange":"binance","symbol":"BTCUSDT","start":"1735689600","end":1735776000.0,"limit":"10","timeoutSec":10.0,"code":"x"}`), &r); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Normalize(l, time.Now()); err != nil || r.BinSize != "1m" || r.Start != 1735689600 || r.End != 1735776000 || r.Limit != 10 || r.TimeoutSec != 10 {
		t.Errorf("lenient body: %+v %v", r, err)
	}
	for body, want := range map[string]string{
		`{"exchange":"b","symbol":"S","end":1,"code":"x"}`:                        "start is required",
		`{"exchange":"b","symbol":"S","start":1,"code":"x"}`:                      "end is required",
		`{"exchange":"b","symbol":"S","start":null,"code":"x"}`:                   "start and end are required",
		`{"exchange":"b","symbol":"S","binSize":"","start":1,"end":2,"code":"x"}`: "binSize is required",
	} {
		var r Request
		if err := json.Unmarshal([]byte(body), &r); err != nil {
			t.Fatalf("%s: %v", body, err)
		}
		if _, err := r.Normalize(l, time.Now()); run.ErrorCode(err) != run.ECodeInvalid || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", body, err, want)
		}
	}
	for _, body := range []string{`{"start":1.5}`, `{"start":"abc"}`, `{"limit":"1e400"}`, `{"timeoutSec":true}`} {
		var r Request
		if err := json.Unmarshal([]byte(body), &r); run.ErrorCode(err) != run.ECodeInvalid {
			t.Errorf("%s: %v", body, err)
		}
	}
}

// TestREADMESaysTheEnvironment: the README's paragraph on what research
// code sees is environment.md, word for word (the MCP resource serves it).
func TestREADMESaysTheEnvironment(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	norm := func(s string) string { return strings.Join(strings.Fields(s), " ") }
	if !strings.Contains(norm(string(readme)), norm(Environment)) {
		t.Errorf("README.md does not say what pkg/research/environment.md says:\n%s", Environment)
	}
}
