package research

import (
	"testing"
	"time"

	"github.com/ztrade/pyrunner/pkg/run"
)

func TestNormalizeDefaultsAndCaps(t *testing.T) {
	l := Limits{MaxCodeBytes: 10, DefaultTimeoutSec: 60, MaxTimeoutSec: 600, MaxRows: 1000}
	r := Request{Exchange: "okx", Symbol: "BTC-USDT-SWAP", BinSize: "1m", Start: 5, Code: "x=1", TimeoutSec: 9999, Limit: 5000}
	w, err := r.Normalize(l, time.Unix(100, 0))
	if err != nil || r.End != 100 || r.TimeoutSec != 600 || r.Limit != 1000 || len(w) != 2 {
		t.Fatalf("%+v %v %v", r, w, err)
	}
	r = Request{Exchange: "okx", Symbol: "X", BinSize: "5m", Code: "01234567890"}
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
