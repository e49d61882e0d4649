// Command pyrunner-demodata writes realistic synthetic K-lines in ztrade's
// exact schema, to a SQLite file or a MySQL database:
//
//	pyrunner-demodata --sqlite data/exchange.db
//	pyrunner-demodata --mysql 'root:@tcp(127.0.0.1:3306)/ztrade' --days 7
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/ztrade/pyrunner/pkg/kline"
)

func main() {
	sqlitePath := flag.String("sqlite", "", "SQLite file to (re)create the demo tables in")
	mysqlDSN := flag.String("mysql", "", "MySQL DSN to (re)create the demo tables in")
	from := flag.Int64("from", 1733011200, "first candle, unix seconds (default 2024-12-01T00:00:00Z)")
	days := flag.Int("days", 62, "days of 1m candles per market")
	flag.Parse()
	typ, dsn := "sqlite", *sqlitePath
	if *mysqlDSN != "" {
		typ, dsn = "mysql", *mysqlDSN
	}
	if dsn == "" {
		fmt.Fprintln(os.Stderr, "pyrunner-demodata: give --sqlite FILE or --mysql DSN")
		os.Exit(2)
	}
	t0 := time.Now()
	w, err := kline.OpenWriter(typ, dsn)
	if err == nil {
		err = w.WriteDemo(context.Background(), *from, *days)
		w.Close()
	}
	if err != nil {
		slog.Error("demo data failed", "err", err)
		os.Exit(1)
	}
	for _, m := range kline.DemoMarkets {
		fmt.Printf("wrote %s (%d candles)\n", kline.TableName(m.Exchange, m.Symbol, "1m"), *days*1440)
	}
	slog.Info("demo data written", "db_type", typ, "markets", len(kline.DemoMarkets), "days", *days, "elapsed_ms", time.Since(t0).Milliseconds())
}
