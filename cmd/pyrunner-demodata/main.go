// Command pyrunner-demodata writes realistic synthetic K-lines in ztrade's
// exact schema, to a SQLite file or a MySQL database:
//
//	pyrunner-demodata --sqlite data/exchange.db
//	pyrunner-demodata --mysql 'root:@tcp(127.0.0.1:3306)/ztrade' --days 7
//
// The compose deployment runs it at every start with --if-missing (a
// complete demo is left alone; a SQLite file appears whole, by rename)
// and, for its MySQL, --readonly-user: a user that may only SELECT, whose
// password is read from PYRUNNER_DEMO_READONLY_PASSWORD.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/ztrade/pyrunner/pkg/demodata"
	"github.com/ztrade/pyrunner/pkg/kline"
)

func main() {
	if err := run(); err != nil {
		slog.Error("demo data failed", "err", err)
		os.Exit(1)
	}
}

func run() error {
	sqlitePath := flag.String("sqlite", "", "SQLite file to (re)create the demo tables in")
	mysqlDSN := flag.String("mysql", "", "MySQL DSN to (re)create the demo tables in")
	from := flag.Int64("from", 1733011200, "first candle, unix seconds (default 2024-12-01T00:00:00Z)")
	days := flag.Int("days", 62, "days of 1m candles per market")
	ifMissing := flag.Bool("if-missing", false, "leave a complete demo as it is")
	roUser := flag.String("readonly-user", "", "MySQL: also create this user with SELECT only on the database (password from $PYRUNNER_DEMO_READONLY_PASSWORD)")
	flag.Parse()
	typ, dsn := "sqlite", *sqlitePath
	if *mysqlDSN != "" {
		typ, dsn = "mysql", *mysqlDSN
	}
	if dsn == "" {
		return errors.New("give --sqlite FILE or --mysql DSN")
	}
	if *roUser != "" && typ != "mysql" {
		return errors.New("--readonly-user is for --mysql")
	}
	ctx := context.Background()
	t0 := time.Now()
	if typ == "sqlite" {
		if _, err := os.Stat(dsn); err == nil && *ifMissing {
			slog.Info("demo data already there", "db_type", typ, "path", dsn)
			return nil
		}
		// Written aside and renamed: a reader never sees half a file.
		tmp := dsn + ".part"
		if err := os.Remove(tmp); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("remove %s: %w", tmp, err)
		}
		if err := write(ctx, typ, tmp, *from, *days, false); err != nil {
			return err
		}
		if err := os.Rename(tmp, dsn); err != nil {
			return fmt.Errorf("rename %s: %w", tmp, err)
		}
	} else if err := write(ctx, typ, dsn, *from, *days, *ifMissing); err != nil {
		return err
	}
	if *roUser != "" {
		if err := readonlyUser(ctx, dsn, *roUser, os.Getenv("PYRUNNER_DEMO_READONLY_PASSWORD")); err != nil {
			return err
		}
	}
	slog.Info("demo data ready", "db_type", typ, "markets", len(demodata.DemoMarkets), "days", *days, "elapsed_ms", time.Since(t0).Milliseconds())
	return nil
}

// write writes the demo markets, or with ifMissing leaves them when the
// last one is complete.
func write(ctx context.Context, typ, dsn string, from int64, days int, ifMissing bool) error {
	w, err := demodata.OpenWriter(typ, dsn)
	if err != nil {
		return err
	}
	defer w.Close()
	if ifMissing {
		last := demodata.DemoMarkets[len(demodata.DemoMarkets)-1]
		if n, err := w.Count(ctx, kline.TableName(last.Exchange, last.Symbol, "1m")); err == nil && n == int64(days*1440) {
			slog.Info("demo data already there", "db_type", typ)
			return nil
		}
	}
	if err := w.WriteDemo(ctx, from, days); err != nil {
		return err
	}
	for _, m := range demodata.DemoMarkets {
		fmt.Printf("wrote %s (%d candles)\n", kline.TableName(m.Exchange, m.Symbol, "1m"), days*1440)
	}
	return nil
}

// readonlyUser creates (or resets) user with password, allowed only to
// SELECT from the DSN's database.
func readonlyUser(ctx context.Context, dsn, user, password string) error {
	if password == "" {
		return errors.New("--readonly-user needs PYRUNNER_DEMO_READONLY_PASSWORD")
	}
	w, err := demodata.OpenWriter("mysql", dsn)
	if err != nil {
		return err
	}
	defer w.Close()
	db, err := w.GrantReadOnly(ctx, user, password)
	if err != nil {
		return err
	}
	slog.Info("read-only user ready", "user", user, "database", db, "grants", "SELECT")
	return nil
}
