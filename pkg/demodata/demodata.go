// Package demodata writes K-line tables in ztrade's exact schema: the demo
// data (cmd/pyrunner-demodata) and the tables tests and benchmarks read.
// It is the only package that writes K-lines; pyrunner itself (pkg/kline)
// only reads.
package demodata

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"regexp"
	"strings"

	"gorm.io/driver/mysql"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/ztrade/pyrunner/pkg/frame"
	"github.com/ztrade/pyrunner/pkg/kline"
)

// Writer creates and fills K-line tables in ztrade's exact schema. It is
// for the demo data generator and for tests; pyrunner itself only reads.
type Writer struct {
	gorm *gorm.DB
	typ  string
}

// OpenWriter connects read-write to a SQLite file (created if missing) or
// a MySQL DSN.
func OpenWriter(typ, dsn string) (*Writer, error) {
	var dial gorm.Dialector
	switch typ {
	case "sqlite":
		dial = sqlite.Open("file:" + strings.TrimPrefix(dsn, "file:") + "?_synchronous=OFF")
	case "mysql":
		dial = mysql.Open(dsn)
	default:
		return nil, fmt.Errorf("demodata: unknown database type %q", typ)
	}
	g, err := gorm.Open(dial, &gorm.Config{Logger: logger.Discard, SkipDefaultTransaction: true})
	if err != nil {
		return nil, fmt.Errorf("demodata: open %s for writing: %w", typ, err)
	}
	return &Writer{gorm: g, typ: typ}, nil
}

// Close releases the connection.
func (w *Writer) Close() error {
	s, err := w.gorm.DB()
	if err != nil {
		return err
	}
	return s.Close()
}

// Exec runs a statement (tests use it to set up users and odd tables).
func (w *Writer) Exec(ctx context.Context, q string, args ...any) error {
	return w.gorm.WithContext(ctx).Exec(q, args...).Error
}

// Count is the number of rows in table (an error if there is no table).
func (w *Writer) Count(ctx context.Context, table string) (int64, error) {
	var n int64
	err := w.gorm.WithContext(ctx).Raw("SELECT COUNT(*) FROM `" + table + "`").Scan(&n).Error
	return n, err
}

var identifier = regexp.MustCompile(`^[A-Za-z0-9_]{1,64}$`)

// GrantReadOnly (MySQL) creates user, or resets its password, allowed
// from any host to SELECT from the connection's database and nothing
// else; it returns that database's name.
func (w *Writer) GrantReadOnly(ctx context.Context, user, password string) (string, error) {
	var db string
	if err := w.gorm.WithContext(ctx).Raw("SELECT DATABASE()").Scan(&db).Error; err != nil {
		return "", fmt.Errorf("demodata: which database: %w", err)
	}
	if !identifier.MatchString(user) || !identifier.MatchString(db) {
		return "", fmt.Errorf("demodata: user %q and database %q must be letters, digits and _", user, db)
	}
	// IDENTIFIED BY takes no placeholder: the password is a quoted literal.
	pw := "'" + strings.NewReplacer(`\`, `\\`, "'", "''").Replace(password) + "'"
	for _, q := range []string{
		"CREATE USER IF NOT EXISTS '" + user + "'@'%' IDENTIFIED BY " + pw,
		"ALTER USER '" + user + "'@'%' IDENTIFIED BY " + pw,
		"GRANT SELECT ON `" + db + "`.* TO '" + user + "'@'%'",
	} {
		if err := w.Exec(ctx, q); err != nil {
			return "", fmt.Errorf("demodata: read-only user %s: %w", user, err)
		}
	}
	return db, nil
}

// CreateTable (re)creates a market table with ztrade's DDL. Older ztrade
// tables lack turnover; withTurnover=false makes one of those.
func (w *Writer) CreateTable(ctx context.Context, table string, withTurnover bool) error {
	g := w.gorm.WithContext(ctx)
	if err := g.Exec("DROP TABLE IF EXISTS `" + table + "`").Error; err != nil {
		return fmt.Errorf("demodata: drop %s: %w", table, err)
	}
	var ddl []string
	if w.typ == "mysql" {
		turnover := ""
		if withTurnover {
			turnover = "`turnover` DOUBLE NULL, "
		}
		ddl = []string{"CREATE TABLE `" + table + "` (`id` BIGINT PRIMARY KEY AUTO_INCREMENT NOT NULL, `start` BIGINT NULL, " +
			"`open` DOUBLE NOT NULL, `high` DOUBLE NOT NULL, `low` DOUBLE NOT NULL, `close` DOUBLE NOT NULL, `volume` DOUBLE NOT NULL, " +
			turnover + "`trades` BIGINT NOT NULL, UNIQUE KEY `UQE_" + table + "_start` (`start`)) DEFAULT CHARSET=utf8mb4"}
	} else {
		turnover := ""
		if withTurnover {
			turnover = "`turnover` REAL NULL, "
		}
		ddl = []string{"CREATE TABLE `" + table + "` (`id` INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, `start` INTEGER NULL, " +
			"`open` REAL NOT NULL, `high` REAL NOT NULL, `low` REAL NOT NULL, `close` REAL NOT NULL, `volume` REAL NOT NULL, " +
			turnover + "`trades` INTEGER NOT NULL)",
			"CREATE UNIQUE INDEX `UQE_" + table + "_start` ON `" + table + "` (`start`)"}
	}
	for _, s := range ddl {
		if err := g.Exec(s).Error; err != nil {
			return fmt.Errorf("demodata: create %s: %w", table, err)
		}
	}
	return nil
}

// Insert writes f's rows in batches inside one transaction. NaN turnover
// is written as NULL; withTurnover=false leaves the column out.
func (w *Writer) Insert(ctx context.Context, table string, f *frame.Frame, withTurnover bool) error {
	const batch = 500
	cols := "`start`,`open`,`high`,`low`,`close`,`volume`,`turnover`,`trades`"
	ph := "(?,?,?,?,?,?,?,?)"
	if !withTurnover {
		cols = "`start`,`open`,`high`,`low`,`close`,`volume`,`trades`"
		ph = "(?,?,?,?,?,?,?)"
	}
	return w.gorm.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		for lo := 0; lo < f.Len(); lo += batch {
			hi := min(lo+batch, f.Len())
			var sb strings.Builder
			sb.WriteString("INSERT INTO `" + table + "` (" + cols + ") VALUES ")
			args := make([]any, 0, (hi-lo)*8)
			for i := lo; i < hi; i++ {
				if i > lo {
					sb.WriteByte(',')
				}
				sb.WriteString(ph)
				var to any
				if !math.IsNaN(f.Turnover[i]) {
					to = f.Turnover[i]
				}
				args = append(args, f.Start[i], f.Open[i], f.High[i], f.Low[i], f.Close[i], f.Volume[i])
				if withTurnover {
					args = append(args, to)
				}
				args = append(args, f.Trades[i])
			}
			if err := tx.Exec(sb.String(), args...).Error; err != nil {
				return fmt.Errorf("demodata: insert into %s: %w", table, err)
			}
		}
		return nil
	})
}

// Market is one synthetic market of the demo data set.
type Market struct {
	Exchange, Symbol string
	Price            float64 // starting price
	// NoTurnover makes an old-style table without the turnover column.
	NoTurnover bool
	// NullTurnoverEvery leaves turnover NULL on every n-th candle (0: never).
	NullTurnoverEvery int
}

// DemoMarkets are the markets `make run` serves.
var DemoMarkets = []Market{
	{Exchange: "binance", Symbol: "BTCUSDT", Price: 94000},
	{Exchange: "binance", Symbol: "ETHUSDT", Price: 3400},
	{Exchange: "okx", Symbol: "BTC-USDT-SWAP", Price: 94050, NullTurnoverEvery: 97},
	{Exchange: "bitmex", Symbol: "XBTUSD", Price: 93900, NoTurnover: true},
}

// Generate makes n one-minute candles from start (unix s, aligned to the
// minute): a geometric random walk with volatility clustering and a daily
// volume cycle, deterministic for a given seed.
func Generate(m Market, start int64, n int, seed uint64) *frame.Frame {
	r := rand.New(rand.NewPCG(seed, uint64(len(m.Symbol))))
	f := &frame.Frame{}
	f.Grow(n)
	price, vol := m.Price, 0.0006
	for i := 0; i < n; i++ {
		t := start + int64(i)*60
		vol = math.Max(0.0002, math.Min(0.004, vol*math.Exp(r.NormFloat64()*0.05)+0.00001*(0.0006-vol)*100))
		open := price
		closeP := open * math.Exp(r.NormFloat64()*vol)
		high := math.Max(open, closeP) * (1 + math.Abs(r.NormFloat64())*vol/2)
		low := math.Min(open, closeP) * (1 - math.Abs(r.NormFloat64())*vol/2)
		hour := float64((t / 3600) % 24)
		volume := (5 + 3*math.Sin(hour/24*2*math.Pi)) * (1 + r.ExpFloat64()) * 100000 / m.Price
		turnover := volume * (open + closeP) / 2
		if m.NullTurnoverEvery > 0 && i%m.NullTurnoverEvery == 0 {
			turnover = math.NaN()
		}
		trades := int64(volume*m.Price/2000) + int64(r.IntN(50))
		round := func(x float64) float64 { return math.Round(x*100) / 100 }
		f.Append(t, round(open), round(high), round(low), round(closeP), math.Round(volume*1e6)/1e6, turnover, trades)
		price = closeP
	}
	return f
}

// WriteDemo creates every demo market's 1m table with days of candles
// from start.
func (w *Writer) WriteDemo(ctx context.Context, start int64, days int) error {
	for i, m := range DemoMarkets {
		table := kline.TableName(m.Exchange, m.Symbol, "1m")
		f := Generate(m, start, days*1440, uint64(i+1))
		if err := w.CreateTable(ctx, table, !m.NoTurnover); err != nil {
			return err
		}
		if err := w.Insert(ctx, table, f, !m.NoTurnover); err != nil {
			return err
		}
	}
	return nil
}
