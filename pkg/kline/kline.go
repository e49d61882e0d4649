// Package kline reads ztrade's K-line tables through a read-only GORM
// connection and hands them out as columnar frames.
//
// ztrade keeps one table per market, named `<exchange>_<symbol>_<binSize>`
// (binance_BTCUSDT_1m, okx_BTC-USDT-SWAP_1m), with the candle open time in
// unix seconds in `start`. When the exact table is missing but a finer one
// of the same market exists, Load resamples it the way ztrade's KlineMerge
// does. Only this package imports GORM and the SQL drivers.
package kline

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"gorm.io/driver/mysql"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/ztrade/pyrunner/pkg/config"
	"github.com/ztrade/pyrunner/pkg/frame"
	"github.com/ztrade/pyrunner/pkg/kline/binsize"
	"github.com/ztrade/pyrunner/pkg/run"
)

// Config is ztrade's db.readonly section (see config.ReadonlyDB).
type Config = config.ReadonlyDB

// DB is a read-only K-line source.
type DB struct {
	gorm    *gorm.DB
	typ     string
	maxRows int64
	// tables caches markets that exist, with whether they have turnover.
	mu     sync.Mutex
	tables map[string]tableInfo
	cache  *Cache // nil: every load reads the database
}

// UseCache serves loads through c (see Cache).
func (d *DB) UseCache(c *Cache) { d.cache = c }

type tableInfo struct {
	hasTurnover bool
	hasID       bool // ztrade's id column (its primary key), which scanTable reads MySQL in
	seen        time.Time
}

// Open connects read-only: SQLite as mode=ro with query_only, MySQL with a
// read-only session. maxRows caps every load.
func Open(c Config, maxRows int64) (*DB, error) {
	if m := c.Missing(); m != "" {
		return nil, fmt.Errorf("kline: %s", m)
	}
	typ := c.DBType()
	var dial gorm.Dialector
	switch typ {
	case "sqlite":
		dial = sqlite.Open(sqliteReadOnlyDSN(c.URI))
	case "mysql":
		dsn, err := mysqlReadOnlyDSN(c)
		if err != nil {
			return nil, err
		}
		dial = mysql.Open(dsn)
	default:
		return nil, fmt.Errorf("kline: db.readonly.type %q is not mysql or sqlite", c.Type)
	}
	g, err := gorm.Open(dial, &gorm.Config{Logger: logger.Discard, SkipDefaultTransaction: true})
	if err != nil {
		// gorm.Open pings: the file or server is not there (yet).
		return nil, fmt.Errorf("kline: open %s read-only: %w", typ, connectError{err})
	}
	sqlDB, err := g.DB()
	if err != nil {
		return nil, fmt.Errorf("kline: %w", err)
	}
	if err := sqlDB.Ping(); err != nil {
		sqlDB.Close()
		return nil, fmt.Errorf("kline: connect to %s read-only: %w", typ, connectError{err})
	}
	sqlDB.SetMaxIdleConns(4)
	sqlDB.SetConnMaxIdleTime(5 * time.Minute)
	return &DB{gorm: g, typ: typ, maxRows: maxRows, tables: map[string]tableInfo{}}, nil
}

// connectError is a failure to reach the database (it is down, not yet
// up, its user not yet created, its file not yet written), as opposed to
// a configuration Open can never accept.
type connectError struct{ err error }

func (e connectError) Error() string { return e.err.Error() }
func (e connectError) Unwrap() error { return e.err }

// IsConnect reports whether an error of Open is a failure to reach the
// database, which may go away: a worker waits and tries again.
func IsConnect(err error) bool { return errors.As(err, new(connectError)) }

// sqliteReadOnlyDSN turns a path or file: URI into a URI the driver opens
// read-only, with the query_only pragma as a second lock.
func sqliteReadOnlyDSN(uri string) string {
	path := strings.TrimPrefix(uri, "file:")
	q := url.Values{}
	if i := strings.IndexByte(path, '?'); i >= 0 {
		q, _ = url.ParseQuery(path[i+1:])
		path = path[:i]
	}
	q.Set("mode", "ro")
	q.Set("_query_only", "1")
	q.Set("_busy_timeout", "5000")
	// Each connection is used by one goroutine at a time (database/sql),
	// so SQLite's per-connection mutex, taken on every column of every row
	// read, is pure cost.
	q.Set("_mutex", "no")
	return "file:" + path + "?" + q.Encode()
}

// mysqlReadOnlyDSN builds the DSN and asks the driver to set the session's
// read-only variable on every new connection. MariaDB before 11.1 calls it
// tx_read_only, MySQL 8 transaction_read_only: one probe connection tells.
func mysqlReadOnlyDSN(c Config) (string, error) {
	var mc *gomysql.Config
	if c.URI != "" {
		var err error
		if mc, err = gomysql.ParseDSN(c.URI); err != nil {
			return "", fmt.Errorf("kline: parse db.readonly.uri: %w", err)
		}
	} else {
		mc = gomysql.NewConfig()
		port := c.Port
		if port == 0 {
			port = 3306
		}
		mc.Net, mc.Addr = "tcp", c.Host+":"+strconv.Itoa(port)
		mc.User, mc.Passwd, mc.DBName = c.User, c.Password, c.Database
		mc.ParseTime = true
		mc.Params = map[string]string{"charset": "utf8mb4"}
	}
	probe, err := sql.Open("mysql", mc.FormatDSN())
	if err != nil {
		return "", fmt.Errorf("kline: %w", err)
	}
	defer probe.Close()
	name := "transaction_read_only"
	var v sql.NullString
	if err := probe.QueryRow("SELECT @@session.transaction_read_only").Scan(&v); err != nil {
		if err2 := probe.QueryRow("SELECT @@session.tx_read_only").Scan(&v); err2 != nil {
			return "", fmt.Errorf("kline: connect to mysql read-only: %w", connectError{err2})
		}
		name = "tx_read_only"
	}
	if mc.Params == nil {
		mc.Params = map[string]string{}
	}
	mc.Params[name] = "1"
	// Queries are read at the driver level, which needs client-side
	// interpolation (the arguments are only ever integers).
	mc.InterpolateParams = true
	return mc.FormatDSN(), nil
}

// Type is "mysql" or "sqlite".
func (d *DB) Type() string { return d.typ }

// Close releases the connections.
func (d *DB) Close() error {
	s, err := d.gorm.DB()
	if err != nil {
		return err
	}
	return s.Close()
}

// Query selects candles: start <= candle start <= end (inclusive), at most
// Limit rows (0 or more than the maximum → the maximum).
type Query struct {
	Exchange, Symbol, BinSize string
	Start, End, Limit         int64
}

// TableName is ztrade's table for a market.
func TableName(exchange, symbol, bin string) string {
	return exchange + "_" + symbol + "_" + bin
}

// Load reads q into a frame. source names the table read, or the finer
// table and the resampling. An unknown market is a *run.Error naming the
// table looked for.
func (d *DB) Load(ctx context.Context, q Query) (f *frame.Frame, source string, err error) {
	f, source, _, err = d.LoadCached(ctx, q)
	return f, source, err
}

// LoadCached is Load, and says whether the closed history came from the
// cache.
func (d *DB) LoadCached(ctx context.Context, q Query) (f *frame.Frame, source string, hit bool, err error) {
	size, err := binsize.Parse(q.BinSize)
	if err != nil {
		return nil, "", false, run.Errorf(run.ECodeInvalid, "%v", err)
	}
	if q.Limit <= 0 || (d.maxRows > 0 && q.Limit > d.maxRows) {
		q.Limit = d.maxRows
	}
	table := TableName(q.Exchange, q.Symbol, q.BinSize)
	if info, ok, err := d.table(ctx, table); err != nil {
		return nil, "", false, err
	} else if ok {
		f, hit, err := d.cachedRead(ctx, table, info, q.Start, q.End, q.Limit, size)
		return f, table, hit, err
	}
	fine, fineSize, err := d.finerTable(ctx, q.Exchange, q.Symbol, size)
	if err != nil {
		return nil, "", false, err
	}
	if fine == "" {
		return nil, "", false, run.Errorf(run.ECodeNotFound, "no K-line table `%s` (and no finer table of %s %s to resample)", table, q.Exchange, q.Symbol)
	}
	info, _, err := d.table(ctx, fine)
	if err != nil {
		return nil, "", false, err
	}
	// As ztrade's query_kline: the finer candles of [start, end] (those
	// before the first aligned one are skipped by the merge anyway), at
	// most limit*ratio + ratio of them.
	ratio := size / fineSize
	fineLimit := int64(0)
	if q.Limit > 0 {
		fineLimit = (q.Limit + 1) * ratio
	}
	raw, hit, err := d.cachedRead(ctx, fine, info, ceilDiv(q.Start, size)*size, q.End, fineLimit, fineSize)
	if err != nil {
		return nil, "", false, err
	}
	out := Resample(raw, fineSize, size)
	if q.Limit > 0 && int64(out.Len()) > q.Limit {
		out = out.Head(int(q.Limit))
	}
	return out, fmt.Sprintf("%s resampled to %s", fine, q.BinSize), hit, nil
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

func ceilDiv(a, b int64) int64 { return -floorDiv(-a, b) }

// table reports whether a table exists and whether it has turnover.
func (d *DB) table(ctx context.Context, name string) (tableInfo, bool, error) {
	d.mu.Lock()
	info, ok := d.tables[name]
	d.mu.Unlock()
	if ok && time.Since(info.seen) < time.Minute {
		return info, true, nil
	}
	m := d.gorm.WithContext(ctx).Migrator()
	if !m.HasTable(name) {
		return tableInfo{}, false, nil
	}
	info = tableInfo{hasTurnover: m.HasColumn(name, "turnover"), hasID: m.HasColumn(name, "id"), seen: time.Now()}
	d.mu.Lock()
	d.tables[name] = info
	d.mu.Unlock()
	return info, true, nil
}

// finerTable finds the coarsest table of the market whose size divides size.
func (d *DB) finerTable(ctx context.Context, exchange, symbol string, size int64) (string, int64, error) {
	names, err := d.gorm.WithContext(ctx).Migrator().GetTables()
	if err != nil {
		return "", 0, fmt.Errorf("kline: list tables: %w", err)
	}
	prefix := exchange + "_" + symbol + "_"
	best, bestSize := "", int64(0)
	for _, n := range names {
		if !strings.HasPrefix(n, prefix) {
			continue
		}
		s, err := binsize.Parse(n[len(prefix):])
		if err != nil || s >= size || size%s != 0 {
			continue
		}
		if s > bestSize {
			best, bestSize = n, s
		}
	}
	return best, bestSize, nil
}

// parallelRows is the expected row count above which a range is read in
// parallel slices, one connection per core.
const parallelRows = 150_000

// read runs the range query on one table. size is the table's candle
// length, used to size the frame up front and to decide on reading large
// ranges in parallel slices of the start range. A read of frame.ShareRows
// or more (handed over in a memory file in any case) is read straight
// into one (frame.Block), so its rows are never held twice.
func (d *DB) read(ctx context.Context, table string, info tableInfo, start, end, limit, size int64) (*frame.Frame, error) {
	hint := int64(0)
	if end >= start {
		hint = (end-start)/size + 1
	}
	if limit > 0 && limit < hint {
		hint = limit
	}
	if hint < frame.ShareRows {
		f := &frame.Frame{}
		f.Grow(int(hint))
		return d.readRange(ctx, table, info, start, end, limit, f, nil)
	}
	parts := int64(min(runtime.GOMAXPROCS(0), 4))
	if hint < parallelRows || parts < 2 {
		parts = 1
	}
	if f, err := d.scanTable(ctx, table, info, start, end, limit, size, parts); err != nil || f != nil {
		return f, err
	}
	if parts == 1 {
		// Straight into a memory file: the frame is handed over in one
		// anyway, and so its rows are never also on the heap.
		return readBlock(1, hint+1, func(_ int64, f *frame.Frame, flush func() error) error {
			_, err := d.readRange(ctx, table, info, start, end, limit, f, flush)
			return err
		})
	}
	// Slice the range where the data is, so the slices hold similar counts.
	var lo, hi sql.NullInt64
	// Two index seeks (one MIN and one MAX in a query would scan the range).
	in := "SELECT start FROM `" + table + "` WHERE start >= ? AND start <= ? ORDER BY start"
	if err := d.gorm.WithContext(ctx).Raw("SELECT ("+in+" LIMIT 1), ("+in+" DESC LIMIT 1)", start, end, start, end).
		Row().Scan(&lo, &hi); err != nil {
		return nil, fmt.Errorf("kline: range of %s: %w", table, err)
	}
	if !lo.Valid {
		return &frame.Frame{}, nil
	}
	if limit > 0 && hi.Int64-lo.Int64 > limit*size {
		hi.Int64 = lo.Int64 + limit*size // rows past this are cut by the limit anyway
	}
	start, end = lo.Int64, min(end, hi.Int64)
	span := (end - start + 1 + parts - 1) / parts
	// A slice of span seconds holds at most span/size+1 candles (one per
	// start); one more row of room lets the reader see the end without
	// outgrowing it.
	room := span/size + 2
	if limit > 0 {
		room = min(room, limit+1)
	}
	f, err := readBlock(parts, room, func(i int64, f *frame.Frame, flush func() error) error {
		_, err := d.readRange(ctx, table, info, start+i*span, min(start+(i+1)*span-1, end), limit, f, flush)
		return err
	})
	if err != nil {
		return nil, err
	}
	if limit > 0 && int64(f.Len()) > limit {
		f = f.Head(int(limit))
	}
	return f, nil
}

// scanTable reads a range that covers most of a table in table order,
// slices of the primary key read in parallel, the start index not used:
// SQLite's rowid (a third cheaper than walking the index, which costs a
// second b-tree lookup per candle), MySQL's id (InnoDB keeps rows in id
// order, so each slice is read sequentially instead of one primary-key
// lookup per candle in the order of the start index, which once the table
// outgrows the buffer pool is most of the time). ztrade appends candles
// in time order, so table order is start order; where it is not, the
// range is a small part of the table, or a MySQL table has no id, it
// returns nil and the indexed read is used; so it does when limit may cut
// the range (the index finds the first candles, a scan would read all).
func (d *DB) scanTable(ctx context.Context, table string, info tableInfo, start, end, limit, size, parts int64) (*frame.Frame, error) {
	key, hint := "rowid", " NOT INDEXED"
	if d.typ == "mysql" {
		if !info.hasID {
			return nil, nil
		}
		key, hint = "id", " FORCE INDEX (PRIMARY)"
	}
	var r0, r1, s0, s1 sql.NullInt64
	// Four b-tree seeks: SQLite answers a lone MIN or MAX from an end of
	// the b-tree, but several in one SELECT by scanning the whole table.
	from := " FROM `" + table + "`)"
	if err := d.gorm.WithContext(ctx).Raw("SELECT (SELECT MIN("+key+")"+from+", (SELECT MAX("+key+")"+from+", (SELECT MIN(start)"+from+", (SELECT MAX(start)"+from).
		Row().Scan(&r0, &r1, &s0, &s1); err != nil {
		return nil, fmt.Errorf("kline: extent of %s: %w", table, err)
	}
	if !r0.Valid || !s0.Valid || s1.Int64 <= s0.Int64 {
		return nil, nil
	}
	covered := min(end, s1.Int64) - max(start, s0.Int64)
	if covered*10 < (s1.Int64-s0.Int64)*8 {
		return nil, nil // under 80% of the table: the index wins
	}
	// At most one candle per key and one per start: a limit at least
	// that many cannot cut the range.
	if most := min(r1.Int64-r0.Int64+1, covered/size+1); limit > 0 && limit < most {
		return nil, nil
	}
	turnover := "turnover"
	if !info.hasTurnover {
		turnover = "NULL AS turnover"
	}
	q := "SELECT start, open, high, low, close, volume, " + turnover + ", trades FROM `" + table +
		"`" + hint + " WHERE " + key + " >= ? AND " + key + " <= ?"
	within := []any{}
	if start > s0.Int64 || end < s1.Int64 {
		// Not every row is in range (with all in range, as a whole table
		// read, the test of each row's start is left out).
		q += " AND start >= ? AND start <= ?"
		within = []any{start, end}
	}
	span := (r1.Int64 - r0.Int64 + parts) / parts
	// Each slice's starts are checked batch by batch as they are read,
	// while on the heap: read back from the memory file they would each
	// cost the worker a page fault (a twentieth of a 100k-row load).
	order := make([]ascending, parts)
	f, err := readBlock(parts, span+1, func(i int64, f *frame.Frame, flush func() error) error {
		o := &order[i]
		*o = ascending{} // a re-read starts over
		var see func() error
		if flush != nil {
			see = func() error { o.see(f.Start); return flush() }
		}
		err := d.readQuery(ctx, q, append([]any{r0.Int64 + i*span, min(r0.Int64+(i+1)*span-1, r1.Int64)}, within...), f, see)
		o.see(f.Start)
		return err
	})
	if err != nil && d.typ == "mysql" && ctx.Err() == nil {
		// An id that is not the primary key, say: the index then.
		slog.Debug("table-order read failed; reading through the start index", "table", table, "err", err)
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kline: read %s: %w", table, err)
	}
	all := ascending{}
	for _, o := range order {
		all.join(o)
	}
	if all.broken {
		return nil, nil // not in start order: read through the index
	}
	return f, nil
}

// ascending follows whether the starts seen, batch after batch, rise
// strictly.
type ascending struct {
	seen, broken bool
	first, last  int64
}

func (a *ascending) see(starts []int64) {
	for _, t := range starts {
		if !a.seen {
			a.seen, a.first = true, t
		} else if t <= a.last {
			a.broken = true
		}
		a.last = t
	}
}

// join appends b's run of starts to a's.
func (a *ascending) join(b ascending) {
	switch {
	case !b.seen:
	case !a.seen:
		*a = b
	default:
		a.broken = a.broken || b.broken || b.first <= a.last
		a.last = b.last
	}
}

// blockRows is the most rows a read puts in one memory file up front
// (its room is sparse: only rows read take memory); a read of more
// gathers its slices on the heap and copies them into the file.
const blockRows = 1 << 30

// readBlock runs read for slices 0..n-1 at once, one connection each,
// each into room rows of one memory file (frame.Block: read appends to f
// and calls flush whenever f is full), and returns their rows in order as
// one shared frame. Should a slice outgrow its room (starts that are not
// unique, say), the slices are read again onto the heap (flush nil) and
// copied into a file.
func readBlock(n, room int64, read func(i int64, f *frame.Frame, flush func() error) error) (*frame.Frame, error) {
	if n*room <= blockRows {
		rooms := make([]int, n)
		for i := range rooms {
			rooms[i] = int(room)
		}
		if b, err := frame.NewBlock(rooms); err == nil {
			err = inParallel(n, func(i int64) error {
				return read(i, b.Part(int(i)), func() error { return b.Flush(int(i)) })
			})
			var f *frame.Frame
			if err == nil {
				f, err = b.Seal()
			}
			b.Close()
			if !errors.Is(err, frame.ErrRoom) {
				return f, err
			}
			slog.Debug("a slice outgrew its room; reading again", "room", room)
		}
	}
	frames := make([]*frame.Frame, n)
	for i := range frames {
		frames[i] = &frame.Frame{}
		frames[i].Grow(int(min(room, 1<<22)))
	}
	if err := inParallel(n, func(i int64) error { return read(i, frames[i], nil) }); err != nil {
		return nil, err
	}
	return frame.Join(frames), nil
}

// inParallel runs fn(0..n-1) at once and joins their errors.
func inParallel(n int64, fn func(i int64) error) error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := int64(0); i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(i)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// readRange reads one slice of a table, appending its rows to f (see
// readQuery for flush).
func (d *DB) readRange(ctx context.Context, table string, info tableInfo, start, end, limit int64, f *frame.Frame, flush func() error) (*frame.Frame, error) {
	turnover := "turnover"
	if !info.hasTurnover {
		turnover = "NULL AS turnover"
	}
	q := "SELECT start, open, high, low, close, volume, " + turnover + ", trades FROM `" + table +
		"` WHERE start >= ? AND start <= ? ORDER BY start"
	args := []any{start, end}
	if limit > 0 {
		q += " LIMIT ?"
		args = append(args, limit)
	}
	if err := d.readQuery(ctx, q, args, f, flush); err != nil {
		return nil, fmt.Errorf("kline: read %s: %w", table, err)
	}
	return f, nil
}

// readQuery runs q, which selects the eight K-line columns in order,
// appending its rows to f. With flush set, f is a block's batch: full, it
// is flushed (emptied into the block) rather than grown.
func (d *DB) readQuery(ctx context.Context, q string, args []any, f *frame.Frame, flush func() error) error {
	sqlDB, err := d.gorm.DB()
	if err != nil {
		return fmt.Errorf("kline: %w", err)
	}
	conn, err := sqlDB.Conn(ctx)
	if err != nil {
		return fmt.Errorf("kline: connect: %w", err)
	}
	defer conn.Close()
	// Rows are read at the driver level: database/sql's Scan converts every
	// cell through reflection and costs half the time of a 1M-row load.
	return conn.Raw(func(dc any) error {
		if h := sqliteHandle(dc); h != nil && d.typ == "sqlite" {
			ints := make([]int64, len(args))
			for i, a := range args {
				ints[i] = a.(int64)
			}
			return readSQLite(ctx, h, q, ints, f, flush)
		}
		qc, ok := dc.(driver.QueryerContext)
		if !ok {
			return fmt.Errorf("driver %T cannot query", dc)
		}
		named := make([]driver.NamedValue, len(args))
		for i, a := range args {
			named[i] = driver.NamedValue{Ordinal: i + 1, Value: a}
		}
		// The driver gets a context that is never cancelled: given a
		// cancellable one, mattn/go-sqlite3 starts a goroutine for every
		// row, which doubles the cost of a large load. Cancellation is
		// checked here instead, every few thousand rows.
		var rows driver.Rows
		var err error
		if pc, ok := dc.(driver.ConnPrepareContext); ok && d.typ == "mysql" {
			// A prepared statement: MySQL then answers in its binary
			// protocol (doubles and integers as they are) rather than as
			// text every cell of which would be parsed.
			st, err := pc.PrepareContext(context.WithoutCancel(ctx), q)
			if err != nil {
				return err
			}
			defer st.Close()
			sq, ok := st.(driver.StmtQueryContext)
			if !ok {
				return fmt.Errorf("driver statement %T cannot query", st)
			}
			rows, err = sq.QueryContext(context.WithoutCancel(ctx), named)
			if err != nil {
				return err
			}
		} else if rows, err = qc.QueryContext(context.WithoutCancel(ctx), q, named); err != nil {
			return err
		}
		defer rows.Close()
		v := make([]driver.Value, 8)
		for n := 0; ; n++ {
			if n&4095 == 4095 && ctx.Err() != nil {
				return ctx.Err()
			}
			if err := rows.Next(v); err == io.EOF {
				return nil
			} else if err != nil {
				return err
			}
			if flush != nil && f.Len() == cap(f.Start) {
				if err := flush(); err != nil {
					return err
				}
			}
			f.Append(asInt(v[0]), asFloat(v[1]), asFloat(v[2]), asFloat(v[3]), asFloat(v[4]), asFloat(v[5]), asFloat(v[6]), asInt(v[7]))
		}
	})
}

// asInt and asFloat convert a driver cell; NULL becomes 0 and NaN. MySQL
// sends numbers as text ([]byte) over its text protocol (in queries other
// than the range read, which is prepared and so binary).
func asInt(v driver.Value) int64 {
	switch x := v.(type) {
	case int64:
		return x
	case float64:
		return int64(x)
	case []byte:
		n, _ := strconv.ParseInt(string(x), 10, 64)
		return n
	}
	return 0
}

func asFloat(v driver.Value) float64 {
	switch x := v.(type) {
	case float64:
		return x
	case int64:
		return float64(x)
	case float32:
		return float64(x)
	case []byte:
		if n, err := strconv.ParseFloat(string(x), 64); err == nil {
			return n
		}
	}
	return math.NaN()
}

// Resample merges candles of fine seconds into candles of size seconds
// exactly as ztrade's KlineMerge (github.com/ztrade/base common/merge.go),
// which query_kline uses, so research and query_kline agree candle for
// candle:
//
//   - candles before the first one aligned to the epoch (start % size ==
//     0) are skipped, and so is any candle not after the previous one;
//   - candles are gathered until one is the last of its bucket (start %
//     size == size - fine); the gathered candles are emitted as one only
//     if there are exactly size/fine of them, and are dropped otherwise.
//     So a bucket with a gap is dropped, a bucket missing its last candle
//     takes the next bucket down with it, and a bucket that is not
//     complete by the end of the data is never emitted;
//   - open is the first candle's, high the max, low the min, close the
//     last's, volume and trades summed. Turnover is summed as DESIGN §3
//     says (KlineMerge keeps the last candle's); it is NaN only when every
//     candle in the bucket lacks one.
//
// The emitted candle starts where its first gathered candle does.
func Resample(in *frame.Frame, fine, size int64) *frame.Frame {
	out := &frame.Frame{}
	ratio := int(size / fine)
	var cache []int // indexes into in of the candles gathered so far
	first := true
	for i := 0; i < in.Len(); i++ {
		s := in.Start[i]
		if n := len(cache); n > 0 && s <= in.Start[cache[n-1]] {
			continue
		}
		if first && s%size != 0 {
			continue
		}
		first = false
		cache = append(cache, i)
		if int(s%size/fine)+1 != ratio {
			continue
		}
		if len(cache) == ratio {
			mergeInto(out, in, cache)
		}
		cache = cache[:0]
	}
	return out
}

// mergeInto appends to out the candles of in at idx merged into one.
func mergeInto(out, in *frame.Frame, idx []int) {
	a := idx[0]
	out.Append(in.Start[a], in.Open[a], in.High[a], in.Low[a], in.Close[a], in.Volume[a], in.Turnover[a], in.Trades[a])
	j := out.Len() - 1
	for _, i := range idx[1:] {
		out.High[j] = math.Max(out.High[j], in.High[i])
		out.Low[j] = math.Min(out.Low[j], in.Low[i])
		out.Close[j] = in.Close[i]
		out.Volume[j] += in.Volume[i]
		out.Trades[j] += in.Trades[i]
		switch t := in.Turnover[i]; {
		case math.IsNaN(t):
		case math.IsNaN(out.Turnover[j]):
			out.Turnover[j] = t
		default:
			out.Turnover[j] += t
		}
	}
}
