package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/ztrade/pyrunner/pkg/demodata"
	"github.com/ztrade/pyrunner/pkg/kline/mysqltest"
)

// TestResearchMySQL: the seed's example against MariaDB through a real
// read-only user, and the user's password never reaches user code.
func TestResearchMySQL(t *testing.T) {
	d := mysqltest.New(t)
	if err := d.Admin.WriteDemo(context.Background(), dataFrom, dataDays); err != nil {
		t.Fatal(err)
	}
	s := startStack(t, stackOpts{dbEnv: d.Env()})
	written := demodata.Generate(demodata.DemoMarkets[0], dataFrom, dataDays*1440, 1)
	testSeedExample(t, s, written, "mysql")
	var got struct {
		Rows     int   `json:"rows"`
		NullTurn int   `json:"null_turnover"`
		Env      bool  `json:"env_has_password"`
		Many     []int `json:"many"`
		Same     bool  `json:"same"`
	}
	s.mustOK(`import os
x = load_kline("okx", "BTC-USDT-SWAP", "1h", 1735689600, 1735776000)
many = load_klines([("okx", "BTC-USDT-SWAP"), ("binance", "BTCUSDT"), ("binance", "ETHUSDT")], "1h", 1735689600, 1735776000)
result = {"rows": len(x), "null_turnover": int(x.turnover.isna().sum()),
          "many": [len(f) for f in many.values()], "same": bool(many[("okx", "BTC-USDT-SWAP")].equals(x)),
          "env_has_password": any("`+d.Password+`" in v for v in os.environ.values())}`, &got)
	if got.Rows != 24 || got.NullTurn != 0 || got.Env || fmt.Sprint(got.Many) != "[24 24 24]" || !got.Same {
		t.Errorf("okx 1h from MariaDB: %+v", got)
	}
	for _, p := range append(s.workers, s.api) {
		if b, _ := readFile(p.log); strings.Contains(b, d.Password) {
			t.Errorf("%s log holds the DB password", p.name)
		}
	}
}
